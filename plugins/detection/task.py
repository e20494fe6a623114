"""``object-detection``: boxes and their classes, on any backbone that builds an
adapt.plugins.detection.detector model (``mobilenet`` does, for every timm mobile CNN).

Examples (from the ``coco`` and ``yolo`` sources): ``{"image": path or array, "size":
[width, height], "boxes": [[x1, y1, x2, y2], ...] in pixels, "labels": [name, ...]}``.
The backbone's collator turns them into ``labels`` rows ``class, x1, y1, x2, y2`` in
fractions of the image (adapt.plugins.detection.loss). The loss is FCOS's; predictions are the
final detections after class-aware NMS, in fractions of the image; the metrics are
COCO mAP by pycocotools, ``map50`` (mAP@.5) the primary one.

Optional task members this plugin fills (docs/plugins.md, "Tasks"): ``augment`` (a
random horizontal flip and scale-crop of training images, boxes moved with them),
``graph_outputs`` (the exported graph ends in final boxes, adapt.plugins.detection.detector), and
``final_predictions`` / ``agreement`` (the graph's final boxes against the merged
model's, the report's ``box_agreement``).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from adapt import hookimpl
from adapt.errors import ConfigError, DataError
from adapt.interfaces import IGNORE_INDEX, BuiltModel, Example, Task

if TYPE_CHECKING:
    import numpy as np
    import torch

#: The report's picture of test detections, in the run directory.
PICTURE = "detections.png"
#: A detection agrees when a box of the same class overlaps it by at least this IoU.
AGREEMENT_IOU = 0.9
#: Detections scoring below this are not compared (they sit at the score threshold's edge).
AGREEMENT_SCORE = 0.3


class ObjectDetection(Task):
    name = "object-detection"
    pipeline_tag = "object-detection"
    primary_metric = "map50"
    agreement_name = "box_agreement"
    #: One class is a detector (its background is implicit); none is not.
    min_labels = 1
    fields = ("image", "boxes", "labels")
    #: predict prints the final boxes of the graph (NMS inside) above --min-score, and draws them with --draw
    postprocess = MappingProxyType({"kind": "boxes"})

    def wrap_model(self, built: BuiltModel, num_labels: int) -> BuiltModel:
        """The detector: the backbone's feature levels (``BuiltModel.pyramid``) under the FCOS-style
        head (adapt.plugins.detection.detector), sized by the backbone's ``head_options``."""
        from adapt.plugins.detection.detector import HEAD_DEFAULTS, DetectionHead, Detector
        from adapt.wrappers import wrap_built

        if not built.pyramid:
            raise ConfigError(
                "object-detection needs a backbone that builds a feature extractor (BuiltModel.pyramid: each level's "
                "channels and stride)",
                hint="use backbone mobilenet (any timm mobile CNN), or a backbone plugin that fills "
                "BuiltModel.pyramid for this task",
            )
        settings = {**HEAD_DEFAULTS, **{k: v for k, v in built.head_options.items() if k in HEAD_DEFAULTS}}
        channels, strides = (list(values) for values in zip(*built.pyramid))
        detector = Detector(
            built.model, DetectionHead(channels, strides, num_labels, settings["channels"], settings["depth"])
        )
        fresh = [n for n, _ in detector.named_parameters() if n.startswith("head.")]
        return wrap_built(built, detector, new=fresh, head=("head",))

    def read_input(self, source: str) -> Example:
        from adapt.onnx_predict import open_image

        return {"image": open_image(source), "boxes": [], "labels": []}

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        names: set[str] = set()
        for i, example in enumerate(examples):
            boxes, labels = example.get("boxes"), example.get("labels")
            if (
                "image" not in example
                or not isinstance(boxes, list)
                or not isinstance(labels, list)
                or len(boxes) != len(labels)
            ):
                raise DataError(
                    f"example {i} needs `image`, and `boxes` and `labels` lists of equal length",
                    hint="read detection data with data.source: coco or yolo",
                )
            names.update(str(label) for label in labels)
        return sorted(names)

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        unknown = [str(label) for label in example["labels"] if str(label) not in index]
        if unknown:
            raise DataError(
                f"class {unknown[0]!r} does not occur in the training data (known: {', '.join(index)})",
                hint="add training images with that class, or drop its boxes",
            )
        return {**example, "labels": [index[str(label)] for label in example["labels"]]}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from adapt.plugins.detection.loss import fcos_loss

        return fcos_loss(logits, labels)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from adapt.plugins.detection.post import Detections
        from adapt.plugins.detection.detector import IOU_THRESHOLD, MAX_DETECTIONS, SCORE_THRESHOLD, boxes_and_scores

        final = Detections(SCORE_THRESHOLD, IOU_THRESHOLD, max_detections=MAX_DETECTIONS)
        boxes, scores, classes, images = final(*boxes_and_scores(logits.float()))
        predictions = [
            _detections(boxes[images == b], scores[images == b], classes[images == b]) for b in range(len(logits))
        ]
        references = []
        for rows in labels.float():
            real = rows[rows[:, 0] != IGNORE_INDEX]
            references.append({"boxes": real[:, 1:5].tolist(), "labels": real[:, 0].long().tolist()})
        return predictions, references

    def metrics(
        self,
        predictions: Sequence[Mapping[str, Any]],
        references: Sequence[Mapping[str, Any]],
        label_names: Sequence[str],
    ) -> dict[str, float]:
        from adapt.plugins.detection.metrics import coco_map

        return coco_map(predictions, references, len(label_names))

    def augment(
        self, example: Mapping[str, Any], rng: np.random.Generator, kinds: Sequence[str] | None = None
    ) -> dict[str, Any]:
        from adapt.plugins.detection.augment import flip_and_crop

        return flip_and_crop(example, rng, ("flip", "crop") if kinds is None else kinds)

    def draw(
        self,
        examples: Sequence[Mapping[str, Any]],
        predictions: Sequence[Mapping[str, Any]],
        label_names: Sequence[str],
        folder: Path,
    ) -> dict[str, Path]:
        return draw_side_by_side(examples[:PICTURE_EXAMPLES], predictions[:PICTURE_EXAMPLES], label_names, folder)

    def graph_outputs(self, model: torch.nn.Module) -> tuple[torch.nn.Module, tuple[str, ...]]:
        from adapt.plugins.detection.detector import FINAL_OUTPUTS, FinalDetections

        return FinalDetections(model), FINAL_OUTPUTS

    def final_predictions(
        self, outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
    ) -> list[dict[str, Any]]:
        """Per-image detections from the graph's final outputs, in the units of :meth:`decode`."""
        import torch

        pixels = inputs["pixel_values"]
        side, count = float(pixels.shape[-1]), int(pixels.shape[0])
        boxes, scores, labels, images = (
            torch.from_numpy(outputs[name]) for name in ("boxes", "scores", "labels", "batch_index")
        )
        return [_detections(boxes[images == b] / side, scores[images == b], labels[images == b]) for b in range(count)]

    def agreement(self, reference: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]]) -> float:
        """The share of the reference's detections (score >= :data:`AGREEMENT_SCORE`) that the
        candidate has too: same class, IoU >= :data:`AGREEMENT_IOU`, at any score it kept."""
        import torch
        from torchvision.ops import box_iou

        wanted = found = 0
        for ref, got in zip(reference, candidate):
            keep = [i for i, s in enumerate(ref["scores"]) if s >= AGREEMENT_SCORE]
            wanted += len(keep)
            if not keep or not got["boxes"]:
                continue
            iou = box_iou(torch.tensor([ref["boxes"][i] for i in keep]), torch.tensor(got["boxes"]))
            same = torch.tensor([ref["labels"][i] for i in keep])[:, None] == torch.tensor(got["labels"])[None, :]
            found += int(((iou >= AGREEMENT_IOU) & same).any(dim=1).sum())
        return found / wanted if wanted else 1.0


