"""A real-pixel object-detection data set, built deterministically from data that ships
in scikit-learn: handwritten digits (``load_digits``, 8x8 grey) scaled up and pasted at
random places, sizes and contrasts onto crops of real photographs (``load_sample_images``:
a temple in China, a flower), with their true boxes. No detection data set ships in a
package this project can install, and a test or an example must not download one.

Written in the two formats people have, so the same images and boxes can be read by
either data source:

* COCO: ``images/*.jpg`` and ``annotations.json`` (``images``, ``annotations`` with
  ``bbox`` = [x, y, width, height] in pixels, ``categories`` with ids 1..10);
* YOLO: ``labels/<image stem>.txt`` (``class cx cy w h``, normalised to 0..1) and
  ``names.txt`` (one class name per line, the class index is the line number).

    python -m adapt.plugins.detection.example_set OUT_DIR [--images N] [--size 160] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from adapt.boxes import xywh

#: The class names, in class-index order (YOLO) and category-id order 1..10 (COCO).
NAMES = [str(d) for d in range(10)]


def _backgrounds() -> list[Any]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def _digits() -> tuple[Any, Any]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def compose(
    rng: Any, backgrounds: Sequence[Any], digits: Any, targets: Any, size: int, most: int
) -> tuple[Any, list[tuple[int, list[float]]]]:
    """One image: a random crop of a photograph with 1..``most`` digits pasted on it,
    non-overlapping; returns the RGB array and ``(class, [x1, y1, x2, y2])`` per digit."""
    import numpy as np
    from PIL import Image

    background = backgrounds[rng.integers(len(backgrounds))]
    top, left = rng.integers(background.shape[0] - size), rng.integers(background.shape[1] - size)
    canvas = background[top : top + size, left : left + size].astype(np.float32).copy()
    boxes: list[tuple[int, list[float]]] = []
    for _ in range(int(rng.integers(1, most + 1))):
        index = int(rng.integers(len(digits)))
        side = int(rng.integers(size // 8, size // 3))
        x, y = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
        box = [float(x), float(y), float(x + side), float(y + side)]
        if any(_overlap(box, other) > 0.0 for _, other in boxes):
            continue
        glyph = (
            np.asarray(
                Image.fromarray((digits[index] * 16).clip(0, 255).astype(np.uint8)).resize(
                    (side, side), Image.Resampling.BILINEAR
                ),
                dtype=np.float32,
            )
            / 255.0
        )
        region = canvas[y : y + side, x : x + side]
        ink = _contrasting(rng, region.mean(axis=(0, 1)))
        canvas[y : y + side, x : x + side] = region * (1 - glyph[..., None]) + ink * glyph[..., None]
        boxes.append((int(targets[index]), box))
    return canvas.clip(0, 255).astype(np.uint8), boxes


def _contrasting(rng: Any, mean: Any) -> Any:
    """An ink colour far from the background's mean in every channel, so each digit is visible."""
    import numpy as np

    return np.array([rng.integers(0, 90) if m > 127 else rng.integers(165, 256) for m in mean], dtype=np.float32)


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def make_detection_set(out: Path, images: int = 300, size: int = 160, seed: int = 0, most: int = 3) -> Path:
    """Write ``images`` images of ``size`` x ``size`` pixels with their boxes to ``out``,
    in COCO and YOLO form (see the module's docstring). The same arguments give the same files.
    ``out`` must be new or empty: the set never writes over files that are already there."""
    import numpy as np
    from PIL import Image

    from adapt.errors import DataError

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out} already exists and is not an empty folder; the detection set is written only into a new or empty "
            "one",
            hint="give a new folder",
        )
    rng = np.random.default_rng(seed)
    backgrounds, (digits, targets) = _backgrounds(), _digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(NAMES)],
    }
    for number in range(images):
        pixels, boxes = compose(rng, backgrounds, digits, targets, size, most)
        name = f"{number:05d}.jpg"
        Image.fromarray(pixels).save(out / "images" / name, quality=92)
        coco["images"].append({"id": number + 1, "file_name": name, "width": size, "height": size})
        lines = []
        for cls, (x1, y1, x2, y2) in boxes:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": number + 1,
                    "category_id": cls + 1,
                    "bbox": xywh([x1, y1, x2, y2]),
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
            lines.append(
                f"{cls} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
                f"{(y2 - y1) / size:.6f}"
            )
        (out / "labels" / f"{number:05d}.txt").write_text("".join(line + "\n" for line in lines))
    (out / "annotations.json").write_text(json.dumps(coco))
    (out / "names.txt").write_text("".join(name + "\n" for name in NAMES))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapt.plugins.detection.example_set",
        description="Write the digits-on-photographs detection set (COCO and YOLO formats).",
    )
    parser.add_argument("out", type=Path, help="folder to write (images/, annotations.json, labels/, names.txt)")
    parser.add_argument("--images", type=int, default=300, help="how many images")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels (at most 427)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 32 <= args.size <= 427:
        parser.error("--size must be between 32 and 427 (the photographs are 427 pixels high)")
    from adapt.errors import run_or_report

    return run_or_report(
        lambda: make_detection_set(args.out, args.images, args.size, args.seed),
        f"wrote {args.images} images to {args.out}",
    )


if __name__ == "__main__":
    sys.exit(main())
