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
from adapt.interfaces import DataRequest, DataSource, Example
from adapt.paths import inside

SPLIT_FILES = {"train": ("train.json",), "val": ("val.json", "valid.json", "validation.json"), "test": ("test.json",)}


#: What a COCO annotations file holds, for messages about one that is not.
COCO_HINT = 'give the annotations file COCO tools write: {"images": [...], "annotations": [...], "categories": [...]}'


def annotation_files(root: Path) -> dict[str, Path]:
    if root.is_file() and root.suffix == ".json":
        return {"train": root}
    found = {split: root / name for split, names in SPLIT_FILES.items() for name in names if (root / name).is_file()}
    if "train" in found:
        return found
    if (root / "annotations.json").is_file():
        return {"train": root / "annotations.json"}
    raise DataError(
        f"no COCO annotations under {root}",
        hint="put annotations.json (or train.json, val.json, test.json) in data.path, with the images in "
        "data.path/images/",
    )


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise DataError(
            f"{path} is nested too deeply to be COCO JSON",
            hint=COCO_HINT,
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} is not readable COCO JSON ({exc})",
            hint=COCO_HINT,
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{path} lacks COCO's `images`, `annotations` and `categories` lists",
            hint="give the annotations file COCO tools write",
        )
    return data


def _is_id(value: Any) -> bool:
    """COCO ids are numbers or strings; a list or an object cannot name an image."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco(path: Path, request: DataRequest) -> list[Example]:
    """Detection examples of one COCO file (images without boxes included). An entry
    that is not an object or has no usable id is skipped and counted; an image path
    must stay inside the images folder; two images with one id are an error (their
    boxes could not be told apart)."""
    data = _load(path)
    folder = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    names = {
        c["id"]: str(c.get("name", c["id"])) for c in data["categories"] if isinstance(c, dict) and _is_id(c.get("id"))
    }
    examples: dict[Any, Example] = {}
    first: dict[Any, int] = {}
    for number, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_id(image.get("id")):
            request.skip(f"{path.name}: images[{number}]", "not an object with a number or string id")
            continue
        if image["id"] in first:
            raise DataError(
                f"{path}: images[{first[image['id']]}] and images[{number}] have the same id {image['id']!r}",
                hint="give every image its own id (annotations name their image by id, so boxes of the two would be "
                "mixed)",
            )
        first[image["id"]] = number
        file = inside(folder, image.get("file_name"), file=path, key=f"images[{number}].file_name", error=DataError)
        size, problem = image_size(file)
        if size is None:
            request.skip(f"{path.name}: image {image['id']!r} ({image.get('file_name')})", problem)
            continue
        examples[image["id"]] = {"image": file, "size": list(size), "boxes": [], "labels": []}
    for number, note in enumerate(data["annotations"]):
        _add(
            note,
            examples,
            names,
            request,
            f"{path.name}: annotation {note.get('id', number) if isinstance(note, dict) else number}",
        )
    if not examples:
        raise DataError(f"{path} names no readable image", hint=f"the images go in {folder}")
    return list(examples.values())


def _add(note: Any, examples: dict[Any, Example], names: dict[Any, str], request: DataRequest, where: str) -> None:
    if not isinstance(note, dict) or not _is_id(note.get("image_id")) or note["image_id"] not in examples:
        return  # its image was skipped (and counted) already, or it names none
    if not _is_id(note.get("category_id")) or note["category_id"] not in names:
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


class CocoSource(DataSource):
    name = "coco"
    tasks = ("object-detection",)
    #: an image with its boxes and their labels
    fields = ("image", "size", "boxes", "labels")
    options_schema = None

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        if request.path is None:
            raise DataError(
                "the coco data source needs data.path",
                hint="a folder with annotations.json (or train.json, ...) and the images",
            )
        return {split: read_coco(file, request) for split, file in annotation_files(request.path).items()}


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(CocoSource())
