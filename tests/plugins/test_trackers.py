"""train.report_to: a real run's figures read back with each tracker's own reader (TensorBoard's
EventAccumulator, an MLflow client on a local file store)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cli.test_bundle_e2e import invoke


def write_config(folder, name, train, export):
    """A MobileNetV3 linear probe on digits (32 px, quick) with these train and export settings."""
    config = {
        "name": name,
        "task": "image-classification",
        "output_dir": str(folder / "runs"),
        "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050", "options": {"image_size": 32}},
        "method": {"name": "freeze", "options": {"last_blocks": 1}},
        "data": {"source": "digits"},
        "train": train,
        "export": export,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracked")
    mlruns = folder / "mlruns"
    train = {"epochs": 2, "batch_size": 64, "lr": 1e-2, "report_to": ["tensorboard", "mlflow"]}
    write_config(folder, "tracked", train, {"quantize": "none", "mobile": False, "latency_runs": 2})
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", mlruns.as_uri())
    patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's local folder store, as a user opts in
    try:
        invoke(["run", str(folder / "config.yaml")])
    finally:
        patch.undo()
    return folder / "runs" / "tracked", mlruns


def test_tensorboard_event_files_hold_every_epoch_and_the_final_figures(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tracked_run
    report = json.loads((run / "report.json").read_text())
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    accuracy = (
        [e.value for e in events.Scalars("val/val_accuracy")]
        if "val/val_accuracy" in tags
        else [e.value for e in events.Scalars("val/accuracy")]
    )
    assert len(accuracy) == 2
    assert events.Scalars("test/onnx/accuracy")[0].value == pytest.approx(report["metrics"]["onnx"]["accuracy"])
    assert events.Scalars("latency_ms/onnx")[0].value == pytest.approx(report["latency_ms"]["onnx"]["median"])
    assert events.Scalars("bytes/onnx")[0].value == report["form_bytes"]["onnx"]


def test_mlflow_holds_the_config_the_metrics_and_the_artifacts(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    run, mlruns = tracked_run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    report = json.loads((run / "report.json").read_text())
    client = MlflowClient(tracking_uri=mlruns.as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("adapt").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "tracked"
    assert found.data.params["train.epochs"] == "2" and found.data.params["backbone.arch"] == "mobilenetv3_small_050"
    assert found.data.metrics["test_onnx_accuracy"] == pytest.approx(report["metrics"]["onnx"]["accuracy"])
    history = client.get_metric_history(
        found.info.run_id, next(k for k in found.data.metrics if k.startswith("val_") and k.endswith("accuracy"))
    )
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"report.json", "report.md", "report.html", report["deployable"].rpartition("/")[2]} <= artifacts


def test_a_tracker_that_cannot_start_is_one_warning(tmp_path, monkeypatch):
    """MLflow 3 refuses a local folder store unless asked: the run goes on, and says why."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    write_config(tmp_path, "refused", {"epochs": 1, "batch_size": 64, "report_to": ["mlflow"]}, {"formats": []})
    invoke(["run", str(tmp_path / "config.yaml")])
    warnings = json.loads((tmp_path / "runs" / "refused" / "report.json").read_text())["plugin_warnings"]
    assert any("MLflow cannot log this run" in w and "MLFLOW_ALLOW_FILE_STORE=true" in w for w in warnings)
