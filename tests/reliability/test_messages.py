"""Messages that say what is actually wrong (docs/reliability.md, "Messages"): a
config in UTF-16, a key given twice, true where a number belongs, .inf, a YAML
alias bomb, one-class data, empty texts, a CSV cell past the csv module's limit,
a damaged report.json or labels.json, a checkpoint that carries pickled code."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.host import make_host
from tests.conftest import TinyPlugin, exported_tiny_run
from tests.tiny import bert_checkpoint

BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]) + "\n"


def run_cli(*args: str):
    return CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin()], autoload=False)), list(args))


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert")


def text_config(tmp: Path, bert: Path, rows: str | None = None) -> Path:
    rows = rows or "text,label\n" + "".join(f"{'the team won' if i % 2 else 'shares fell'} {i},{'sport' if i % 2 else 'money'}\n" for i in range(40))
    (tmp / "data.csv").write_text(rows)
    config = {"name": "r", "output_dir": str(tmp / "runs"), "task": "text-classification", "backbone": {"name": "bert", "checkpoint": str(bert)}, "method": {"name": "lora"}, "data": {"source": "csv", "path": str(tmp / "data.csv")}, "train": {"epochs": 1, "batch_size": 8}, "export": {"formats": []}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_message(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "hint:" in result.output, result.output
    for text in expected:
        assert text in result.output, (text, result.output)


CONFIGS = [
    ("utf-16 with a BOM", "task: x\n".encode("utf-16"), ["encoded as UTF-16", "must be UTF-8"]),
    ("latin-1", "task: caf\xe9\n".encode("latin-1"), ["is not UTF-8 text: byte 0xe9 at line 1"]),
    ("a key given twice", b"task: text-classification\ntrain:\n  epochs: 2\n  epochs: 3\n", ["key `epochs` is given twice, at line 3 and at line 4"]),
    ("epochs: true", b"task: t\nbackbone: {name: tiny-cnn}\ndata: {source: digits}\ntrain: {epochs: true}\n", ["`train.epochs` = True: a number is required, not true/false"]),
    ("lr: .inf", b"task: t\nbackbone: {name: tiny-cnn}\ndata: {source: digits}\ntrain: {lr: .inf}\n", ["`train.lr` = inf: input should be a finite number"]),
    ("lr: .nan", b"task: t\nbackbone: {name: tiny-cnn}\ndata: {source: digits}\ntrain: {lr: .nan}\n", ["`train.lr` = nan"]),
    ("mobile: 1", b"task: t\nbackbone: {name: tiny-cnn}\ndata: {source: digits}\nexport: {mobile: 1}\n", ["export.mobile"]),
    ("a billion laughs", BOMB.encode(), ["expands to more than 20,000 values"]),
    ("a self-referencing alias", b"task: &x [*x]\n", ["levels of nesting"]),
    ("nesting 10,000 deep", b"task: " + b"[" * 10000 + b"]" * 10000 + b"\n", ["nested too deeply"]),
]


@pytest.mark.parametrize("raw, expected", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_a_bad_config_file_is_one_message(tmp_path, raw, expected):
    path = tmp_path / "config.yaml"
    path.write_bytes(raw)
    start = time.perf_counter()
    result = run_cli("run", str(path))
    assert time.perf_counter() - start < 5  # a bomb is refused at once, not expanded (generous: 2 shared cores)
    one_message(result, *expected)
    assert not (tmp_path / "runs").exists()


def test_an_alias_bomb_in_a_set_override_is_refused_too(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("task: t\nbackbone: {name: tiny-cnn}\ndata: {source: digits}\n")
    one_message(run_cli("run", str(path), "--set", "train.fast=" + BOMB.replace("\n", ", ").join("{}")), "expands to more than")


def test_long_values_are_cut_in_messages(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"task": "t", "backbone": {"name": "tiny-cnn"}, "data": {"source": "digits"}, "train": {"device": "x" * 100_000}}))
    result = run_cli("run", str(path))
    one_message(result, "train.device")
    assert len(result.output) < 2000


def test_training_data_with_a_single_class_is_refused(tmp_path, bert):
    path = text_config(tmp_path, bert, "text,label\n" + "".join(f"story {i},sport\n" for i in range(30)))
    one_message(run_cli("run", str(path)), "holds only the label 'sport': task 'text-classification' needs at least 2")
    assert not (tmp_path / "runs").exists()


def test_rows_with_empty_text_are_skipped_and_counted(tmp_path, bert):
    rows = "text,label\n" + "".join(f"{'' if i % 10 == 0 else 'the team won'} {'' if i % 10 == 0 else i},{'sport' if i % 2 else 'money'}\n" for i in range(40))
    result = run_cli("run", str(text_config(tmp_path, bert, rows)))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "r" / "report.json").read_text())
    assert len(report["data"]["skipped"]) == 4 and "line 2: the 'text' column is empty" in report["data"]["skipped"][0]
    assert sum(report["data"]["sizes"].values()) == 36


def test_a_csv_cell_longer_than_the_csv_module_limit_is_read(tmp_path, bert):
    """Read, and cut to what the model has positions for: the tiny BERT has 64, fewer
    than the default max_length of 128, so an uncut text would crash it."""
    import csv

    long_text = "the team won " * (csv.field_size_limit() // 10)
    rows = "text,label\n" + f'"{long_text}",sport\n' + "".join(f"{'the team won' if i % 2 else 'shares fell'} {i},{'sport' if i % 2 else 'money'}\n" for i in range(40))
    result = run_cli("run", str(text_config(tmp_path, bert, rows)))
    assert result.exit_code == 0, result.output
    assert csv.field_size_limit() == 131072  # the process-wide limit is given back


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return exported_tiny_run(tmp_path_factory.mktemp("finished"))


@pytest.mark.parametrize("content", [b"{ not json", b"[1, 2]", b""], ids=["not JSON", "not an object", "empty"])
def test_a_damaged_report_is_named(finished, tmp_path, content):
    run = tmp_path / "run"
    os.system(f"cp -r {finished} {run}")
    (run / "report.json").write_bytes(content)
    for args in (["bench", str(run)], ["predict", str(run), "--onnx", "x.png"]):
        one_message(run_cli(*args), f"{run / 'report.json'} is damaged")
    result = run_cli("export", str(run))  # the stage that writes the report anew mends it
    assert result.exit_code == 0, result.output
    assert json.loads((run / "report.json").read_text())["deployable"].startswith("export/model.")


def test_damaged_labels_are_named(finished, tmp_path):
    run = tmp_path / "run"
    os.system(f"cp -r {finished} {run}")
    (run / "labels.json").write_text('["0", "1"')
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    for args in (["predict", str(run), str(tmp_path / "x.png")], ["export", str(run)]):
        one_message(run_cli(*args), f"{run / 'labels.json'} is damaged")
    (run / "labels.json").write_text('["0", "1", "2"]')  # valid JSON, but not the labels the adapter was trained on
    one_message(run_cli("predict", str(run), str(tmp_path / "x.png")), "labels.json names 3 labels, but the run was trained on 10")


class Payload:
    """What a malicious checkpoint carries: an object whose unpickling runs code."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_with_pickled_code_is_refused_without_pytorchs_advice(tmp_path, bert):
    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1), "extra": Payload()}, weights)
    config = yaml.safe_load(text_config(tmp_path, bert).read_text())
    config.update(task="image-classification", backbone={"name": "mobilenet", "arch": "mobilenetv3_small_050", "checkpoint": str(weights)}, data={"source": "digits"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("run", str(tmp_path / "config.yaml"))
    one_message(result, "contains pickled Python code (posix.system", "is refused")
    assert "weights_only=False" not in result.output and "pwned" not in result.output


def test_a_training_checkpoint_with_pickled_code_is_refused(tmp_path):
    from adapt.checkpoint import load_checkpoint
    from adapt.errors import CheckpointError

    path = tmp_path / "last.pt"
    torch.save({"state": Payload()}, path)
    with pytest.raises(CheckpointError, match="contains pickled Python code") as caught:
        load_checkpoint(path)
    assert "weights_only=False" not in str(caught.value)


def test_an_export_without_preprocessing_says_so(finished):
    """The tiny test backbone has no save_preprocessing: the export cannot ship predict.py, and the report says why."""
    from adapt.report_schema import Report

    report = json.loads((finished / "report.json").read_text())
    Report.model_validate(report)
    assert any("has no save_preprocessing" in note for note in report["export_notes"])
    assert not (finished / "export" / "predict.py").exists()
    assert "- export: backbone 'tiny-cnn' has no save_preprocessing" in (finished / "report.md").read_text()


@pytest.mark.parametrize(
    "task, head, expected",
    [
        ("image-embedding", {"loss": "triplet"}, "head.loss"),
        ("image-embedding", {"dim": 0}, "head.dim"),
        ("text-embedding", {"temperature": 0}, "head.temperature"),
        ("image-classification", {"dim": 64}, "`head`: task 'image-classification' takes no options"),
    ],
)
def test_a_bad_head_is_one_message_naming_the_key(tmp_path, task, head, expected):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"task": task, "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050"}, "data": {"source": "digits"}, "head": head, "output_dir": str(tmp_path / "runs")}))
    one_message(run_cli("run", str(path)), expected)
    assert not (tmp_path / "runs").exists()
