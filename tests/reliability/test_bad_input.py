"""The bad-input rows of docs/reliability.md, each through `adapt run` as a user meets
it: exit code 2, one message naming the problem with a hint, no traceback, and
nothing of the user's earlier work lost. Input adapt can partly use (a corrupt
image, a text file in another encoding) is skipped, counted and reported instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from adapt.cli import make_cli
from adapt.host import make_host
from tests.conftest import TinyPlugin
from tests.tiny import bert_checkpoint


def run_cli(*args: str):
    return CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin()], autoload=False)), list(args))


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert")


def text_config(tmp: Path, bert: Path) -> dict:
    rows = "text,label\n" + "".join(f"{'the team won' if i % 2 else 'shares fell'} {i},{'sport' if i % 2 else 'money'}\n" for i in range(40))
    (tmp / "data.csv").write_text(rows)
    return {"name": "r", "output_dir": str(tmp / "runs"), "task": "text-classification", "backbone": {"name": "bert", "checkpoint": str(bert)}, "method": {"name": "lora"}, "data": {"source": "csv", "path": str(tmp / "data.csv")}, "train": {"epochs": 1, "batch_size": 8}, "export": {"formats": []}}


def image_config(tmp: Path) -> dict:
    for label in ("dark", "light"):
        folder = tmp / "images" / label
        folder.mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8), 40 if label == "dark" else 220, np.uint8) + i).save(folder / f"{i}.png")
    return {"name": "r", "output_dir": str(tmp / "runs"), "task": "image-classification", "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050", "options": {"image_size": 32}}, "method": {"name": "freeze"}, "data": {"source": "image-folder", "path": str(tmp / "images")}, "train": {"epochs": 1, "batch_size": 8}, "export": {"formats": []}}


def unknown_key(c: dict, tmp: Path) -> None:
    c["train"]["epoch"] = 2


def wrong_type(c: dict, tmp: Path) -> None:
    c["train"]["epochs"] = "three"


def unknown_plugin(c: dict, tmp: Path) -> None:
    c["backbone"]["name"] = "bret"


def unsupported_task(c: dict, tmp: Path) -> None:
    c["task"] = "image-classification"


def lora_targets_nothing(c: dict, tmp: Path) -> None:
    c["method"]["options"] = {"targets": ["no_such_layer"]}


def empty_data(c: dict, tmp: Path) -> None:
    (tmp / "data.csv").write_text("")


def missing_label_column(c: dict, tmp: Path) -> None:
    (tmp / "data.csv").write_text("text,category\nhello,a\n")


def unseen_test_label(c: dict, tmp: Path) -> None:
    folder = tmp / "splits"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "the team won,sport\nshares fell,money\n" * 8)
    (folder / "test.csv").write_text("text,label\nparis,travel\n")
    c["data"]["path"] = str(folder)


def truncated_safetensors(c: dict, tmp: Path) -> None:
    weights = Path(c["backbone"]["checkpoint"]) / "model.safetensors"
    broken = tmp / "broken"
    broken.mkdir()
    for item in Path(c["backbone"]["checkpoint"]).iterdir():
        (broken / item.name).write_bytes(item.read_bytes()[: len(item.read_bytes()) // 2] if item == weights else item.read_bytes())
    c["backbone"]["checkpoint"] = str(broken)


def truncated_pth(c: dict, tmp: Path) -> None:
    import torch

    path = tmp / "weights.pth"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:60])
    c.update(task="image-classification", backbone={"name": "mobilenet", "arch": "mobilenetv3_small_050", "checkpoint": str(path)}, data={"source": "digits"})


def checkpoint_of_another_family(c: dict, tmp: Path) -> None:
    c["backbone"] = {"name": "roberta", "checkpoint": c["backbone"]["checkpoint"]}


def run_name_escaping_output_dir(c: dict, tmp: Path) -> None:
    c["name"] = "../outside"


def package_path_escaping_its_package(c: dict, tmp: Path) -> None:
    c["backbone"]["checkpoint"] = "pkg:adapt/../../etc"


#: (row id, change to a working text config, what the message must say)
ERRORS: list[tuple[str, Callable[[dict, Path], None], str]] = [
    ("unknown key", unknown_key, "unknown key `train.epoch`"),
    ("wrong type", wrong_type, "train.epochs"),
    ("unknown plugin", unknown_plugin, "bert"),
    ("task the backbone does not support", unsupported_task, "image-classification"),
    ("LoRA targets matching nothing", lora_targets_nothing, "matches no"),
    ("empty data file", empty_data, "is empty"),
    ("missing label column", missing_label_column, "label"),
    ("a test label not seen in training", unseen_test_label, "travel"),
    ("truncated safetensors file", truncated_safetensors, "cannot load checkpoint"),
    ("truncated .pth file", truncated_pth, "cannot read checkpoint"),
    ("checkpoint of another backbone", checkpoint_of_another_family, "holds a 'bert' model"),
    ("run name escaping the output directory", run_name_escaping_output_dir, "name"),
    ("pkg: path escaping its package", package_path_escaping_its_package, "pkg:"),
]


@pytest.mark.parametrize("row, change, expected", ERRORS, ids=[r[0] for r in ERRORS])
def test_bad_input_is_one_clear_message(tmp_path, bert, row, change, expected):
    config = text_config(tmp_path, bert)
    change(config, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("run", str(path))
    assert result.exit_code == 2, (row, result.output)
    assert expected in result.output, (row, result.output)
    assert "hint:" in result.output or "did you mean" in result.output or "available" in result.output, (row, result.output)
    assert "Traceback" not in result.output
    assert not (tmp_path / "outside").exists()


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("task: text-classification\nbackbone: {name: bert\n")
    result = run_cli("run", str(path))
    assert result.exit_code == 2 and "not valid YAML at line" in result.output and "Traceback" not in result.output


def test_existing_run_is_refused_and_kept(tmp_path, bert):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(text_config(tmp_path, bert)))
    assert run_cli("run", str(path)).exit_code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "runs" / "r").rglob("*") if p.is_file()}
    result = run_cli("run", str(path))
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert before == {p: p.read_bytes() for p in (tmp_path / "runs" / "r").rglob("*") if p.is_file()}  # nothing touched


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    config = image_config(tmp_path)
    (tmp_path / "images" / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("run", str(path))
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable item" in result.output and "broken.png" in result.output
    report = json.loads((tmp_path / "runs" / "r" / "report.json").read_text())
    assert len(report["data"]["skipped"]) == 1


def test_text_in_another_encoding_is_skipped_and_counted(tmp_path, bert):
    for label in ("sport", "money"):
        folder = tmp_path / "texts" / label
        folder.mkdir(parents=True)
        for i in range(10):
            (folder / f"{i}.txt").write_text(f"{label} story number {i}")
    (tmp_path / "texts" / "sport" / "latin1.txt").write_bytes("caf\xe9 au lait, d\xe9j\xe0 vu".encode("latin-1"))
    config = text_config(tmp_path, bert)
    config["data"] = {"source": "text-folder", "path": str(tmp_path / "texts")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("run", str(path))
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable item" in result.output and "latin1.txt" in result.output
