"""Trust at the edges: a path named inside a data file or a run/export file stays inside its
folder; a stage command works on the run directory it is given, wherever it was moved, and
refuses a read-only one; a checkpoint never runs its own code unless the user opts in, and a
pickled weights file is refused. Every fixture is built here, small, on real files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from adapt.cli import make_cli
from adapt.errors import CheckpointError, DataError
from adapt.host import make_host
from adapt.interfaces import DataRequest
from adapt.plugins.detection.coco_source import CocoSource
from adapt.plugins.detection.yolo_source import YoloSource
from tests.conftest import TinyPlugin, exported_tiny_run
from tests.tiny import bert_checkpoint


def cli():
    return make_cli(lambda: make_host([TinyPlugin()], autoload=False))


def picture(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (90, 120, 30)).save(path)
    return path


def coco(folder: Path, images: list, annotations: list | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations or [], "categories": [{"id": 1, "name": "thing"}]}))
    return folder


def read_coco(folder: Path) -> tuple[list[dict], list[str]]:
    request = DataRequest("object-detection", folder)
    return CocoSource().read(request)["train"], request.skipped


# -- paths inside data files --------------------------------------------------------


@pytest.mark.parametrize("name", ["../../outside/secret.jpg", "ABSOLUTE"])
def test_a_coco_file_name_outside_the_images_folder_is_refused(tmp_path, name):
    secret = picture(tmp_path / "outside" / "secret.jpg")
    folder = tmp_path / "data" / "set"
    picture(folder / "images" / "a.jpg")
    name = str(secret) if name == "ABSOLUTE" else name
    coco(folder, [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 32}, {"id": 2, "file_name": name, "width": 32, "height": 32}])
    with pytest.raises(DataError, match=r"annotations.json: images\[1\].file_name is .*not a relative path inside"):
        read_coco(folder)


def test_coco_entries_that_are_not_objects_or_have_unusable_ids_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "set"
    picture(folder / "images" / "a.jpg")
    examples, skipped = read_coco(coco(folder, [{"id": 1, "file_name": "a.jpg"}, "not an object", 7, {"id": [1, 2], "file_name": "a.jpg"}, {"id": {"x": 1}, "file_name": "a.jpg"}],
                                       [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}, {"id": 2, "image_id": [1], "category_id": 1, "bbox": [2, 2, 5, 5]}, "no"]))
    assert len(examples) == 1 and examples[0]["boxes"] == [[2.0, 2.0, 12.0, 12.0]]
    assert sum("not an object with a number or string id" in s for s in skipped) == 4, skipped


def test_two_coco_images_with_one_id_are_an_error_naming_both(tmp_path):
    folder = tmp_path / "set"
    picture(folder / "images" / "a.jpg")
    picture(folder / "images" / "b.jpg")
    with pytest.raises(DataError, match=r"images\[0\] and images\[1\] have the same id 5"):
        read_coco(coco(folder, [{"id": 5, "file_name": "a.jpg"}, {"id": 5, "file_name": "b.jpg"}]))


def test_deeply_nested_coco_json_is_one_message(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "annotations.json").write_text('{"images": ' + "[" * 100000 + "]" * 100000 + ', "annotations": [], "categories": []}')
    with pytest.raises(DataError, match="nested too deeply"):
        read_coco(folder)


def test_a_png_whose_pixel_data_is_short_is_skipped_as_corrupt(tmp_path):
    folder = tmp_path / "set"
    picture(folder / "images" / "a.png", 64)
    whole = picture(folder / "images" / "b.png", 64)
    Image.effect_noise((64, 64), 80).convert("RGB").save(whole)  # noise: the pixel data is most of the file
    whole.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # the header intact, half the pixels gone
    examples, skipped = read_coco(coco(folder, [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]))
    assert [e["image"].name for e in examples] == ["a.png"]
    assert len(skipped) == 1 and "b.png" in skipped[0] and "unreadable image" in skipped[0]


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("names.txt", "caf\xe9\nthe\n".encode("latin-1"), "is not UTF-8 text"),
        ("data.yaml", b"names: 5\n", r"`names` is a int \(5\)"),
        ("data.yaml", b"- a\n- b\n", "is a YAML list, not a mapping"),
        ("data.yaml", b"names: {0: a, '1': b, x: c}\n", "names has a key that is not a class index"),
        ("data.yaml", b"names: {0: a, 2: b}\n", r"names' indices are \[0, 2\]"),
        ("data.yaml", b"names: [a, b\n  c: :\n", "is not YAML"),
    ],
    ids=["latin-1 names", "names: 5", "a list", "keys not indices", "a gap", "not YAML"],
)
def test_a_bad_yolo_names_file_is_one_message(tmp_path, file, content, message):
    picture(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / file).write_bytes(content)
    with pytest.raises(DataError, match=message):
        YoloSource().read(DataRequest("object-detection", tmp_path))


def test_yolo_names_with_string_indices_are_read_in_order(tmp_path):
    picture(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "data.yaml").write_text("names: {'1': dog, '0': cat}\n")
    from adapt.plugins.detection.yolo_source import class_names

    assert class_names(tmp_path) == ["cat", "dog"]


# -- paths inside run and export files -------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return exported_tiny_run(tmp_path_factory.mktemp("trust"))


def copy_run(finished: Path, where: Path) -> Path:
    shutil.copytree(finished, where, symlinks=True)
    return where


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_deployable_outside_the_run_is_refused_by_predict_and_forms_outside_it_by_bench(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    outside = tmp_path / "elsewhere.onnx"
    shutil.copyfile(run / "export" / "model.onnx", outside)
    for value in ("../elsewhere.onnx", str(outside)):
        edit_json(run / "report.json", deployable=value)
        result = CliRunner().invoke(cli(), ["predict", str(run), "--onnx", str(run.parent / "any.png")])
        assert result.exit_code == 2 and "report.json: deployable is" in result.output and "not a relative path inside" in result.output, result.output
        assert "Traceback" not in result.output
    edit_json(run / "report.json", forms={"onnx": "../elsewhere.onnx"})
    result = CliRunner().invoke(cli(), ["bench", str(run), "--rounds", "1", "--runs", "1"])
    assert result.exit_code == 2 and "report.json: forms.onnx is '../elsewhere.onnx'" in result.output, result.output


@pytest.mark.parametrize("content", ["[]", '{"forms": [1, 2]}'], ids=["a list", "forms a list"])
def test_bench_on_a_damaged_report_is_one_message(finished, tmp_path, content):
    run = copy_run(finished, tmp_path / "run")
    (run / "report.json").write_text(content)
    result = CliRunner().invoke(cli(), ["bench", str(run), "--rounds", "1", "--runs", "1"])
    assert result.exit_code == 2 and "report.json" in result.output and "Traceback" not in result.output, result.output


def test_bench_and_predict_name_a_report_that_is_gone(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "report.json").unlink()
    for args in (["bench", str(run), "--rounds", "1", "--runs", "1"], ["predict", str(run), "--onnx", "x.png"]):
        result = CliRunner().invoke(cli(), args)
        assert result.exit_code == 2 and "has no report.json" in result.output, result.output


def text_export(tmp_path_factory) -> Path:
    """A finished text run's export folder (tiny BERT), for the tokenizer path of preprocess.json."""
    folder = tmp_path_factory.mktemp("text")
    bert = bert_checkpoint(folder / "bert")
    rows = "text,label\n" + "".join(f"{'the team won' if i % 2 else 'shares fell'} {i},{'sport' if i % 2 else 'money'}\n" for i in range(40))
    (folder / "data.csv").write_text(rows)
    config = {"name": "text", "output_dir": str(folder / "runs"), "task": "text-classification", "backbone": {"name": "bert", "checkpoint": str(bert), "options": {"max_length": 16}}, "method": {"name": "lora", "options": {"r": 2}},
              "data": {"source": "csv", "path": str(folder / "data.csv")}, "train": {"epochs": 1, "batch_size": 8}, "export": {"quantize": "none", "mobile": False, "latency_runs": 2}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli(), ["run", str(folder / "config.yaml")])
    assert result.exit_code == 0, result.output
    return folder / "runs" / "text"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    return text_export(tmp_path_factory)


