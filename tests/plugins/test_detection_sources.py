"""The detection data: the digits-on-photographs set (deterministic, real pixels) and the
``coco`` and ``yolo`` sources, which read the same boxes from its two formats and skip
(and count) every kind of bad annotation instead of failing the run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.plugins.detection.example_set import NAMES, make_detection_set
from adapt.errors import DataError
from adapt.interfaces import DataRequest
from adapt.plugins.detection.coco_source import CocoSource
from adapt.plugins.detection.yolo_source import YoloSource


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_detection_set(tmp_path_factory.mktemp("det") / "set", images=12, size=96, seed=3)


def read(source, path: Path) -> tuple[list[dict], list[str]]:
    request = DataRequest("object-detection", path)
    return source.read(request)["train"], request.skipped


def digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_the_set_is_deterministic_and_real_photographs_show_through(dataset, tmp_path):
    again = make_detection_set(tmp_path / "again", images=12, size=96, seed=3)
    assert digest(dataset) == digest(again)
    pixels = np.asarray(Image.open(dataset / "images" / "00000.jpg"))
    assert pixels.shape == (96, 96, 3) and pixels.std() > 20  # a photograph, not a flat canvas
    coco = json.loads((dataset / "annotations.json").read_text())
    assert len(coco["images"]) == 12 and 12 <= len(coco["annotations"]) <= 36 and [c["name"] for c in coco["categories"]] == NAMES


def test_the_set_never_writes_into_a_folder_that_holds_anything(tmp_path):
    from adapt.plugins.detection.example_set import main

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "annotations.json").write_text("my own annotations")
    with pytest.raises(DataError, match="not an empty folder"):
        make_detection_set(tmp_path / "mine", images=2, size=64)
    assert main([str(tmp_path / "mine"), "--images", "2"]) == 2
    assert (tmp_path / "mine" / "annotations.json").read_text() == "my own annotations" and sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["annotations.json"]


def test_coco_and_yolo_give_the_same_boxes_and_labels(dataset):
    coco, coco_skipped = read(CocoSource(), dataset)
    yolo, yolo_skipped = read(YoloSource(), dataset)
    assert not coco_skipped and not yolo_skipped and len(coco) == len(yolo) == 12
    for a, b in zip(sorted(coco, key=lambda e: e["image"]), sorted(yolo, key=lambda e: e["image"])):
        assert a["image"] == b["image"] and a["size"] == b["size"] == [96, 96] and a["labels"] == b["labels"]
        assert np.allclose(a["boxes"], b["boxes"], atol=1e-3)  # YOLO's normalised text keeps 6 decimals


def test_bad_coco_annotations_are_skipped_and_counted(dataset, tmp_path):
    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (folder / "images" / name).write_bytes((dataset / "images" / "00000.jpg").read_bytes())
    (folder / "images" / "broken.jpg").write_bytes(b"not an image")
    good = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30]}
    bad = [
        {"id": 2, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 5]},  # zero area
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [90, 90, 50, 50]},  # outside the 96x96 image
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # a crowd region
        {"id": 6, "image_id": 2, "category_id": 3, "bbox": "x"},  # not numbers
    ]
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "missing.jpg"}, {"id": 4, "file_name": "broken.jpg"}], "annotations": [good, *bad], "categories": [{"id": 3, "name": "three"}]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    examples, skipped = read(CocoSource(), folder)
    assert [e["boxes"] for e in examples] == [[[10.0, 10.0, 30.0, 40.0]], []] and examples[0]["labels"] == ["three"]
    reasons = " | ".join(skipped)
    assert len(skipped) == 7
    for why in ("unknown category id 99", "zero or negative area", "outside the 96x96 image", "crowd region", "not four finite numbers", "image file is missing", "unreadable image"):
        assert why in reasons, why


def test_bad_yolo_lines_are_skipped_and_counted(dataset, tmp_path):
    folder = tmp_path / "yolo"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    (folder / "images" / "a.jpg").write_bytes((dataset / "images" / "00000.jpg").read_bytes())
    (folder / "images" / "b.jpg").write_bytes((dataset / "images" / "00001.jpg").read_bytes())  # no label file: no objects
    (folder / "names.txt").write_text("cat\ndog\n")
    (folder / "labels" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n7 0.5 0.5 0.1 0.1\n0 0.5 0.5 0 0.1\n0 1.5 1.5 0.2 0.2\n0 0.5 0.5\nx 1 2 3 4\n\n")
    (folder / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    examples, skipped = read(YoloSource(), folder)
    assert examples[0]["boxes"] == [[36.0, 24.0, 60.0, 72.0]] and examples[0]["labels"] == ["dog"] and examples[1]["boxes"] == []
    reasons = " | ".join(skipped)
    assert len(skipped) == 6
    for why in ("class 7 has no name", "zero or negative area", "outside the 96x96 image", "expected `class cx cy w h`", "without its image"):
        assert why in reasons, why


def test_ultralytics_layout_with_data_yaml_and_split_folders(dataset, tmp_path):
    root = tmp_path / "ultra"
    for split, images in (("train", ["00000", "00001"]), ("val", ["00002"])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem in images:
            (root / "images" / split / f"{stem}.jpg").write_bytes((dataset / "images" / f"{stem}.jpg").read_bytes())
            (root / "labels" / split / f"{stem}.txt").write_text((dataset / "labels" / f"{stem}.txt").read_text())
    (root / "data.yaml").write_text("names: {0: zero, 1: one, 2: two, 3: three, 4: four, 5: five, 6: six, 7: seven, 8: eight, 9: nine}\n")
    splits = YoloSource().read(DataRequest("object-detection", root))
    assert set(splits) == {"train", "val"} and len(splits["train"]) == 2 and len(splits["val"]) == 1
    assert all(label in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"} for e in splits["train"] for label in e["labels"])


def test_missing_pieces_are_one_clear_message(tmp_path):
    with pytest.raises(DataError, match="no COCO annotations"):
        CocoSource().read(DataRequest("object-detection", tmp_path))
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no names.txt or data.yaml"):
        YoloSource().read(DataRequest("object-detection", tmp_path))
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable COCO JSON"):
        CocoSource().read(DataRequest("object-detection", tmp_path))
