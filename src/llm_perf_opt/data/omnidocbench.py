"""Pages from an OmniDocBench-layout folder.

The root holds `OmniDocBench.json` (a JSON list with one entry per page; `page_info.image_path`
names a file in `images/`, and `page_info` may carry `width`, `height` and `page_attribute`) and the
`images/` folder. An optional subset file picks pages by image file name and sets their order.

Every problem a user can fix (wrong root, broken annotation file, unknown subset name, missing or
unreadable image, nothing selected) raises `InputError` with a one-line message before any model is
loaded. Images are decoded fully and their files closed, so the pages stay valid after the loader
returns and no file handles leak into a long profiling run.
"""

from __future__ import annotations

import json
import os
from numbers import Integral
from pathlib import Path
from typing import Any

from PIL import Image

from llm_perf_opt.data.pages import Page
from llm_perf_opt.errors import InputError

ANNOTATION_FILE = "OmniDocBench.json"
IMAGES_DIR = "images"


def load_omnidocbench(
    root: str | os.PathLike[str],
    subset_file: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[Page]:
    """Load OmniDocBench pages as RGB images.

    Pages follow the subset file's order when one is given, else the annotation file's order;
    `limit` keeps the first N of those. `meta` holds the absolute image path, the decoded image's
    width and height in pixels, and `page_attribute` when the annotation has one.
    """
    if limit is not None and (not isinstance(limit, Integral) or isinstance(limit, bool) or limit < 1):
        raise InputError(
            f"OmniDocBench limit is {limit!r}: it must be a whole number >= 1 (or unset for all pages); "
            "set dataset.limit to 1 or more, or remove it"
        )
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        what = "is not a folder" if root_path.exists() else "does not exist"
        raise InputError(
            f"OmniDocBench root {root_path} {what}: point dataset.root at a folder holding "
            f"{ANNOTATION_FILE} and {IMAGES_DIR}/"
        )
    root_path = root_path.resolve()
    entries = _read_annotations(root_path)
    by_name = _index_entries(root_path, entries)

    if subset_file is not None:
        subset_path = _resolve_subset(root_path, subset_file)
        names = _read_subset(subset_path)
        unknown = [name for name in names if name not in by_name]
        if unknown:
            shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
            raise InputError(
                f"subset file {subset_path} names {len(unknown)} image(s) not in "
                f"{root_path / ANNOTATION_FILE}: {shown}; list image file names exactly as in "
                "page_info.image_path (e.g. page_1.jpg), one per line"
            )
        where = f"subset file {subset_path}"
    else:
        names = list(by_name)
        where = str(root_path / ANNOTATION_FILE)

    if limit is not None:
        names = names[:limit]
    if not names:
        raise InputError(
            f"no OmniDocBench pages selected: {where} lists no pages; add page entries or image "
            "names to it, or drop the subset file to use every page"
        )

    images_dir = root_path / IMAGES_DIR
    if not images_dir.is_dir():
        raise InputError(
            f"OmniDocBench root {root_path} has no {IMAGES_DIR}/ folder: the page images must be "
            f"in {images_dir}; point dataset.root at the folder that holds both {ANNOTATION_FILE} "
            f"and {IMAGES_DIR}/"
        )
    # Check every file exists before decoding any, so a typo fails in milliseconds, not minutes.
    for name in names:
        if not (images_dir / name).is_file():
            raise InputError(
                f"OmniDocBench image {images_dir / name} is missing: {ANNOTATION_FILE} lists it but "
                f"{IMAGES_DIR}/ has no such file; restore the file or remove it from the selection"
            )
    return [_load_page(images_dir / name, by_name[name]) for name in names]


def _read_annotations(root_path: Path) -> list[Any]:
    annotation_path = root_path / ANNOTATION_FILE
    if not annotation_path.is_file():
        raise InputError(
            f"OmniDocBench root {root_path} has no {ANNOTATION_FILE}: point dataset.root at a folder "
            f"holding {ANNOTATION_FILE} and {IMAGES_DIR}/"
        )
    try:
        with annotation_path.open("r", encoding="utf-8") as file:
            entries = json.load(file)
    except json.JSONDecodeError as error:
        raise _not_json(annotation_path, f"line {error.lineno} column {error.colno}: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise _not_json(annotation_path, f"not UTF-8 text: {error.reason} at byte {error.start}") from None
    except OSError as error:
        raise InputError(
            f"{annotation_path} cannot be read ({error.strerror or error}): check the file's permissions"
        ) from None
    if not isinstance(entries, list):
        raise InputError(
            f"{annotation_path} holds a JSON {type(entries).__name__}, not a list: OmniDocBench "
            "annotations are a JSON list of page entries; use the OmniDocBench.json from the dataset"
        )
    return entries


def _not_json(annotation_path: Path, reason: str) -> InputError:
    return InputError(
        f"{annotation_path} is not valid JSON ({reason}): replace it with the OmniDocBench "
        "annotation file, a JSON list of page entries"
    )


def _index_entries(root_path: Path, entries: list[Any]) -> dict[str, dict[str, Any]]:
    """Map image file name -> page_info, keeping the annotation file's order."""
    by_name: dict[str, dict[str, Any]] = {}
    for position, entry in enumerate(entries):
        page_info = entry.get("page_info") if isinstance(entry, dict) else None
        image_path = page_info.get("image_path") if isinstance(page_info, dict) else None
        if not isinstance(image_path, str) or not image_path.strip():
            raise InputError(
                f"{root_path / ANNOTATION_FILE} entry {position} has no page_info.image_path: every "
                "entry needs the image file name under page_info; fix or remove that entry"
            )
        # The first entry wins if a page is annotated twice; duplicate ids would merge results.
        by_name.setdefault(image_path, page_info)
    return by_name


def _resolve_subset(root_path: Path, subset_file: str | os.PathLike[str]) -> Path:
    subset_path = Path(subset_file).expanduser()
    if subset_path.is_absolute():
        candidates = [subset_path]
    else:
        # Relative names are usually kept beside the dataset; fall back to the working directory.
        candidates = [root_path / subset_path, Path.cwd() / subset_path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise InputError(
        f"OmniDocBench subset file {subset_file} not found (looked for {tried}): give an existing "
        "text file with one image name per line, relative to the dataset root or the working directory"
    )


def _read_subset(subset_path: Path) -> list[str]:
    try:
        lines = subset_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(
            f"subset file {subset_path} cannot be read ({error}): it must be a UTF-8 text file with "
            "one image file name per line"
        ) from None
    names: list[str] = []
    seen: set[str] = set()
    for line in lines:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            raise InputError(
                f"subset file {subset_path} lists {name} twice: each page may appear once, since "
                "page ids must be unique in a run; remove the duplicate line"
            )
        seen.add(name)
        names.append(name)
    return names


def _load_page(image_path: Path, page_info: dict[str, Any]) -> Page:
    try:
        # `with` closes the file; load() decodes now so truncated files fail here, not mid-run;
        # convert() returns a new image (a copy even for RGB input) that owns its pixels.
        with Image.open(image_path) as opened:
            opened.load()
            image = opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InputError(
            f"OmniDocBench image {image_path} is unreadable ({error}): it is not a complete image "
            "file; replace it with the original from the dataset or remove it from the selection"
        ) from None
    width_px, height_px = image.size
    meta: dict[str, Any] = {"path": str(image_path), "width": width_px, "height": height_px}
    if "page_attribute" in page_info:
        meta["page_attribute"] = page_info["page_attribute"]
    # Some OmniDocBench entries give width/height swapped relative to the image file; keep the
    # decoded size (what the model sees) and record the annotation's when it differs.
    annotated = (page_info.get("width"), page_info.get("height"))
    if all(isinstance(side, int) for side in annotated) and annotated != (width_px, height_px):
        meta["page_info_size"] = list(annotated)
    return Page(page_id=image_path.stem, image=image, source="omnidocbench", meta=meta)