def test_a_tokenizer_outside_the_export_folder_is_refused_by_adapt_and_by_predict_py(text_run, tmp_path):
    run = copy_run(text_run, tmp_path / "run")
    shutil.copyfile(run / "export" / "tokenizer.json", tmp_path / "other-tokenizer.json")
    edit_json(run / "export" / "preprocess.json", tokenizer="../../other-tokenizer.json")
    result = CliRunner().invoke(cli(), ["predict", str(run), "--onnx", "the team won"])
    assert result.exit_code == 2 and "preprocess.json: tokenizer is '../../other-tokenizer.json', which is not a file inside" in result.output, result.output
    standalone = subprocess.run([sys.executable, str(run / "export" / "predict.py"), str(run / "export" / "model.onnx"), "the team won"], capture_output=True, text=True, timeout=120)
    assert standalone.returncode != 0 and "not a file inside" in standalone.stderr and "Traceback" not in standalone.stderr, standalone.stderr


# -- stage commands work on the run directory they are given ---------------------------------


def test_adapt_train_on_a_moved_run_trains_that_run_and_nothing_elsewhere(finished, tmp_path, monkeypatch):
    original_report = (finished / "report.json").read_bytes()
    moved = copy_run(finished, tmp_path / "archive" / "tiny")
    saved = yaml.safe_load((moved / "config.yaml").read_text())
    saved["output_dir"] = str(tmp_path / "somewhere-else")  # an edited output_dir must not redirect the run either
    (moved / "config.yaml").write_text(yaml.safe_dump(saved))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli(), ["train", "archive/tiny"])
    assert result.exit_code == 0, result.output
    assert f"run directory: {Path('archive') / 'tiny'}" in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "somewhere-else").exists()
    assert (finished / "report.json").read_bytes() == original_report  # the run it was copied from is untouched
    assert json.loads((moved / "report.json").read_text())["metrics"]["merged"]


