"""Markdown through mdutils: one document type, one table writer, one cell format, one file writer.

Documents are rendered to text and written to the exact path given (mdutils' own writer appends
".md" to names without it). Numbers are shown with a fixed number of decimals; NaN and missing
values print as "n/a", never as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mdutils.mdutils import MdUtils

MAX_CELL_CHARS = 90  # kernel names run to hundreds of characters of template arguments


def new_document(title: str) -> MdUtils:
    md = MdUtils(file_name="")
    md.new_header(level=1, title=title, add_table_of_contents="n")
    return md


def header(md: MdUtils, title: str, level: int = 2) -> None:
    md.new_header(level=level, title=title, add_table_of_contents="n")


def bullets(md: MdUtils, items: Iterable[str]) -> None:
    items = list(items)
    if items:
        md.new_line()
        md.new_list(items)


def cell(value: Any, digits: int = 2) -> str:
    """A table cell: floats with `digits` decimals (scientific from 1e7), NaN/None as n/a, pipes escaped,
    long text cut."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        value = float(value)
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.3e}" if abs(value) >= 1e7 else f"{value:.{digits}f}"  # FLOPs, bytes: no 12-digit cells
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 3] + "..."


def table(md: MdUtils, columns: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 2) -> None:
    """Append a table; a header-only table is skipped (mdutils cannot draw one usefully)."""
    cells = list(columns)
    count = 0
    for row in rows:
        cells.extend(cell(v, digits) for v in row)
        count += 1
    if count:
        md.new_table(columns=len(columns), rows=count + 1, text=cells, text_align="left")


def frame_table(md: MdUtils, frame: Any, columns: Sequence[str], digits: int = 3) -> None:
    """Append `frame[columns]` (a pandas DataFrame) as a table."""
    table(md, columns, frame[list(columns)].itertuples(index=False), digits)


def render(md: MdUtils) -> str:
    """The document's text with exactly one blank line between blocks (headers, paragraphs, tables, lists).

    mdutils glues a table or header to the paragraph before it; some renderers then read the table as
    paragraph text.
    """
    lines: list[str] = []
    for line in md.get_md_text().strip("\n").split("\n"):
        previous = lines[-1] if lines else ""
        starts_block = line.startswith(("#", "|", "- ")) and not previous.startswith(line[:1])
        if lines and previous and (starts_block or previous.startswith("#") or
                                   (previous.startswith(("|", "- ")) and not line.startswith(previous[:1]))):
            lines.append("")
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip("\n") + "\n"


def write_markdown(md: MdUtils, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(md), encoding="utf-8")
    return path
