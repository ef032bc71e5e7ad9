"""Synthetic document pages for profiling runs that need no dataset on disk.

`generate_pages` draws white pages with a title, one or two columns of text-like lines, a table and
a bar or line chart, using Pillow only (ImageDraw and the font bundled with Pillow), so it works on
any machine. Every page gets its own `random.Random` seeded from (seed, page index): the same seed
gives pixel-identical pages, and a page does not change when more pages are requested. Layout sizes
(margins, fonts, line heights) scale with the page, so A4 at 150 and 200 dpi look alike.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

from PIL import Image, ImageDraw, ImageFont, features

from llm_perf_opt.data.pages import Page
from llm_perf_opt.errors import InputError

MIN_SIDE_PX = 64
# Guards against a typo like 124000 allocating tens of GB for one page.
MAX_SIDE_PX = 16384

# Reference page: A4 at 150 dpi. Sizes below are in pixels at this width and scaled from it.
_REF_WIDTH_PX = 1240
_A4_ASPECT = 1754 / 1240

_WORDS = (
    "the of and to in is for on with as by that this from are be at an which model data layer "
    "attention token image page vision encoder decoder latency memory kernel batch throughput "
    "profile stage cache sequence tensor compute bandwidth result method table figure section "
    "analysis performance inference training dataset document text layout column value sample "
    "we our these show using based each between number time first two results shown"
).split()

_BLACK = (20, 20, 20)
_GRAY = (110, 110, 110)
_LIGHT_GRAY = (225, 225, 225)
_WHITE = (255, 255, 255)
_CHART_COLORS = ((52, 101, 164), (204, 80, 62), (78, 154, 6), (196, 160, 0), (117, 80, 123))


@dataclass(frozen=True)
class _Metrics:
    """Pixel sizes for one page, derived from its dimensions."""

    scale: float
    margin_px: int
    gutter_px: int
    body_font_px: int
    title_font_px: int
    small_font_px: int
    line_px: int
    block_gap_px: int


def generate_pages(num_pages: int, sizes: Sequence[Sequence[int]], seed: int = 0) -> list[Page]:
    """Draw `num_pages` synthetic document pages.

    `sizes` holds (width, height) pairs in pixels, used round-robin over pages. Raises `InputError`
    for a page count below 1, an empty size list, or a size that is not two integers >= 64 px.
    """
    _check_count(num_pages)
    _check_seed(seed)
    sizes_px = _check_sizes(sizes)
    # Plain ints from here on, so numpy or OmegaConf values never leak into meta (and MLflow).
    num_pages, seed = int(num_pages), int(seed)
    pages: list[Page] = []
    for index in range(num_pages):
        width_px, height_px = sizes_px[index % len(sizes_px)]
        # String seeds hash with SHA-512 inside `random`, so they are stable across processes.
        rng = random.Random(f"synthetic:{seed}:{index}")
        image = _draw_page(rng, width_px, height_px)
        pages.append(
            Page(
                page_id=f"synthetic-{index:04d}",
                image=image,
                source="synthetic",
                meta={"width": width_px, "height": height_px, "seed": seed, "index": index},
            )
        )
    return pages


def _is_int(value: object) -> bool:
    # bool is an Integral too, but `True` as a page count or size is a mistake, not a 1.
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_count(num_pages: object) -> None:
    if not _is_int(num_pages) or int(num_pages) < 1:  # type: ignore[call-overload]
        raise InputError(
            f"synthetic num_pages is {num_pages!r}: it must be a whole number of pages >= 1; "
            "set dataset.num_pages to 1 or more"
        )


def _check_seed(seed: object) -> None:
    if not _is_int(seed):
        raise InputError(
            f"synthetic seed is {seed!r}: it must be an integer so pages are reproducible; "
            "set dataset.seed to a whole number such as 0"
        )


def _check_sizes(sizes: object) -> list[tuple[int, int]]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) == 0:
        raise InputError(
            f"synthetic sizes is {sizes!r}: it must be a non-empty list of [width, height] pixel "
            "pairs; set dataset.sizes to e.g. [[1240, 1754]] (A4 at 150 dpi)"
        )
    checked: list[tuple[int, int]] = []
    for position, size in enumerate(sizes):
        ok = (
            isinstance(size, Sequence)
            and not isinstance(size, (str, bytes))
            and len(size) == 2
            and all(_is_int(side) and MIN_SIDE_PX <= int(side) <= MAX_SIDE_PX for side in size)
        )
        if not ok:
            raise InputError(
                f"synthetic sizes[{position}] is {size!r}: each size must be two integers "
                f"[width, height] between {MIN_SIDE_PX} and {MAX_SIDE_PX} px; "
                "fix dataset.sizes, e.g. [[1240, 1754], [1654, 2339]]"
            )
        checked.append((int(size[0]), int(size[1])))
    return checked


@functools.lru_cache(maxsize=64)
def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font scales only when Pillow has FreeType (and is >= 10.1, which added
    # `size`); otherwise fall back to its fixed-size bitmap font, which still gives text-like strokes.
    if features.check("freetype2"):
        try:
            return ImageFont.load_default(size=size_px)
        except TypeError:
            pass
    return ImageFont.load_default()


@functools.lru_cache(maxsize=4096)
def _text_width_px(size_px: int, text: str) -> float:
    return _font(size_px).getlength(text)


def _metrics(width_px: int, height_px: int) -> _Metrics:
    # Scale by the A4-shaped box that fits the page so landscape pages do not get huge text.
    scale = min(width_px, height_px / _A4_ASPECT) / _REF_WIDTH_PX
    body_font_px = max(6, round(18 * scale))
    return _Metrics(
        scale=scale,
        margin_px=max(4, round(90 * scale)),
        gutter_px=max(4, round(40 * scale)),
        body_font_px=body_font_px,
        title_font_px=max(8, round(36 * scale)),
        small_font_px=max(6, round(15 * scale)),
        line_px=max(8, round(body_font_px * 1.5)),
        block_gap_px=max(4, round(24 * scale)),
    )


@dataclass(frozen=True)
class _Box:
    """A rectangle on the page, in pixels (x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


class _Canvas:
    """One page being drawn: the image, its RNG and its pixel metrics."""

    def __init__(self, rng: random.Random, width_px: int, height_px: int) -> None:
        self.image = Image.new("RGB", (width_px, height_px), _WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.rng = rng
        self.m = _metrics(width_px, height_px)

    def text(self, x_px: float, y_px: float, text: str, font_px: int, fill: tuple[int, int, int]) -> None:
        self.draw.text((x_px, y_px), text, font=_font(font_px), fill=fill)

    def words(self, count: int) -> list[str]:
        return [self.rng.choice(_WORDS) for _ in range(count)]


def _draw_page(rng: random.Random, width_px: int, height_px: int) -> Image.Image:
    canvas = _Canvas(rng, width_px, height_px)
    m = canvas.m
    page = _Box(m.margin_px, m.margin_px, width_px - m.margin_px, height_px - m.margin_px)
    body_top_px = _draw_title(canvas, page)

    num_columns = rng.choice((1, 2))
    column_width_px = (page.width - (num_columns - 1) * m.gutter_px) / num_columns
    columns = []
    for c in range(num_columns):
        x0_px = page.x0 + c * (column_width_px + m.gutter_px)
        columns.append(_Box(x0_px, body_top_px, x0_px + column_width_px, page.y1))

    # Paragraphs before the table and figure are short so both fit on one column of an A4 page.
    middle = ["table", "figure"] if rng.random() < 0.5 else ["figure", "table"]
    blocks: list[tuple[str, int]] = [
        ("text", rng.randint(3, 7)),
        (middle[0], 0),
        ("text", rng.randint(2, 5)),
        (middle[1], 0),
        ("text", 10_000),  # fill what is left
    ]
    # Cap block heights by the page height too, so landscape pages keep room for text.
    block_height_px = {
        "table": min(round(column_width_px * 0.45), round(columns[0].height * 0.25)),
        "figure": min(round(column_width_px * 0.55), round(columns[0].height * 0.3)),
    }

    column = 0
    y_px: float = body_top_px
    for kind, num_lines in blocks:
        if column >= num_columns:
            break
        if kind == "text":
            indent = True
            while num_lines > 0 and column < num_columns:
                y_px, num_lines = _draw_text_lines(canvas, columns[column], y_px, num_lines, indent)
                if num_lines > 0:  # column full: continue the paragraph in the next one
                    column += 1
                    y_px = body_top_px
                    indent = False
            y_px += m.block_gap_px
            continue
        block_px = block_height_px[kind]
        if block_px < 4 * m.line_px or block_px > columns[0].height:
            continue  # page too small for this block; skip it rather than overflow
        if y_px + block_px > page.y1:
            column += 1
            y_px = body_top_px
            if column >= num_columns:
                break
        col = columns[column]
        if kind == "table":
            _draw_table(canvas, _Box(col.x0, y_px, col.x1, y_px + block_px))
        else:
            # A figure keeps a chart-like aspect ratio and is centred in its column.
            figure_width_px = min(col.width, round(block_px / 0.55))
            x0_px = col.x0 + (col.width - figure_width_px) / 2
            _draw_figure(canvas, _Box(x0_px, y_px, x0_px + figure_width_px, y_px + block_px))
        y_px += block_px + m.block_gap_px

    _draw_page_number(canvas, width_px, height_px)
    return canvas.image


def _draw_title(canvas: _Canvas, page: _Box) -> int:
    """Draw a centred title and author line; return the y where the body starts."""
    m = canvas.m
    title = " ".join(w.capitalize() for w in canvas.words(canvas.rng.randint(3, 7)))
    title = _fit(title, m.title_font_px, page.width)
    x_px = page.x0 + max(0.0, (page.width - _text_width_px(m.title_font_px, title)) / 2)
    # Draw a few times one pixel apart: a cheap bold that also works with the bitmap fallback font.
    for dx_px in range(max(1, round(2 * m.scale))):
        canvas.text(x_px + dx_px, page.y0, title, m.title_font_px, _BLACK)
    y_px = page.y0 + round(m.title_font_px * 1.6)

    num_authors = canvas.rng.randint(2, 4)
    names = zip(canvas.words(num_authors), canvas.words(num_authors))
    authors = ", ".join(f"{first.capitalize()} {last.capitalize()}" for first, last in names)
    authors = _fit(authors, m.small_font_px, page.width)
    x_px = page.x0 + max(0.0, (page.width - _text_width_px(m.small_font_px, authors)) / 2)
    canvas.text(x_px, y_px, authors, m.small_font_px, _GRAY)
    return round(y_px + m.small_font_px * 1.6 + m.block_gap_px)


def _fit(text: str, font_px: int, max_width_px: float) -> str:
    """Drop trailing words until `text` fits in `max_width_px` (keeps at least one word)."""
    words = text.split(" ")
    while len(words) > 1 and _text_width_px(font_px, " ".join(words)) > max_width_px:
        words.pop()
    return " ".join(words)


def _draw_text_lines(
    canvas: _Canvas, column: _Box, y_px: float, num_lines: int, indent: bool
) -> tuple[float, int]:
    """Draw up to `num_lines` lines of words; return the next y and the lines that did not fit.

    `indent` marks the start of a paragraph (False when continuing one in the next column).
    """
    m, rng = canvas.m, canvas.rng
    space_px = _text_width_px(m.body_font_px, " ")
    first = indent
    while num_lines > 0 and y_px + m.line_px <= column.y1:
        # Indent the first line and shorten the last, like a real paragraph.
        indent_px = round(30 * m.scale) if first else 0
        target_px = column.width - indent_px if num_lines > 1 else column.width * rng.uniform(0.3, 0.9)
        line: list[str] = []
        used_px = 0.0
        while True:
            word = rng.choice(_WORDS)
            extra_px = _text_width_px(m.body_font_px, word) + (space_px if line else 0)
            if used_px + extra_px > target_px:
                break
            line.append(word)
            used_px += extra_px
        if line:
            canvas.text(column.x0 + indent_px, y_px, " ".join(line), m.body_font_px, _BLACK)
        y_px += m.line_px
        num_lines -= 1
        first = False
    return y_px, num_lines


def _draw_table(canvas: _Canvas, box: _Box) -> None:
    """A captioned grid with a shaded header row, a label column and numeric cells."""
    m, rng, draw = canvas.m, canvas.rng, canvas.draw
    caption = _fit(f"Table {rng.randint(1, 9)}: " + " ".join(canvas.words(4)), m.small_font_px, box.width)
    canvas.text(box.x0, box.y0, caption, m.small_font_px, _BLACK)
    grid = _Box(box.x0, box.y0 + round(m.small_font_px * 1.8), box.x1, box.y1)
    num_rows = rng.randint(4, 7)
    num_cols = rng.randint(3, 5)
    row_px = grid.height / num_rows
    col_px = grid.width / num_cols
    font_px = max(6, min(m.small_font_px, round(row_px * 0.55)))
    pad_px = max(2, round(8 * m.scale))

    # Shade the header first so the grid lines are drawn over it.
    draw.rectangle((grid.x0, grid.y0, grid.x1, grid.y0 + row_px), fill=_LIGHT_GRAY)
    line_px = max(1, round(2 * m.scale))
    for r in range(num_rows + 1):
        y = round(grid.y0 + r * row_px)
        draw.line((grid.x0, y, grid.x1, y), fill=_BLACK, width=line_px)
    for c in range(num_cols + 1):
        x = round(grid.x0 + c * col_px)
        draw.line((x, grid.y0, x, grid.y1), fill=_BLACK, width=line_px)

    for r in range(num_rows):
        for c in range(num_cols):
            if r == 0:
                text = rng.choice(_WORDS).capitalize()
            elif c == 0:
                text = rng.choice(_WORDS)
            else:
                text = f"{rng.uniform(0, 100):.1f}"
            if _text_width_px(font_px, text) > col_px - 2 * pad_px:
                continue  # cell too narrow for its text on a tiny page
            y_px = grid.y0 + r * row_px + (row_px - font_px) / 2
            canvas.text(grid.x0 + c * col_px + pad_px, y_px, text, font_px, _BLACK)


def _draw_figure(canvas: _Canvas, box: _Box) -> None:
    """A captioned bar chart or line chart with axes, grid lines and y tick labels."""
    m, rng, draw = canvas.m, canvas.rng, canvas.draw
    caption_px = round(m.small_font_px * 1.8)
    plot = _Box(
        box.x0 + round(50 * m.scale),
        box.y0 + round(10 * m.scale),
        box.x1 - round(10 * m.scale),
        box.y1 - caption_px,
    )
    line_px = max(1, round(2 * m.scale))

    num_ticks = 4
    for t in range(num_ticks + 1):
        y = round(plot.y1 - t * plot.height / num_ticks)
        if t > 0:
            draw.line((plot.x0, y, plot.x1, y), fill=_LIGHT_GRAY, width=1)
        canvas.text(box.x0, y - m.small_font_px / 2, str(t * 25), m.small_font_px, _GRAY)
    draw.line((plot.x0, plot.y0, plot.x0, plot.y1), fill=_BLACK, width=line_px)
    draw.line((plot.x0, plot.y1, plot.x1, plot.y1), fill=_BLACK, width=line_px)

    num_points = rng.randint(4, 9)
    if rng.random() < 0.5:
        slot_px = plot.width / num_points
        for i in range(num_points):
            top_px = plot.y1 - rng.uniform(0.1, 0.95) * plot.height
            bar = (plot.x0 + (i + 0.2) * slot_px, top_px, plot.x0 + (i + 0.8) * slot_px, plot.y1 - line_px)
            draw.rectangle(bar, fill=_CHART_COLORS[i % len(_CHART_COLORS)])
    else:
        step_px = plot.width / (num_points - 1)
        dot_px = max(1, round(5 * m.scale))
        for series in range(rng.randint(1, 3)):
            value = rng.uniform(0.2, 0.8)
            points = []
            for i in range(num_points):
                # A bounded random walk reads as a plausible measured curve.
                value = min(0.95, max(0.05, value + rng.uniform(-0.2, 0.2)))
                points.append((plot.x0 + i * step_px, plot.y1 - value * plot.height))
            color = _CHART_COLORS[series % len(_CHART_COLORS)]
            draw.line(points, fill=color, width=max(1, round(3 * m.scale)))
            for x, y in points:
                draw.ellipse((x - dot_px, y - dot_px, x + dot_px, y + dot_px), fill=color)

    caption = _fit(f"Figure {rng.randint(1, 9)}: " + " ".join(canvas.words(6)), m.small_font_px, box.width)
    canvas.text(box.x0, plot.y1 + caption_px * 0.3, caption, m.small_font_px, _BLACK)


def _draw_page_number(canvas: _Canvas, width_px: int, height_px: int) -> None:
    m = canvas.m
    text = str(canvas.rng.randint(1, 300))
    x_px = (width_px - _text_width_px(m.small_font_px, text)) / 2
    canvas.text(x_px, height_px - m.margin_px / 2 - m.small_font_px / 2, text, m.small_font_px, _GRAY)
