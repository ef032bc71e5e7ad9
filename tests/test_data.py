"""Tests for the input-page layer: synthetic pages and the OmniDocBench loader (CPU only)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_perf_opt.data.omnidocbench import load_omnidocbench
from llm_perf_opt.data.pages import Page
from llm_perf_opt.data.synthetic import generate_pages
from llm_perf_opt.errors import InputError

A4_SIZES_PX = [[1240, 1754], [1654, 2339]]  # A4 at 150 and 200 dpi
# The shared folder sits beside the checkout; the demo pages are never copied into the repo.
DEMO_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "omnidocbench-demo"


def _pixels(page: Page) -> np.ndarray:
    return np.asarray(page.image)


def _assert_looks_like_a_page(page: Page) -> None:
    assert page.image.mode == "RGB"
    gray = np.asarray(page.image.convert("L"))
    assert gray.std() > 0, f"{page.page_id} is a flat image"
    assert (gray < 80).any(), f"{page.page_id} has no dark (ink) pixels"
    assert (gray > 200).any(), f"{page.page_id} has no light (paper) pixels"


# --- synthetic pages -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_pages() -> list[Page]:
    return generate_pages(4, A4_SIZES_PX, seed=7)


def test_synthetic_ids_source_and_meta(synthetic_pages: list[Page]) -> None:
    assert [p.page_id for p in synthetic_pages] == [f"synthetic-{i:04d}" for i in range(4)]
    for index, page in enumerate(synthetic_pages):
        assert page.source == "synthetic"
        width_px, height_px = A4_SIZES_PX[index % 2]
        assert page.meta == {"width": width_px, "height": height_px, "seed": 7, "index": index}


def test_synthetic_sizes_round_robin(synthetic_pages: list[Page]) -> None:
    assert [p.image.size for p in synthetic_pages] == [(1240, 1754), (1654, 2339), (1240, 1754), (1654, 2339)]
    three = generate_pages(5, [[300, 400], [400, 300], [128, 64]], seed=0)
    assert [p.image.size for p in three] == [(300, 400), (400, 300), (128, 64), (300, 400), (400, 300)]


def test_synthetic_accepts_config_and_numpy_values() -> None:
    # Hydra hands over ListConfig sizes; numpy ints appear when sizes come from arrays.
    from omegaconf import OmegaConf

    sizes = OmegaConf.create({"sizes": [[200, 283], [283, 200]]}).sizes
    pages = generate_pages(np.int64(3), sizes, seed=np.int32(2))  # type: ignore[arg-type]
    assert [p.image.size for p in pages] == [(200, 283), (283, 200), (200, 283)]
    assert type(pages[0].meta["seed"]) is int and pages[0].meta["seed"] == 2
    assert pages[0].image.tobytes() == generate_pages(1, [[200, 283]], seed=2)[0].image.tobytes()


def test_synthetic_pages_are_rgb_and_not_blank(synthetic_pages: list[Page]) -> None:
    for page in synthetic_pages:
        _assert_looks_like_a_page(page)
        gray = np.asarray(page.image.convert("L"))
        # Mostly white paper with a modest share of ink, like a real page.
        assert 0.5 < (gray > 200).mean() < 0.99
        assert (gray < 128).mean() > 0.01


def test_synthetic_pages_have_colour(synthetic_pages: list[Page]) -> None:
    # Charts are drawn in colour, so at least one page has pixels whose channels differ.
    def has_colour(page: Page) -> bool:
        rgb = _pixels(page)[::2, ::2].astype(np.int16)  # every other pixel is plenty for charts
        return bool((np.abs(rgb[..., 0] - rgb[..., 2]) > 60).any())

    assert any(has_colour(p) for p in synthetic_pages)


def test_synthetic_same_seed_is_pixel_identical(synthetic_pages: list[Page]) -> None:
    again = generate_pages(4, A4_SIZES_PX, seed=7)
    for first, second in zip(synthetic_pages, again, strict=True):
        assert first.image.tobytes() == second.image.tobytes()


def test_synthetic_different_seed_differs(synthetic_pages: list[Page]) -> None:
    other = generate_pages(1, A4_SIZES_PX, seed=8)
    assert other[0].image.tobytes() != synthetic_pages[0].image.tobytes()


def test_synthetic_pages_within_a_run_differ(synthetic_pages: list[Page]) -> None:
    assert synthetic_pages[0].image.tobytes() != synthetic_pages[2].image.tobytes()


def test_synthetic_page_does_not_depend_on_page_count(synthetic_pages: list[Page]) -> None:
    # Page i comes from its own RNG, so asking for fewer pages gives the same first pages.
    fewer = generate_pages(2, A4_SIZES_PX, seed=7)
    assert fewer[1].image.tobytes() == synthetic_pages[1].image.tobytes()


def test_synthetic_does_not_touch_global_random_state() -> None:
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_pages(1, [[200, 283]], seed=1)
    assert random.random() == expected


@pytest.mark.parametrize("size_px", [[64, 64], [64, 2000], [2000, 64], [300, 200], [2000, 1500]])
def test_synthetic_small_and_odd_sizes(size_px: list[int]) -> None:
    (page,) = generate_pages(1, [size_px], seed=3)
    assert page.image.size == tuple(size_px)
    _assert_looks_like_a_page(page)


def test_synthetic_without_freetype(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow builds without FreeType fall back to the fixed bitmap font; pages must still draw.
    from llm_perf_opt.data import synthetic

    monkeypatch.setattr(synthetic.features, "check", lambda feature: False)
    synthetic._font.cache_clear()
    synthetic._text_width_px.cache_clear()
    try:
        (page,) = generate_pages(1, [[1240, 1754]], seed=5)
    finally:
        monkeypatch.undo()
        synthetic._font.cache_clear()
        synthetic._text_width_px.cache_clear()
    _assert_looks_like_a_page(page)
    assert page.image.tobytes() != generate_pages(1, [[1240, 1754]], seed=5)[0].image.tobytes()


@pytest.mark.parametrize(
    ("num_pages", "sizes", "seed", "needle"),
    [
        (0, A4_SIZES_PX, 0, "num_pages"),
        (-3, A4_SIZES_PX, 0, "num_pages"),
        (2.5, A4_SIZES_PX, 0, "num_pages"),
        (True, A4_SIZES_PX, 0, "num_pages"),
        (1, [], 0, "sizes"),
        (1, "1240x1754", 0, "sizes"),
        (1, [[1240]], 0, "sizes[0]"),
        (1, [[1240, 1754, 3]], 0, "sizes[0]"),
        (1, [[1240, 1754], [63, 100]], 0, "sizes[1]"),
        (1, [[0, 100]], 0, "sizes[0]"),
        (1, [[-100, 100]], 0, "sizes[0]"),
        (1, [[100.0, 100]], 0, "sizes[0]"),
        (1, [["100", "100"]], 0, "sizes[0]"),
        (1, [[100_000, 100]], 0, "sizes[0]"),
        (1, A4_SIZES_PX, "abc", "seed"),
    ],
)
def test_synthetic_bad_input(num_pages: object, sizes: object, seed: object, needle: str) -> None:
    with pytest.raises(InputError, match=needle.replace("[", r"\[").replace("]", r"\]")) as caught:
        generate_pages(num_pages, sizes, seed=seed)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


# --- OmniDocBench loader on a small root built in tmp_path -----------------------------------


def _jpeg_bytes(size_px: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", size_px, (255, 255, 255))
    image.paste(colour, (0, 0, size_px[0] // 2, size_px[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _make_root(tmp_path: Path, pages: dict[str, bytes], entries: list | None = None) -> Path:
    root = tmp_path / "odb"
    (root / "images").mkdir(parents=True)
    for name, data in pages.items():
        (root / "images" / name).write_bytes(data)
    if entries is None:
        entries = [{"page_info": {"image_path": name, "page_no": i}} for i, name in enumerate(pages)]
    (root / "OmniDocBench.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


@pytest.fixture
def small_root(tmp_path: Path) -> Path:
    pages = {
        "a.jpg": _jpeg_bytes((80, 120), (10, 10, 10)),
        "b.page_2.jpg": _jpeg_bytes((120, 80), (200, 0, 0)),
        "c.png": b"",  # replaced below with a real PNG in palette mode
    }
    root = _make_root(tmp_path, pages)
    Image.new("P", (64, 96), 3).save(root / "images" / "c.png")
    entries = [
        {"page_info": {"image_path": "a.jpg", "width": 80, "height": 120, "page_attribute": {"language": "english"}}},
        {"page_info": {"image_path": "b.page_2.jpg", "width": 80, "height": 120}},  # swapped on purpose
        {"page_info": {"image_path": "c.png"}},
    ]
    (root / "OmniDocBench.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


def test_loader_reads_pages_in_annotation_order(small_root: Path) -> None:
    pages = load_omnidocbench(small_root)
    assert [p.page_id for p in pages] == ["a", "b.page_2", "c"]
    assert all(p.source == "omnidocbench" and p.image.mode == "RGB" for p in pages)
    assert [p.image.size for p in pages] == [(80, 120), (120, 80), (64, 96)]
    first, second, third = (p.meta for p in pages)
    assert first == {
        "path": str(small_root.resolve() / "images" / "a.jpg"),
        "width": 80,
        "height": 120,
        "page_attribute": {"language": "english"},
    }
    assert Path(second["path"]).is_absolute()
    # The decoded size wins; a disagreeing annotation is kept for the record.
    assert (second["width"], second["height"], second["page_info_size"]) == (120, 80, [80, 120])
    assert "page_attribute" not in third and "page_info_size" not in third


def test_loader_accepts_pathlike_and_str(small_root: Path) -> None:
    assert len(load_omnidocbench(str(small_root))) == len(load_omnidocbench(small_root)) == 3


def test_loader_leaves_no_open_files(small_root: Path) -> None:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc/self/fd to list open files")

    def open_image_files() -> list[str]:
        targets = []
        for fd in os.listdir(fd_dir):
            try:
                targets.append(os.readlink(fd_dir / fd))
            except OSError:
                continue
        return [t for t in targets if t.startswith(str(small_root.resolve()))]

    pages = load_omnidocbench(small_root)
    assert open_image_files() == []
    # Pixels stay usable after the files are gone.
    for name in ("a.jpg", "b.page_2.jpg", "c.png"):
        (small_root / "images" / name).unlink()
    assert pages[0].image.getpixel((1, 1))[0] < 60


def test_loader_subset_order_comments_and_relative_paths(small_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    text = "# picked pages\n\nc.png\n  a.jpg  \n# b.page_2.jpg\n"
    (small_root / "subset.txt").write_text(text, encoding="utf-8")
    assert [p.page_id for p in load_omnidocbench(small_root, "subset.txt")] == ["c", "a"]

    # Relative to the current directory when the root does not have it.
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    (elsewhere / "mine.txt").write_text("b.page_2.jpg\n", encoding="utf-8")
    monkeypatch.chdir(elsewhere)
    assert [p.page_id for p in load_omnidocbench(small_root, "mine.txt")] == ["b.page_2"]

    # The root wins over the current directory for the same relative name.
    (elsewhere / "subset.txt").write_text("a.jpg\n", encoding="utf-8")
    assert [p.page_id for p in load_omnidocbench(small_root, Path("subset.txt"))] == ["c", "a"]

    # Absolute path.
    assert [p.page_id for p in load_omnidocbench(small_root, elsewhere / "mine.txt")] == ["b.page_2"]


def test_loader_limit(small_root: Path) -> None:
    assert [p.page_id for p in load_omnidocbench(small_root, limit=2)] == ["a", "b.page_2"]
    assert len(load_omnidocbench(small_root, limit=100)) == 3
    (small_root / "subset.txt").write_text("c.png\nb.page_2.jpg\n", encoding="utf-8")
    assert [p.page_id for p in load_omnidocbench(small_root, "subset.txt", limit=1)] == ["c"]


def test_loader_limit_skips_broken_pages_it_does_not_select(small_root: Path) -> None:
    (small_root / "images" / "c.png").write_bytes(b"garbage")
    assert len(load_omnidocbench(small_root, limit=2)) == 2


def _error(*args: object, **kwargs: object) -> str:
    with pytest.raises(InputError) as caught:
        load_omnidocbench(*args, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and ": " in message  # one line: what is wrong, then how to fix it
    return message


def test_error_root_missing(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope")
    assert "does not exist" in message and "dataset.root" in message


def test_error_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in _error(tmp_path / "file")


def test_error_annotation_missing(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    message = _error(tmp_path)
    assert "has no OmniDocBench.json" in message and "dataset.root" in message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[{", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"page_info": {}}', "not a list"),
        ('"text"', "not a list"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
    ],
)
def test_error_annotation_broken(tmp_path: Path, content: str | bytes, needle: str) -> None:
    (tmp_path / "images").mkdir()
    path = tmp_path / "OmniDocBench.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    message = _error(tmp_path)
    assert needle in message and "OmniDocBench.json" in message


@pytest.mark.parametrize("entry", [{}, {"page_info": {}}, {"page_info": {"image_path": ""}}, "a.jpg",
                                   {"page_info": "a.jpg"}])
def test_error_entry_without_image_path(tmp_path: Path, entry: object) -> None:
    root = _make_root(tmp_path, {"a.jpg": _jpeg_bytes((64, 64), (0, 0, 0))},
                      entries=[{"page_info": {"image_path": "a.jpg"}}, entry])
    assert "entry 1 has no page_info.image_path" in _error(root)


def test_error_empty_annotation_list(tmp_path: Path) -> None:
    root = _make_root(tmp_path, {}, entries=[])
    assert "no OmniDocBench pages selected" in _error(root)


def test_error_subset_missing(small_root: Path) -> None:
    message = _error(small_root, "missing.txt")
    assert "subset file missing.txt not found" in message and str(small_root.resolve()) in message


def test_error_subset_name_not_annotated(small_root: Path) -> None:
    (small_root / "subset.txt").write_text("a.jpg\nzzz.jpg\na\n", encoding="utf-8")
    message = _error(small_root, "subset.txt")
    assert "names 2 image(s) not in" in message and "zzz.jpg" in message


def test_error_subset_duplicate_name(small_root: Path) -> None:
    (small_root / "subset.txt").write_text("a.jpg\nc.png\na.jpg\n", encoding="utf-8")
    assert "lists a.jpg twice" in _error(small_root, "subset.txt")


def test_error_subset_selects_nothing(small_root: Path) -> None:
    (small_root / "subset.txt").write_text("# only comments\n\n   \n", encoding="utf-8")
    message = _error(small_root, "subset.txt")
    assert "no OmniDocBench pages selected" in message and "subset.txt" in message


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_error_bad_limit(small_root: Path, limit: object) -> None:
    assert "limit" in _error(small_root, limit=limit)


def test_error_images_folder_missing(tmp_path: Path) -> None:
    root = tmp_path / "odb"
    root.mkdir()
    (root / "OmniDocBench.json").write_text(json.dumps([{"page_info": {"image_path": "a.jpg"}}]))
    assert "has no images/ folder" in _error(root)


def test_error_image_missing(small_root: Path) -> None:
    (small_root / "images" / "b.page_2.jpg").unlink()
    message = _error(small_root)
    assert "b.page_2.jpg is missing" in message


def test_error_image_missing_is_reported_before_decoding(small_root: Path) -> None:
    # A garbage first image must not hide that a later one is missing: existence is checked first.
    (small_root / "images" / "a.jpg").write_bytes(b"garbage")
    (small_root / "images" / "c.png").unlink()
    assert "c.png is missing" in _error(small_root)


@pytest.mark.parametrize("keep_fraction", [0.1, 0.5])
def test_error_image_truncated(small_root: Path, keep_fraction: float) -> None:
    # 10% cuts into the JPEG header (open fails); 50% keeps the header but cuts the scan data
    # (only decoding fails), which is why the loader decodes eagerly.
    data = _jpeg_bytes((400, 400), (5, 5, 5))
    (small_root / "images" / "a.jpg").write_bytes(data[: int(len(data) * keep_fraction)])
    message = _error(small_root)
    assert "a.jpg is unreadable" in message


def test_error_image_garbage(small_root: Path) -> None:
    (small_root / "images" / "b.page_2.jpg").write_bytes(b"this is not an image at all" * 10)
    message = _error(small_root)
    assert "b.page_2.jpg is unreadable" in message


def test_error_image_is_a_folder(small_root: Path) -> None:
    path = small_root / "images" / "c.png"
    path.unlink()
    path.mkdir()
    assert "c.png is missing" in _error(small_root)


# --- OmniDocBench loader on the real demo pages ----------------------------------------------


@pytest.fixture(scope="module")
def demo_root() -> Path:
    if not DEMO_ROOT.is_dir():
        pytest.skip(f"OmniDocBench demo pages not found at {DEMO_ROOT}: they live in ../shared beside the checkout")
    return DEMO_ROOT


@pytest.fixture(scope="module")
def demo_pages(demo_root: Path) -> list[Page]:
    return load_omnidocbench(demo_root)


@pytest.fixture(scope="module")
def demo_page_infos(demo_root: Path) -> list[dict]:
    entries = json.loads((demo_root / "OmniDocBench.json").read_text(encoding="utf-8"))
    return [entry["page_info"] for entry in entries]


def test_demo_loads_all_pages(demo_pages: list[Page], demo_page_infos: list[dict]) -> None:
    assert len(demo_pages) == 18
    assert [p.page_id for p in demo_pages] == [Path(info["image_path"]).stem for info in demo_page_infos]
    assert len({p.page_id for p in demo_pages}) == 18
    for page in demo_pages:
        assert page.source == "omnidocbench"
        assert Path(page.meta["path"]).is_file() and Path(page.meta["path"]).is_absolute()
        assert "page_attribute" in page.meta
        _assert_looks_like_a_page(page)


def test_demo_sizes_match_page_info(demo_pages: list[Page], demo_page_infos: list[dict]) -> None:
    checked = 0
    for page, info in zip(demo_pages, demo_page_infos, strict=True):
        assert (page.meta["width"], page.meta["height"]) == page.image.size
        if "width" in info and "height" in info:
            checked += 1
            annotated = (info["width"], info["height"])
            # Several demo entries give width and height swapped relative to the JPEG; the loader
            # keeps the real size and records the annotation's.
            assert page.image.size in (annotated, annotated[::-1])
            if page.image.size != annotated:
                assert page.meta["page_info_size"] == list(annotated)
            else:
                assert "page_info_size" not in page.meta
    assert checked == 18
    assert max(max(p.image.size) for p in demo_pages) >= 2000


def test_demo_subset_order(demo_root: Path, demo_page_infos: list[dict], tmp_path: Path) -> None:
    names = [demo_page_infos[i]["image_path"] for i in (11, 2, 7)]
    subset = tmp_path / "subset.txt"
    subset.write_text("# three demo pages\n" + "\n".join(names) + "\n", encoding="utf-8")
    pages = load_omnidocbench(demo_root, subset)
    assert [p.page_id for p in pages] == [Path(n).stem for n in names]
    assert [Path(p.meta["path"]).name for p in pages] == names


def test_demo_limit(demo_root: Path, demo_pages: list[Page]) -> None:
    pages = load_omnidocbench(demo_root, limit=2)
    assert [p.page_id for p in pages] == [p.page_id for p in demo_pages[:2]]
    assert pages[0].image.tobytes() == demo_pages[0].image.tobytes()
