"""Faults around a run: a full disk while a checkpoint is written, two adapt
processes writing one run directory, a plugin whose hook raises."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from adapt import hookimpl
from adapt.cli import make_cli
from adapt.host import make_host
from adapt.rundir import hold_lock
from tests.conftest import TinyPlugin


def run_cli(*args: str, plugins=()):
    return CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin(), *plugins], autoload=False)), list(args))


def write_config(tmp_path: Path, tiny_config: dict, **train) -> Path:
    tiny_config["output_dir"] = str(tmp_path / "runs")
    tiny_config["train"].update(train)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    """The third checkpoint write meets ENOSPC: the run stops with one message, the
    second checkpoint is still complete and loadable, and no temporary file is left."""
    import adapt.rundir

    path = write_config(tmp_path, tiny_config, epochs=1, batch_size=64, checkpoint_every=3)
    calls = {"checkpoints": 0}
    real_fsync = os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if Path(f"/proc/self/fd/{fd}").exists() else ""
        if "last.pt" in name:
            calls["checkpoints"] += 1
            if calls["checkpoints"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(adapt.rundir.os, "fsync", fsync)
    result = run_cli("run", str(path))
    assert result.exit_code == 2, result.output
    assert "no space left on the device; the previous version is intact" in result.output
    assert "Traceback" not in result.output
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["state"]["step"] == 6  # the second checkpoint, complete
    assert not [p for p in checkpoint.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_second_process_writing_the_same_run_directory_is_refused(tmp_path, tiny_config):
    path = write_config(tmp_path, tiny_config)
    run = tmp_path / "runs" / "tiny"
    with hold_lock(run):  # another adapt process is writing this run (flock: per open file, so this process counts too)
        for args in (["run", str(path)], ["run", str(path), "--overwrite"]):
            result = run_cli(*args)
            assert result.exit_code == 2, result.output
            assert "is being written by another adapt process" in result.output and f"pid {os.getpid()}" in result.output
        assert [p.name for p in run.iterdir()] == [".adapt.lock"]  # --overwrite deleted nothing
    assert run_cli("run", str(path)).exit_code == 0  # once released, the run goes ahead


class Raising:
    @hookimpl
    def adapt_register_methods(self, register):
        raise RuntimeError("boom in the plugin")


def test_a_plugin_whose_hook_raises_is_named(tmp_path, tiny_config):
    result = run_cli("run", str(write_config(tmp_path, tiny_config)), plugins=[Raising()])
    assert result.exit_code == 2, result.output
    assert "boom in the plugin" in result.output and "Raising" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "/abs"])
def test_run_names_cannot_leave_the_output_directory(tmp_path, tiny_config, name):
    tiny_config["name"] = name
    result = run_cli("run", str(write_config(tmp_path, tiny_config)))
    assert result.exit_code == 2 and "name" in result.output
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]


def test_a_folder_is_swapped_in_whole(tmp_path):
    """merged/ is written beside itself and swapped in once complete: a failure while
    writing leaves the previous folder as it was, and nothing temporary behind."""
    from adapt.rundir import atomic_folder

    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as partial:
            (partial / "model.safetensors").write_text("half")
            raise RuntimeError("killed while writing")
    assert (folder / "model.safetensors").read_text() == "old"
    with atomic_folder(folder) as partial:
        (partial / "model.safetensors").write_text("new")
    assert (folder / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


class SpyExporter:
    """The built-in ONNX exporter, noting what report.json on disk names while it writes."""

    name, suffix, options_schema = "spy", ".onnx", None
    seen: list = []

    def __init__(self) -> None:
        self.onnx = make_host(autoload=False).exporters.get("onnx")

    def export(self, model, inputs, io, path, options):
        from adapt.report import read_report

        run = path.parent.parent
        deployable = read_report(run).get("deployable")
        SpyExporter.seen.append((deployable, (run / deployable).read_bytes() if deployable else None, path.parent.name))
        return self.onnx.export(model, inputs, io, path, None)

    def load(self, path, threads=None):
        return self.onnx.load(path, threads)


class SpyPlugin:
    @hookimpl
    def adapt_register_exporters(self, register):
        register(SpyExporter())


def test_while_exporting_the_previous_export_stays_usable(tmp_path, tiny_config):
    """`adapt export` writes the new export beside export/ and swaps it in at the end:
    while it works, report.json still names the previous files and they are intact,
    so a run killed meanwhile leaves a usable export; afterwards no stale form is named."""
    tiny_config["export"] = {"formats": ["spy"], "mobile": False, "quantize": "none", "latency_runs": 2}
    assert run_cli("run", str(write_config(tmp_path, tiny_config)), plugins=[SpyPlugin()]).exit_code == 0
    run = tmp_path / "runs" / "tiny"
    assert json.loads((run / "report.json").read_text())["deployable"] == "export/model.onnx"
    report = json.loads((run / "report.json").read_text())
    report["metrics"]["onnx_int8"] = report["latency_ms"]["onnx_int8"] = {"accuracy": 0.5}  # a form an earlier export made
    (run / "report.json").write_text(json.dumps(report))
    old = (run / "export" / "model.onnx").read_bytes()
    SpyExporter.seen.clear()
    result = run_cli("export", str(run), plugins=[SpyPlugin()])
    assert result.exit_code == 0, result.output
    [(named, content, folder)] = SpyExporter.seen
    assert named == "export/model.onnx" and content == old  # the previous export, named and whole
    assert folder != "export" and folder.startswith(".export.")  # the new one is written beside it
    report = json.loads((run / "report.json").read_text())
    assert report["deployable"] == "export/model.onnx"
    assert "onnx_int8" not in report["metrics"] and "onnx_int8" not in report["latency_ms"]  # no stale figures
    assert {"adapted", "merged", "spy"} <= set(report["metrics"])
