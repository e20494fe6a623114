"""A write the disk refuses, at each place adapt writes (the lock file, merged/,
export/, the report): one message, exit code 2, and nothing written earlier lost.

The refusal is real, from the operating system: RLIMIT_FSIZE makes every write
past the limit fail with EFBIG in whatever library does it (Python, safetensors'
Rust, ONNX's C++), the way a full disk fails it with ENOSPC. The limit is set only
while the stage under test writes. ENOSPC itself is injected where Python writes
(test_faults.py) and in the message test below."""

from __future__ import annotations

import contextlib
import errno
import resource
import shutil
import signal
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from click.testing import CliRunner

from adapt.cli import disk_full, make_cli
from adapt.host import make_host
from tests.conftest import TinyPlugin, exported_tiny_run
from tests.tiny import bert_checkpoint


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Every write that would make a file larger than ``limit`` bytes fails (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def limited(function, limit: int = 0):
    def call(*args, **kwargs):
        with file_size_limit(limit):
            return function(*args, **kwargs)

    return call


def run_cli(*args: str):
    return CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin()], autoload=False)), list(args))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return exported_tiny_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def refused(result) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output and "hint: free disk space" in result.output, result.output


def test_the_lock_file(run, monkeypatch):
    import adapt.rundir

    (run / ".adapt.lock").unlink()
    before = snapshot(run)
    monkeypatch.setattr(adapt.rundir, "_open_lock", _limit_after(adapt.rundir._open_lock))
    with file_size_limit(resource.getrlimit(resource.RLIMIT_FSIZE)[0]):  # puts the limit back afterwards
        result = run_cli("export", str(run))
    refused(result)
    assert ".adapt.lock" in result.output
    assert {k: v for k, v in snapshot(run).items() if k != ".adapt.lock"} == before


def _limit_after(open_lock):
    """Open the lock file as usual, then refuse writes: the pid written into it fails."""
    def call(path):
        handle = open_lock(path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return handle

    return call


def test_merged_folder(run, monkeypatch):
    import adapt.pipeline

    before = snapshot(run / "merged")
    monkeypatch.setattr(adapt.pipeline, "save_merged", limited(adapt.pipeline.save_merged))
    refused(run_cli("merge", str(run)))
    assert snapshot(run / "merged") == before
    assert not [p for p in run.iterdir() if p.name.startswith(".merged.")]


def test_merged_transformers_folder_written_by_safetensors(tmp_path, monkeypatch):
    """save_pretrained writes through safetensors' Rust code: its refusal arrives as text."""
    import adapt.pipeline

    rows = "text,label\n" + "".join(f"{'the team won' if i % 2 else 'shares fell'} {i},{'sport' if i % 2 else 'money'}\n" for i in range(30))
    (tmp_path / "data.csv").write_text(rows)
    config = {"name": "r", "output_dir": str(tmp_path / "runs"), "task": "text-classification", "backbone": {"name": "bert", "checkpoint": str(bert_checkpoint(tmp_path / "bert"))}, "method": {"name": "lora"}, "data": {"source": "csv", "path": str(tmp_path / "data.csv")}, "train": {"epochs": 1, "batch_size": 8}, "export": {"formats": []}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert run_cli("run", str(tmp_path / "config.yaml")).exit_code == 0
    run = tmp_path / "runs" / "r"
    before = snapshot(run / "merged")
    monkeypatch.setattr(adapt.pipeline, "save_merged", limited(adapt.pipeline.save_merged, 4096))
    refused(run_cli("merge", str(run)))
    assert snapshot(run / "merged") == before


def test_export_folder(run, monkeypatch):
    from adapt.exporters.onnx_exporter import OnnxExporter

    before, report = snapshot(run / "export"), (run / "report.json").read_bytes()
    monkeypatch.setattr(OnnxExporter, "export", limited(OnnxExporter.export))
    refused(run_cli("export", str(run)))
    assert snapshot(run / "export") == before
    assert not [p for p in run.iterdir() if p.name.startswith(".export.")]
    import json

    assert json.loads((run / "report.json").read_text())["deployable"] == json.loads(report)["deployable"]


def test_the_report(run, monkeypatch):
    import adapt.report

    before = snapshot(run)
    monkeypatch.setattr(adapt.report, "atomic_write_json", limited(adapt.report.atomic_write_json))
    result = run_cli("export", str(run))
    refused(result)
    assert "cannot write" in result.output and "report.json" in result.output and "the previous version is intact" in result.output
    after = snapshot(run)
    assert after["report.json"] == before["report.json"]
    assert {k: v for k, v in after.items() if k.startswith("export/")} == {k: v for k, v in before.items() if k.startswith("export/")}


def test_a_full_disk_anywhere_is_one_message():
    assert disk_full(RuntimeError("wrapper")) is None
    inner = OSError(errno.ENOSPC, "No space left on device", "/runs/r/export/model.onnx")
    try:
        try:
            raise inner
        except OSError as exc:
            raise RuntimeError("ONNX export failed") from exc
    except RuntimeError as outer:
        error = disk_full(outer)
    assert error is not None and error.message.startswith("no space left on the device while writing /runs/r/export/model.onnx")
    rust = disk_full(Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })"))
    assert rust is not None and rust.message.startswith("no space left on the device")
