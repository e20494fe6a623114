"""`adapt run` for object-detection end to end on a tiny random detector and the real-pixel
detection set (adapt.plugins.detection.example_set): COCO and YOLO data, mAP in the report for every form,
box agreement of the exported graph's own NMS, the report's picture, and predictions as
JSON (and drawn) from PyTorch, from the exported file and from the standalone predict.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from adapt.cli import make_cli
from adapt.plugins.detection.example_set import make_detection_set
from adapt.host import make_host


def invoke(args):
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), args)
    assert result.exit_code == 0, result.output
    return result


def config(tmp_path, source, path):
    return {
        "name": f"det-{source}",
        "task": "object-detection",
        "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050", "options": {"image_size": 64, "head": {"channels": 16, "depth": 1}}},
        "method": {"name": "lora", "options": {"r": 2, "alpha": 4}},
        "data": {"source": source, "path": str(path), "split": {"val": 0.25, "test": 0.25, "seed": 0}},
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "augment": ["crop"]},
        "export": {"quantize": "int8", "latency_runs": 3, "mobile": False},
        "output_dir": str(tmp_path / "runs"),
    }


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory):
    return make_detection_set(tmp_path_factory.mktemp("set") / "digits", images=40, size=64, seed=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory, detection_set):
    tmp_path = tmp_path_factory.mktemp("det")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, "coco", detection_set)))
    invoke(["run", str(path)])
    return tmp_path / "runs" / "det-coco"


def test_the_report_has_map_for_every_form_and_box_agreement_for_every_export(run):
    report = json.loads((run / "report.json").read_text())
    assert set(report["metrics"]) >= {"adapted", "merged", "onnx", "onnx_int8"}
    for form, metrics in report["metrics"].items():
        assert {"map", "map50", "map75"} <= set(metrics), form
        assert metrics["objects"] > 0
    for form in ("onnx", "onnx_optimized"):
        assert report["parity"][form]["verified"] and report["parity"][form]["box_agreement"] == 1.0
    assert "box_agreement" in report["parity"]["onnx_int8"]
    assert report["data"]["labels"] == sorted(report["data"]["labels"])
    picture = run / report["pictures"]["detections"]
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.width > 2 * 64
    assert "detections.png" in (run / "report.md").read_text()


@pytest.mark.slow
def test_the_html_report_renders_in_chromium_with_the_drawn_boxes(run):
    from tests.report_page import check_report_page

    report = json.loads((run / "report.json").read_text())
    assert report["pictures"] == {"detections": "pictures/detections.png"}
    dom = check_report_page(run, pictures=2)  # the training curve and the test images with their boxes
    assert 'alt="detections"' in dom and "map" in dom


def test_pytorch_the_exported_file_and_predict_py_give_the_same_boxes(run, detection_set, tmp_path):
    image = str(detection_set / "images" / "00000.jpg")
    eager = json.loads(invoke(["predict", str(run), image, "--min-score", "0", "--draw", str(tmp_path / "eager.png")]).output)
    onnx_row = json.loads(invoke(["predict", str(run), image, "--onnx", "--model", str(run / "export" / "model.onnx"), "--min-score", "0"]).output)
    standalone = subprocess.run([sys.executable, str(run / "export" / "predict.py"), str(run / "export" / "model.onnx"), image, "--min-score", "0", "--draw", str(tmp_path / "device.png")], capture_output=True, text=True, check=True)
    device = json.loads(standalone.stdout)
    assert len(eager["detections"]) == len(onnx_row["detections"]) == len(device["detections"]) > 0
    for a, b in zip(eager["detections"][:10], device["detections"][:10]):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-3
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) < 0.5  # pixels of the 64 x 64 image
    assert onnx_row["detections"] == device["detections"]
    for name in ("eager.png", "device.png"):
        with Image.open(tmp_path / name) as drawn:
            assert drawn.size == (64, 64)


def test_yolo_data_trains_the_same_way(tmp_path, detection_set):
    path = tmp_path / "config.yaml"
    settings = config(tmp_path, "yolo", detection_set)
    settings["export"] = {"formats": []}
    path.write_text(yaml.safe_dump(settings))
    invoke(["run", str(path)])
    report = json.loads((tmp_path / "runs" / "det-yolo" / "report.json").read_text())
    assert report["data"]["source"] == "yolo" and report["data"]["labels"] == [str(d) for d in range(10)]
    assert report["metrics"]["merged"]["objects"] > 0 and report["parity"]["merged"]["verified"]


def test_one_class_is_a_detector_and_no_box_at_all_is_a_clear_error(tmp_path, detection_set):
    """A one-class set trains (the background is implicit); a set whose annotations hold
    no box is refused with one message before any training."""
    import shutil

    one = tmp_path / "one-class"
    shutil.copytree(detection_set, one)
    coco = json.loads((one / "annotations.json").read_text())
    coco["categories"] = [{"id": 1, "name": "digit"}]
    for note in coco["annotations"]:
        note["category_id"] = 1
    (one / "annotations.json").write_text(json.dumps(coco))
    settings = config(tmp_path, "coco", one)
    settings["export"] = {"formats": []}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(settings))
    invoke(["run", str(path)])
    assert json.loads((tmp_path / "runs" / "det-coco" / "report.json").read_text())["data"]["labels"] == ["digit"]

    coco["annotations"] = []
    (one / "annotations.json").write_text(json.dumps(coco))
    settings["name"] = "empty"
    path.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(path)])
    assert result.exit_code == 2 and "holds no labels: task 'object-detection' needs at least 1" in result.output
    assert not (tmp_path / "runs" / "empty").exists() or not (tmp_path / "runs" / "empty" / "adapter").exists()


def test_several_images_are_drawn_into_one_file_each(run, detection_set, tmp_path):
    images = [str(detection_set / "images" / f"0000{i}.jpg") for i in range(2)]
    rows = [json.loads(line) for line in invoke(["predict", str(run), *images, "--min-score", "0", "--draw", str(tmp_path / "out.png")]).output.splitlines()]
    assert [r["drawn"] for r in rows] == [str(tmp_path / "out_00000.png"), str(tmp_path / "out_00001.png")]
    assert all((tmp_path / f"out_0000{i}.png").is_file() for i in range(2)) and not (tmp_path / "out.png").exists()


def test_two_images_of_the_same_name_are_drawn_into_two_files(run, detection_set, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first, second = (tmp_path / f / "photo.jpg" for f in ("a", "b"))
    Image.open(detection_set / "images" / "00000.jpg").save(first)
    Image.open(detection_set / "images" / "00001.jpg").save(second)
    rows = [json.loads(line) for line in invoke(["predict", str(run), str(first), str(second), "--min-score", "0", "--draw", str(tmp_path / "out.png")]).output.splitlines()]
    assert [r["drawn"] for r in rows] == [str(tmp_path / "out_1_photo.png"), str(tmp_path / "out_2_photo.png")]
    assert Image.open(rows[0]["drawn"]).tobytes() != Image.open(rows[1]["drawn"]).tobytes()


@pytest.mark.parametrize("onnx", [False, True], ids=["pytorch", "onnx"])
def test_a_non_image_and_a_draw_folder_that_cannot_be_written_are_one_message_each(run, detection_set, tmp_path, onnx):
    cli = make_cli(lambda: make_host(autoload=False))
    flag = ["--onnx"] if onnx else []
    (tmp_path / "notes.txt").write_text("not a picture")
    result = CliRunner().invoke(cli, ["predict", str(run), *flag, str(tmp_path / "notes.txt")])
    assert result.exit_code == 2 and "is not an image this model can read" in result.output and "check the inputs" in result.output, result.output
    assert "export it again" not in result.output and "Traceback" not in result.output
    image = str(detection_set / "images" / "00000.jpg")
    result = CliRunner().invoke(cli, ["predict", str(run), *flag, image, "--draw", str(tmp_path / "missing" / "out.png")])
    assert result.exit_code == 2 and "--draw" in result.output and "does not exist" in result.output and "does not fit" not in result.output, result.output
