"""Lifecycle hooks a tracker can trust: `adapt_artifact_exported` fires once for every file
a run writes for deployment, an observer that raises is a warning (the run goes on, the
report lists it; ADAPT_STRICT_HOOKS=1 makes it fatal), and `adapt plugins` lists a
plugin that only observes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from adapt import hookimpl
from adapt.cli import make_cli
from adapt.host import make_host
from adapt.report_schema import Report
from tests.conftest import TinyPlugin


class Tracker:
    """A lifecycle-only plugin, as a TensorBoard or MLflow tracker would be."""

    def __init__(self) -> None:
        self.artifacts: list[tuple[Path, str]] = []
        self.epochs: list[int] = []

    @hookimpl
    def adapt_artifact_exported(self, run_dir, path, kind):
        assert Path(path).is_file(), f"{path} is not a file"
        self.artifacts.append((Path(path), kind))

    @hookimpl
    def adapt_epoch_ended(self, run_dir, epoch, metrics):
        self.epochs.append(epoch)


class Broken:
    @hookimpl
    def adapt_epoch_ended(self, run_dir, epoch, metrics):
        raise RuntimeError("the tracking server is down")


def run(tmp_path: Path, *plugins: object) -> tuple[object, Path]:
    config = {"name": "t", "output_dir": str(tmp_path / "runs"), "task": "image-classification", "backbone": {"name": "tiny-cnn"}, "data": {"source": "digits"},
              "train": {"epochs": 2, "batch_size": 64}, "export": {"quantize": "int8", "mobile": True, "latency_runs": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin(), *plugins], autoload=False)), ["run", str(tmp_path / "c.yaml")])
    return result, tmp_path / "runs" / "t"


def test_every_deployment_file_is_reported_once_with_its_kind(tmp_path):
    tracker = Tracker()
    result, run_dir = run(tmp_path, tracker)
    assert result.exit_code == 0, result.output
    written = sorted(p for folder in ("adapter", "export") for p in (run_dir / folder).rglob("*") if p.is_file())
    reported = sorted(path for path, _ in tracker.artifacts)
    assert reported == written and len(reported) == len(set(reported)), (reported, written)
    kinds = {path.relative_to(run_dir).as_posix(): kind for path, kind in tracker.artifacts}
    report = json.loads((run_dir / "report.json").read_text())
    for form, relative in report["forms"].items():
        assert kinds[relative] == "onnx", (form, relative)
    assert kinds["export/model.int8.onnx"] == "onnx" and kinds["export/mobile/model.ort"] == "onnx"
    assert kinds["export/mobile/model.required_operators.config"] == "mobile-config" and kinds["export/README.md"] == "card"
    assert {kinds[k] for k in kinds if k.startswith("adapter/")} == {"adapter"} and tracker.epochs == [1, 2]


def test_an_observer_that_raises_is_a_warning_and_the_run_goes_on(tmp_path):
    tracker = Tracker()
    result, run_dir = run(tmp_path, Broken(), tracker)
    assert result.exit_code == 0, result.output
    assert "warning: plugin 'Broken' raised in adapt_epoch_ended: RuntimeError: the tracking server is down; the run goes on (ADAPT_STRICT_HOOKS=1 makes this fatal)" in result.output
    assert tracker.epochs == [1, 2]  # the other observer still saw every epoch
    report = json.loads((run_dir / "report.json").read_text())
    Report.model_validate(report)
    assert len(report["plugin_warnings"]) == 2 and "the tracking server is down" in report["plugin_warnings"][0]
    assert report["metrics"]["onnx"]


def test_strict_hooks_make_an_observers_exception_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_STRICT_HOOKS", "1")
    result, _ = run(tmp_path, Broken())
    assert result.exit_code == 2 and "plugin 'Broken' raised in adapt_epoch_ended" in result.output, result.output


def test_adapt_plugins_lists_a_plugin_that_only_observes():
    result = CliRunner().invoke(make_cli(lambda: make_host([Tracker()], autoload=False)), ["plugins"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "Tracker" in line)
    assert "adapt_artifact_exported, adapt_epoch_ended" in row and "hooks" in row
