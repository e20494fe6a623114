"""`adapt run` with data.source: hf-datasets end to end: scikit-learn's real digits written by
the `datasets` library as a DatasetDict (train / validation / test, an Image column, a
ClassLabel whose names are words in the data set's own order), a MobileNetV3 probe trained on
it, exported, and asked through `adapt predict`: the run's label ids are the data set's."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import yaml

from tests.cli.test_bundle_e2e import invoke

datasets = pytest.importorskip("datasets", reason="data.source: hf-datasets needs the datasets package (dev extra)")

#: not sorted: "eight" < "five" < ... would be a different order
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image * 255 / 16).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("hfdigits")
    digits = load_digits()
    features = datasets.Features({"image": datasets.Image(), "digit": datasets.ClassLabel(names=NAMES)})
    rows = {"image": [{"bytes": png(i), "path": None} for i in digits.images], "digit": [int(t) for t in digits.target]}
    whole = datasets.Dataset.from_dict(rows, features=features)
    first = whole.train_test_split(test_size=300, seed=0)
    second = first["train"].train_test_split(test_size=200, seed=0)
    splits = {"train": second["train"], "validation": second["test"], "test": first["test"]}
    datasets.DatasetDict(splits).save_to_disk(folder / "digits")
    config = {
        "name": "hfdigits",
        "task": "image-classification",
        "output_dir": str(folder / "runs"),
        "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050", "options": {"image_size": 32}},
        "method": {"name": "freeze", "options": {"last_blocks": 1}},
        "data": {"source": "hf-datasets", "path": str(folder / "digits"), "label_column": "digit"},
        "train": {"epochs": 3, "batch_size": 64, "lr": 1e-2},
        "export": {"quantize": "none", "mobile": False, "latency_runs": 2},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    invoke(["run", str(folder / "config.yaml")])
    return folder, folder / "runs" / "hfdigits", digits, first["test"]


def test_the_run_trains_on_the_data_sets_own_splits_with_its_label_ids(digits_run):
    _, run, _, _ = digits_run
    assert json.loads((run / "labels.json").read_text()) == NAMES
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["sizes"] == {"train": 1297, "val": 200, "test": 300}
    assert report["metrics"]["onnx"]["accuracy"] > 0.5  # ten classes: chance is 0.1


def test_predict_names_the_data_sets_classes(digits_run, tmp_path):
    from PIL import Image

    _, run, _, test = digits_run
    files, truth = [], []
    for i in range(12):
        image = test.cast_column("image", datasets.Image(decode=False))[i]["image"]["bytes"]
        (tmp_path / f"{i}.png").write_bytes(image)
        files.append(str(tmp_path / f"{i}.png"))
        truth.append(NAMES[test[i]["digit"]])
        assert Image.open(files[-1]).size == (8, 8)
    rows = [json.loads(line) for line in invoke(["predict", str(run), *files]).output.splitlines()]
    assert all(r["label"] in NAMES for r in rows)
    assert sum(r["label"] == t for r, t in zip(rows, truth)) >= 6


@pytest.mark.slow
def test_the_html_report_renders_in_chromium_with_the_confusion_matrix(digits_run):
    from tests.report_page import check_report_page

    _, run, _, _ = digits_run
    report = json.loads((run / "report.json").read_text())
    assert report["pictures"] == {"confusion_matrix": "pictures/confusion_matrix.png"}
    dom = check_report_page(run, pictures=2)  # the training curve and the confusion matrix
    points = re.findall(r"<circle ", dom.split('id="tradeoff"')[1].split("</svg>")[0])
    assert len(points) == len(report["latency_ms"])  # one point per form with a latency and a metric
    for form in report["metrics"]:
        assert f"<td>{form}</td>" in dom


def test_the_export_card_says_what_each_file_is_and_how_to_run_it(digits_run):
    _, run, _, _ = digits_run
    report = json.loads((run / "report.json").read_text())
    card = (run / "export" / "README.md").read_text()
    files = card.split("## Files")[1]
    shipped = {p.relative_to(run / "export").as_posix() for p in (run / "export").rglob("*") if p.is_file()}
    listed = set(re.findall(r"^\| `([^`]+)` \|", files, flags=re.M))
    assert listed == {name for name in shipped if not name.startswith("web/")} | {"web/"}
    deployable = report["deployable"].rpartition("/")[2]
    (row,) = [line for line in files.splitlines() if line.startswith(f"| `{deployable}` |")]
    assert "**the one to deploy**" in row and f"python predict.py {deployable} INPUT" in row
    assert sum("the one to deploy" in line for line in files.splitlines()) == 1
