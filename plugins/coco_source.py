"""``coco``: object-detection data in COCO's JSON format. ``data.path`` is a folder
holding the images (in ``images/`` or beside the JSON) and ``annotations.json`` (split
by ``data.split``) or ``train.json`` with optionally ``val.json`` / ``test.json``.

Bad annotations never stop a run: a box outside its image, of zero or negative
area, or with an unknown category id, a crowd region, and an image that is missing
or unreadable are skipped and counted in the report (``data.skipped``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapt import hookimpl
from adapt.boxes import checked_box, corners, image_size
from adapt.errors import DataError
from adapt.interfaces import DataRequest, Example

SPLIT_FILES = {"train": ("train.json",), "val": ("val.json", "valid.json", "validation.json"), "test": ("test.json",)}


def annotation_files(root: Path) -> dict[str, Path]:
    if root.is_file() and root.suffix == ".json":
        return {"train": root}
    found = {split: root / name for split, names in SPLIT_FILES.items() for name in names if (root / name).is_file()}
    if "train" in found:
        return found
    if (root / "annotations.json").is_file():
        return {"train": root / "annotations.json"}
    raise DataError(f"no COCO annotations under {root}", hint="put annotations.json (or train.json, val.json, test.json) in data.path, with the images in data.path/images/")


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable COCO JSON ({exc})", hint="give the annotations file COCO tools write: {\"images\": [...], \"annotations\": [...], \"categories\": [...]}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path} lacks COCO's `images`, `annotations` and `categories` lists", hint="give the annotations file COCO tools write")
    return data


def read_coco(path: Path, request: DataRequest) -> list[Example]:
    """Detection examples of one COCO file (images without boxes included)."""
    data = _load(path)
    folder = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    names = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"] if isinstance(c, dict) and "id" in c}
    examples: dict[Any, Example] = {}
    for image in data["images"]:
        where = f"{path.name}: image {image.get('id')!r} ({image.get('file_name')})"
        size, problem = image_size(folder / str(image.get("file_name", "")))
        if size is None:
            request.skip(where, problem)
            continue
        examples[image.get("id")] = {"image": folder / str(image["file_name"]), "size": list(size), "boxes": [], "labels": []}
    for number, note in enumerate(data["annotations"]):
        _add(note, examples, names, request, f"{path.name}: annotation {note.get('id', number) if isinstance(note, dict) else number}")
    if not examples:
        raise DataError(f"{path} names no readable image", hint=f"the images go in {folder}")
    return list(examples.values())


def _add(note: Any, examples: dict[Any, Example], names: dict[Any, str], request: DataRequest, where: str) -> None:
    if not isinstance(note, dict) or note.get("image_id") not in examples:
        return  # its image was skipped (and counted) already, or it names none
    if note.get("category_id") not in names:
        request.skip(where, f"unknown category id {note.get('category_id')!r}")
        return
    if note.get("iscrowd"):
        request.skip(where, "a crowd region (iscrowd: 1), not an object")
        return
    example = examples[note["image_id"]]
    box, problem = checked_box(corners(note.get("bbox")), *example["size"])
    if box is None:
        request.skip(where, problem)
        return
    example["boxes"].append(box)
    example["labels"].append(names[note["category_id"]])


class CocoSource:
    name = "coco"
    tasks = ("object-detection",)
    options_schema = None

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        if request.path is None:
            raise DataError("the coco data source needs data.path", hint="a folder with annotations.json (or train.json, ...) and the images")
        return {split: read_coco(file, request) for split, file in annotation_files(request.path).items()}


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(CocoSource())
