"""``yolo``: object-detection data in the YOLO (Ultralytics) layout. ``data.path`` holds
``images/`` and ``labels/`` (one ``<image stem>.txt`` per image, a line ``class cx cy w h``
per object, normalised to 0..1), or ``images/train``, ``images/val`` (or ``valid``),
``images/test`` with the same folders under ``labels/``, which are then the splits;
and the class names in ``names.txt`` (one per line) or Ultralytics' ``data.yaml``
(``names:`` as a list or an index -> name mapping).

Bad annotations never stop a run: a line that is not five numbers, a class index
without a name, a box of zero or negative size or outside the image, and an image
that is unreadable are skipped and counted in the report (``data.skipped``). An
image without a label file has no objects, as in YOLO."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt import hookimpl
from adapt.boxes import checked_box, image_size
from adapt.data import SPLIT_STEMS
from adapt.errors import DataError
from adapt.interfaces import DataRequest, DataSource, Example

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def class_names(root: Path) -> list[str]:
    """The class names from names.txt or data.yaml's ``names`` (a list, or a mapping
    from class index to name); any other shape is one message naming the file."""
    if (root / "names.txt").is_file():
        names = [line.strip() for line in _text(root / "names.txt").splitlines() if line.strip()]
    elif (root / "data.yaml").is_file():
        names = _yaml_names(root / "data.yaml")
    else:
        raise DataError(
            f"{root} has no names.txt or data.yaml naming the classes",
            hint="write names.txt: one class name per line, line N naming class N",
        )
    if not names:
        raise DataError(f"the class names of {root} are empty", hint="names.txt: one class name per line")
    return names


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r})",
            hint=f"save {path.name} as UTF-8 (for example `iconv -f latin1 -t utf-8`)",
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}", hint="check the file's permissions") from None


def _yaml_names(path: Path) -> list[str]:
    import yaml

    hint = "data.yaml needs `names:` as a list of class names, or a mapping from class index (0, 1, ...) to name"
    try:
        data = yaml.safe_load(_text(path))
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not YAML ({str(exc).splitlines()[0]})", hint=hint) from None
    raw = data.get("names") if isinstance(data, dict) else None
    if isinstance(raw, list):
        return [str(n) for n in raw]
    if isinstance(raw, dict):
        try:
            index = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: names has a key that is not a class index ({', '.join(repr(k) for k in list(raw)[:3])})",
                hint=hint,
            ) from None
        if len(index) != len(raw) or sorted(index) != list(range(len(index))):
            raise DataError(
                f"{path}: names' indices are {sorted(index)[:8]}, not 0..{len(raw) - 1} once each", hint=hint
            )
        return [index[i] for i in range(len(index))]
    if not isinstance(data, dict):
        raise DataError(f"{path} is a YAML {type(data).__name__}, not a mapping with `names`", hint=hint)
    raise DataError(
        f"{path}: `names` is " + ("missing" if raw is None else f"a {type(raw).__name__} ({raw!r})"), hint=hint
    )


def read_yolo(images: Path, labels: Path, names: list[str], request: DataRequest) -> list[Example]:
    """Detection examples of one folder of images and its folder of label files."""
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images.is_dir() else []
    if not files:
        raise DataError(f"no images in {images}", hint=f"supported suffixes: {', '.join(IMAGE_SUFFIXES)}")
    examples = []
    for file in files:
        size, problem = image_size(file)
        if size is None:
            request.skip(str(file), problem)
            continue
        example: Example = {"image": file, "size": list(size), "boxes": [], "labels": []}
        label_file = labels / f"{file.stem}.txt"
        if label_file.is_file():
            for number, line in enumerate(label_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if line.strip():
                    _add(line, example, names, request, f"{label_file}, line {number}")
        examples.append(example)
    stems = {f.stem for f in files}
    for orphan in sorted(labels.glob("*.txt")) if labels.is_dir() else []:
        if orphan.stem not in stems:
            request.skip(str(orphan), "a label file without its image")
    return examples


def _add(line: str, example: Example, names: list[str], request: DataRequest, where: str) -> None:
    parts = line.split()
    try:
        cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
        if len(parts) != 5:
            raise ValueError
    except (ValueError, IndexError):
        request.skip(where, f"expected `class cx cy w h`, got {line.strip()!r}")
        return
    if not 0 <= cls < len(names):
        request.skip(where, f"class {cls} has no name ({len(names)} names)")
        return
    width, height = example["size"]
    box, problem = checked_box(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], width, height
    )
    if box is None:
        request.skip(where, problem)
        return
    example["boxes"].append(box)
    example["labels"].append(names[cls])


class YoloSource(DataSource):
    name = "yolo"
    tasks = ("object-detection",)
    #: an image with its boxes and their labels
    fields = ("image", "size", "boxes", "labels")
    options_schema = None

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        root = request.path
        if root is None or not (root / "images").is_dir():
            raise DataError(
                f"data.path must hold images/ and labels/ folders, got {root}",
                hint="the YOLO layout: images/, labels/ (one .txt per image) and names.txt",
            )
        names = class_names(root)
        splits = {
            split: stem for split, stems in SPLIT_STEMS.items() for stem in stems if (root / "images" / stem).is_dir()
        }
        if "train" in splits:
            return {
                split: read_yolo(root / "images" / stem, root / "labels" / stem, names, request)
                for split, stem in splits.items()
            }
        return {"train": read_yolo(root / "images", root / "labels", names, request)}


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(YoloSource())