@pytest.mark.parametrize("command", ["train", "export", "merge"])
def test_a_read_only_run_is_refused_clearly_and_left_as_it_is(finished, tmp_path, monkeypatch, command):
    run = copy_run(finished, tmp_path / "run")
    before = sorted((p.relative_to(run).as_posix(), p.stat().st_mtime_ns) for p in run.rglob("*"))
    run.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.chdir(tmp_path)
    try:
        result = CliRunner().invoke(cli(), [command, str(run)])
    finally:
        run.chmod(stat.S_IRWXU)
    assert result.exit_code == 2 and "is read-only" in result.output and "chmod u+w" in result.output, result.output
    assert sorted((p.relative_to(run).as_posix(), p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    assert not (tmp_path / "runs").exists()


# -- checkpoints never run code ----------------------------------------------------------------

CUSTOM_CODE = '''
from pathlib import Path
from transformers import BertConfig, BertForSequenceClassification

Path(MARKER).write_text("the checkpoint's code ran")


class EvilConfig(BertConfig):
    model_type = "adapt-test-custom"


class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig
'''


def custom_code_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A checkpoint whose config.json maps the Auto classes to its own custom.py, which
    writes a marker file when it runs; the checkpoint and the marker's path."""
    bert = bert_checkpoint(folder)
    marker = folder.parent / "CODE-RAN"
    config = json.loads((bert / "config.json").read_text())
    config.update(model_type="adapt-test-custom", auto_map={"AutoConfig": "custom.EvilConfig", "AutoModelForSequenceClassification": "custom.EvilModel"})
    (bert / "config.json").write_text(json.dumps(config))
    (bert / "custom.py").write_text(f"MARKER = {str(marker)!r}\n" + CUSTOM_CODE)
    return bert, marker


def test_a_checkpoint_with_its_own_code_is_refused_even_when_y_reaches_standard_input(tmp_path):
    checkpoint, marker = custom_code_checkpoint(tmp_path / "custom")
    (tmp_path / "data.csv").write_text("text,label\n" + "".join(f"w{i},{'a' if i % 2 else 'b'}\n" for i in range(20)))
    config = {"name": "c", "output_dir": str(tmp_path / "runs"), "task": "text-classification", "backbone": {"name": "transformers", "checkpoint": str(checkpoint)}, "data": {"source": "csv", "path": str(tmp_path / "data.csv")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli(), ["run", str(tmp_path / "c.yaml")], input="y\ny\ny\n")
    assert result.exit_code == 2, result.output
    assert "needs the Python code it ships" in result.output and "backbone.options.trust_remote_code: true" in result.output
    assert "[y/N]" not in result.output and not marker.exists()


def test_the_opt_in_runs_the_code_and_names_its_files(tmp_path, capsys):
    from adapt.plugins.transformers.hf_text import TextOptions, TransformersTextBackbone

    checkpoint, marker = custom_code_checkpoint(tmp_path / "custom")
    built = TransformersTextBackbone().build("text-classification", 2, checkpoint=str(checkpoint), arch=None, options=TextOptions(trust_remote_code=True))
    assert type(built.model.model).__name__ == "EvilModel" and marker.exists()
    err = capsys.readouterr().err
    assert "trust_remote_code is on" in err and "custom.py" in err


def test_a_pickled_bin_checkpoint_is_refused_without_transformers_advice(tmp_path):
    from adapt.plugins.transformers.hf_text import TextOptions, TransformersTextBackbone

    bert = bert_checkpoint(tmp_path / "pickled")
    from safetensors.torch import load_file

    state = load_file(bert / "model.safetensors")
    (bert / "model.safetensors").unlink()
    torch.save({**state, "payload": os.system}, bert / "pytorch_model.bin")  # a function: unpickling it would import it
    backbone = TransformersTextBackbone()
    with pytest.raises(CheckpointError) as caught:
        backbone.build("text-classification", 2, checkpoint=str(bert), arch=None, options=TextOptions())
    assert "holds pickled Python objects, not only tensors, and is refused" in caught.value.message
    assert "weights_only" not in caught.value.message + (caught.value.hint or "")
