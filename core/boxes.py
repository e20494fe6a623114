"""Bounding boxes as the detection data sources hand them on: ``[x1, y1, x2, y2]`` in
pixels of the image. One rule for every format, so a bad annotation is skipped (and
counted in the report) the same way whether it came from COCO, YOLO or a ``datasets``
table; core holds it because sources of two families (and third-party ones) use it.

A detection example is ``{"image": Path, "size": [width, height], "boxes": [[x1, y1,
x2, y2], ...], "labels": [name, ...]}``; an image without objects has empty lists.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

#: How far (pixels) a box may reach past the image's edge and be clipped rather than skipped:
#: annotation tools round outwards by a pixel.
EDGE_SLACK = 1.0


def corners(bbox: object) -> object:
    """COCO's ``[x, y, width, height]`` as ``[x1, y1, x2, y2]``; anything that is not four
    numbers as it is, for :func:`checked_box` to refuse with its reason."""
    if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox):
        return [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]
    return bbox


def xywh(box: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` as COCO's ``[x, y, width, height]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def checked_box(box: object, width: int, height: int) -> tuple[list[float] | None, str]:
    """``box`` clipped to the image, or None with why it cannot be used: not four finite
    numbers, zero or negative area, or reaching past the image by more than :data:`EDGE_SLACK`."""
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
    ):
        return None, f"not four finite numbers: {box!r}"
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None, f"zero or negative area: {[x1, y1, x2, y2]}"
    if x1 < -EDGE_SLACK or y1 < -EDGE_SLACK or x2 > width + EDGE_SLACK or y2 > height + EDGE_SLACK:
        return None, f"outside the {width}x{height} image: {[x1, y1, x2, y2]}"
    clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, f"no area inside the image: {[x1, y1, x2, y2]}"
    return clipped, ""


def image_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    """``(width, height)`` of an image whose pixels decode, or None with why the file cannot be read."""
    from PIL import Image

    if not path.is_file():
        return None, "the image file is missing"
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()  # the pixel data, not only the header: a short file fails here, not mid-training
            return (int(image.width), int(image.height)), ""
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
        return None, f"unreadable image ({type(exc).__name__}: {exc})"
