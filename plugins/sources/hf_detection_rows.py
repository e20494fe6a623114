"""Object detection rows of a ``datasets`` table: an image column and an objects column
holding each image's boxes and categories, as the Hub's detection sets lay them out
(``{"bbox": [[...], ...], "category": [...]}``, or a list of ``{"bbox", "category"}``).
Boxes go through the same checks as COCO's and YOLO's (:mod:`adapt.boxes`)."""

from __future__ import annotations

from typing import Any

from adapt.errors import DataError
from adapt.interfaces import Example
from adapt.boxes import checked_box, corners
from adapt.plugins.sources.hf_datasets_open import HfDatasetsOptions
from adapt.plugins.sources.hf_datasets_table import Table, named, names_of


def objects_of(value: Any) -> list[tuple[Any, Any]] | None:
    """``(bbox, category)`` per object from either layout; None if it is neither."""
    if isinstance(value, dict) and isinstance(value.get("bbox"), list) and isinstance(value.get("category"), list):
        return list(zip(value["bbox"], value["category"]))
    if isinstance(value, list) and all(isinstance(o, dict) and "bbox" in o and "category" in o for o in value):
        return [(o["bbox"], o["category"]) for o in value]
    return None


def category_names(feature: Any) -> list[str] | None:
    """The ClassLabel names of the objects' ``category`` (in a dict of lists or a list of dicts)."""
    inner = feature if isinstance(feature, dict) else getattr(feature, "feature", None)
    return names_of(inner["category"]) if isinstance(inner, dict) and "category" in inner else None


def objects_label_order(table: Table, options: HfDatasetsOptions) -> list[str] | None:
    """The data set's category names in their own order, where ``category`` is a ClassLabel."""
    if options.objects_column not in table.columns:
        return None
    return category_names(table.dataset.features[options.objects_column])


def detection_rows(table: Table, options: HfDatasetsOptions) -> list[Example]:
    """``{"image", "size", "boxes", "labels"}`` per row; a bad box or image is skipped and counted."""
    table.require(options.objects_column, "data.options.objects_column")
    names = category_names(table.dataset.features[options.objects_column])
    images = table.images(options.image_column)
    examples = []
    for row, (image, value) in enumerate(zip(images, table.dataset[options.objects_column])):
        objects = objects_of(value)
        if objects is None:
            raise DataError(
                f"{table.where(row)}: the {options.objects_column!r} column holds no `bbox` and `category` lists",
                hint="set data.options.objects_column to the column of each image's objects",
            )
        if image is None:
            continue
        width, height = image.size
        example: Example = {"image": image, "size": [width, height], "boxes": [], "labels": []}
        for number, (bbox, category) in enumerate(objects):
            box, why = checked_box(corners(bbox) if options.bbox_format == "coco" else bbox, width, height)
            label = named(category, names)
            if box is None or label is None:
                table.request.skip(f"{table.where(row)}, object {number}", why or "no category")
                continue
            example["boxes"].append(box)
            example["labels"].append(str(label))
        examples.append(example)
    return examples
