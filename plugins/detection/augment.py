"""Training-time augmentation of a detection example that keeps its boxes true: a
horizontal flip and a random crop (scale-up once the image is resized to the model's
input), each with probability one half; ``train.augment`` may list the kinds to use
(leave out the flip for digits and text, which a mirror changes). Evaluation never sees it (the engine applies
a task's ``augment`` to training batches only).

A box cut by the crop is clipped; one that keeps less than :data:`MIN_VISIBLE` of its
area is dropped, and a crop that would drop every box is not made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

#: The least share of a box's area that must stay inside a crop for the box to be kept.
MIN_VISIBLE = 0.6
#: The crop's side, as a share of the image's side: drawn uniformly from this range.
CROP_RANGE = (0.6, 1.0)


def pixels(image: Any) -> Any:
    """The example's image as an RGB uint8 array (a path is read with PIL)."""
    import numpy as np
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    array = np.asarray(image)
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def flip_and_crop(example: Mapping[str, Any], rng: Any, kinds: Sequence[str] = ("flip", "crop")) -> dict[str, Any]:
    """A flipped and/or cropped copy of ``example`` (image as an array, boxes in its pixels),
    by the ``kinds`` asked for. Both coins are always drawn, so the crops a seed gives do
    not depend on whether flipping is on."""
    image = pixels(example["image"])
    height, width = image.shape[:2]
    boxes = [list(map(float, b)) for b in example["boxes"]]
    labels = list(example["labels"])
    flip, crop = rng.random() < 0.5, rng.random() < 0.5
    if flip and "flip" in kinds:
        image = image[:, ::-1]
        boxes = [[width - x2, y1, width - x1, y2] for x1, y1, x2, y2 in boxes]
    if crop and "crop" in kinds:
        side = rng.uniform(*CROP_RANGE)
        crop_w, crop_h = max(1, int(width * side)), max(1, int(height * side))
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        cropped = _crop_boxes(boxes, labels, left, top, crop_w, crop_h)
        if cropped[0] or not boxes:
            image = image[top : top + crop_h, left : left + crop_w]
            boxes, labels = cropped
    return {
        **example,
        "image": image.copy(),
        "size": [int(image.shape[1]), int(image.shape[0])],
        "boxes": boxes,
        "labels": labels,
    }


def _crop_boxes(
    boxes: list[list[float]], labels: list[Any], left: int, top: int, width: int, height: int
) -> tuple[list[list[float]], list[Any]]:
    kept_boxes, kept_labels = [], []
    for (x1, y1, x2, y2), label in zip(boxes, labels):
        clipped = [max(x1 - left, 0.0), max(y1 - top, 0.0), min(x2 - left, float(width)), min(y2 - top, float(height))]
        area = (x2 - x1) * (y2 - y1)
        visible = max(0.0, clipped[2] - clipped[0]) * max(0.0, clipped[3] - clipped[1])
        if area > 0 and visible >= MIN_VISIBLE * area:
            kept_boxes.append(clipped)
            kept_labels.append(label)
    return kept_boxes, kept_labels
