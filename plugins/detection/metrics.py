"""COCO mAP of detections, computed by pycocotools' own ``COCOeval`` (the reference
implementation every detection paper reports), not re-implemented here.

Per image, a prediction is ``{"boxes": [[x1, y1, x2, y2], ...], "scores": [...],
"labels": [class index, ...]}`` and a reference ``{"boxes": [...], "labels": [...]}``,
in the image's pixels. The result: ``map`` (mAP@[.5:.95]), ``map50`` (mAP@.5, the
primary metric of object-detection), ``map75``, and the counts.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Mapping, Sequence

from adapt.boxes import xywh


def coco_map(
    predictions: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any]], num_classes: int
) -> dict[str, float]:
    """mAP over a split, by pycocotools. With no reference box at all the mAPs are NaN
    (nothing to find); with no prediction they are 0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": c + 1} for c in range(num_classes)]}
    found: list[dict[str, Any]] = []
    for image, (pred, ref) in enumerate(zip(predictions, references), 1):
        truth["images"].append({"id": image})
        for box, label in zip(ref["boxes"], ref["labels"]):
            bbox = xywh(box)
            truth["annotations"].append(
                {
                    "id": len(truth["annotations"]) + 1,
                    "image_id": image,
                    "category_id": int(label) + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
        found += [
            {"image_id": image, "category_id": int(label) + 1, "bbox": xywh(box), "score": float(score)}
            for box, score, label in zip(pred["boxes"], pred["scores"], pred["labels"])
        ]
    counts = {
        "images": float(len(references)),
        "objects": float(len(truth["annotations"])),
        "detections": float(len(found)),
    }
    if not truth["annotations"]:
        return {"map": math.nan, "map50": math.nan, "map75": math.nan, **counts}
    if not found:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0, **counts}
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints its progress and table
        ground = COCO()
        ground.dataset = truth
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(found), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [float(v) for v in evaluation.stats[:3]]
    return {"map": stats[0], "map50": stats[1], "map75": stats[2], **counts}