#: How many test images detections.png shows.
PICTURE_EXAMPLES = 4


def draw_side_by_side(
    examples: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    label_names: Sequence[str],
    folder: Path,
) -> dict[str, Path]:
    """``detections.png``: one row per example, its true boxes (green) on the left and the
    predicted ones scoring >= 0.3 (red, with class and score) on the right."""
    import io

    from PIL import Image

    from adapt.plugins.detection.augment import pixels
    from adapt.onnx_predict import DETECTION, draw_detections
    from adapt.rundir import atomic_write_bytes

    rows = []
    for example, found in zip(examples, predictions):
        image = Image.fromarray(pixels(example["image"]))
        scale = [image.width, image.height, image.width, image.height]
        truth = [{"box": list(map(float, b))} for b in example["boxes"]]
        shown = [
            {"label": label_names[c], "score": s, "box": [v * f for v, f in zip(b, scale)]}
            for b, s, c in zip(found["boxes"], found["scores"], found["labels"])
            if s >= DETECTION["min_score"]
        ]
        rows.append((draw_detections(image, [], None, truth), draw_detections(image, shown, None)))
    width, height = max(a.width + b.width for a, b in rows) + 8, sum(a.height for a, _ in rows) + 4 * len(rows)
    sheet, top = Image.new("RGB", (width, height), (255, 255, 255)), 0
    for truth_image, found_image in rows:
        sheet.paste(truth_image, (0, top))
        sheet.paste(found_image, (truth_image.width + 8, top))
        top += truth_image.height + 4
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(folder / PICTURE, buffer.getvalue())
    return {"detections": folder / PICTURE}


def _detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    return {"boxes": boxes.tolist(), "scores": scores.tolist(), "labels": labels.long().tolist()}


@hookimpl
def adapt_register_tasks(register: Any) -> None:
    register(ObjectDetection())
