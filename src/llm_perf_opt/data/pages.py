"""The page record every input source returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Page:
    """One document page, ready to be turned into model inputs.

    `image` is an RGB PIL image; `source` names where it came from ("synthetic" or "omnidocbench");
    `meta` holds source-specific details (path, generator seed, size) that are logged with the run.
    """

    page_id: str
    image: Image.Image
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
