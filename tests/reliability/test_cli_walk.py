"""Every command of the CLI, walked with bad inputs: each ends with exit code 2 and
one message, never a Python traceback, and changes nothing it was not asked to."""

from __future__ import annotations

import shutil
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


def run_cli(*args: str):
    return CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin()], autoload=False)), list(args))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A finished image run with an ONNX export, preprocess.json and predict.py."""
    tmp = tmp_path_factory.mktemp("walk")
    for label, shade in (("dark", 40), ("light", 220)):
        (tmp / "images" / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((16, 16, 3), shade + i, np.uint8)).save(tmp / "images" / label / f"{i}.png")
    config = {"name": "r", "output_dir": str(tmp / "runs"), "task": "image-classification", "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050", "options": {"image_size": 32}}, "method": {"name": "freeze"}, "data": {"source": "image-folder", "path": str(tmp / "images")}, "train": {"epochs": 1, "batch_size": 8}, "export": {"formats": ["onnx"], "quantize": "none", "mobile": False, "latency_runs": 2}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("run", str(tmp / "config.yaml"))
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "r"


def copy_run(exported: Path, tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(exported, run)
    return run


def where(run: Path, name: str) -> Path:
    """``name`` in the run; DEPLOYABLE is the file the report recommends."""
    import json

    return run / json.loads((run / "report.json").read_text())["deployable"] if name == "DEPLOYABLE" else run / name


def corrupt(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda run: where(run, name).write_bytes(content)


def truncate(name: str) -> Callable[[Path], None]:
    return lambda run: where(run, name).write_bytes(where(run, name).read_bytes()[:200])


def remove(name: str) -> Callable[[Path], None]:
    return lambda run: shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()


#: (what, how the run directory is damaged, the commands to try on it)
DAMAGES = [
    ("config.yaml that is not YAML", corrupt("config.yaml", b"task: [unclosed\n"), ["train", "eval", "merge", "export", "predict"]),
    ("config.yaml in UTF-16", corrupt("config.yaml", "task: x\n".encode("utf-16")), ["train", "eval", "merge", "export", "predict"]),
    ("config.yaml missing", remove("config.yaml"), ["eval", "predict"]),
    ("marker missing", remove(".adapt-run.json"), ["train", "merge", "export"]),
    ("labels.json damaged", corrupt("labels.json", b"{"), ["eval", "merge", "export", "predict"]),
    ("report.json damaged", corrupt("report.json", b"\x00\x01"), ["bench", "predict --onnx"]),
    ("adapter missing", remove("adapter"), ["eval", "merge", "export", "predict"]),
    ("adapter weights truncated", truncate("adapter/adapter_model.safetensors"), ["eval", "merge", "export", "predict"]),
    ("the deployable file truncated", truncate("DEPLOYABLE"), ["predict --onnx"]),
    ("the deployable file empty", corrupt("DEPLOYABLE", b""), ["predict --onnx"]),
    ("the deployable file is not ONNX", corrupt("DEPLOYABLE", b"PK\x03\x04 a zip file, not a model"), ["predict --onnx"]),
    ("preprocess.json missing keys", corrupt("export/preprocess.json", b'{"kind": "image", "labels": ["a", "b"]}'), ["predict --onnx"]),
    ("preprocess.json not JSON", corrupt("export/preprocess.json", b"nope"), ["predict --onnx"]),
    ("preprocess.json missing", remove("export/preprocess.json"), ["predict --onnx"]),
]


def command_line(command: str, run: Path, image: Path) -> list[str]:
    if command == "predict":
        return ["predict", str(run), str(image)]
    if command == "predict --onnx":
        return ["predict", str(run), "--onnx", str(image)]
    return [command, str(run)]


@pytest.mark.parametrize("damage, commands", [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_every_command_on_a_damaged_run_is_one_message(exported, tmp_path, damage, commands):
    run = copy_run(exported, tmp_path)
    damage(run)
    image = next((exported.parent.parent / "images" / "dark").iterdir())
    for command in commands:
        result = run_cli(*command_line(command, run, image))
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output and result.output.startswith("error: "), (command, result.output)


BAD_INPUTS = [
    ("a text file as the image", lambda tmp: tmp.joinpath("notes.txt").write_text("hello") and tmp / "notes.txt"),
    ("a truncated PNG", lambda tmp: tmp.joinpath("half.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00") and tmp / "half.png"),
    ("a missing image", lambda tmp: tmp / "missing.png"),
]


@pytest.mark.parametrize("make_input", [b[1] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("onnx", [False, True], ids=["pytorch", "onnx"])
def test_predict_with_an_input_that_is_not_an_image_is_one_message(exported, tmp_path, make_input, onnx):
    result = run_cli("predict", str(exported), *(["--onnx"] if onnx else []), str(make_input(tmp_path)))
    assert result.exit_code == 2 and "Traceback" not in result.output and result.output.startswith("error: "), result.output


def test_the_standalone_predictor_answers_bad_input_with_one_line(exported, tmp_path):
    import subprocess
    import sys

    (tmp_path / "notes.txt").write_text("hello")
    done = subprocess.run([sys.executable, str(exported / "export" / "predict.py"), str(exported / "export" / "model.onnx"), str(tmp_path / "notes.txt")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr


def test_folders_that_are_not_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    for command in ("train", "eval", "merge", "export", "bench", "predict"):
        for target in ("empty", "a-file", "missing"):
            args = [command, str(tmp_path / target)] + (["some input"] if command == "predict" else [])
            result = run_cli(*args)
            assert result.exit_code == 2 and "Traceback" not in result.output, (command, target, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty"] and not list((tmp_path / "empty").iterdir())


def test_config_arguments_that_are_not_configs(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    for target in ("folder", "binary.yaml", "list.yaml", "missing.yaml"):
        for extra in ([], ["--dry-run"], ["--set", "nokey"], ["--overwrite", "--resume"]):
            result = run_cli("run", str(tmp_path / target), *extra)
            assert result.exit_code == 2 and "Traceback" not in result.output, (target, extra, result.output)
    result = run_cli("init", str(tmp_path / "folder"))
    assert result.exit_code == 2 and "Traceback" not in result.output
