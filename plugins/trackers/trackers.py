"""``train.report_to: [tensorboard, mlflow]``: a run's figures in the trackers its users already
read, as an ordinary plugin on the lifecycle hooks (a third-party tracker is written the same way).

* At the start: the resolved config (TensorBoard: as text; MLflow: as parameters, flattened).
* Each epoch: every validation metric (``val/<name>`` / ``val_<name>``, step = epoch).
* At the end: every form's test metrics, batch-1 latency and size, and (MLflow) report.json,
  report.md, report.html and the deployable file as artifacts; a failed run is marked FAILED.

TensorBoard writes event files under ``<run>/tensorboard/``; MLflow logs where
``MLFLOW_TRACKING_URI`` points (experiment ``MLFLOW_EXPERIMENT_NAME``, default ``adapt``), as
MLflow's own tools do. Both come with ``pip install 'adapt-edge[tracking]'``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from adapt import hookimpl
from adapt.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow")
#: TensorBoard's event files, in the run directory (a name of adapt's run layout: --overwrite replaces it).
TENSORBOARD_DIR = "tensorboard"
#: The trackers of each run in progress, by run directory (several runs may share a process).
_OPEN: dict[str, list[Any]] = {}


def _missing(name: str, package: str) -> ConfigError:
    return ConfigError(
        f"train.report_to names {name}, but {package} is not installed",
        hint="pip install 'adapt-edge[tracking]' (TensorBoard and MLflow), or remove it from train.report_to",
    )


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``a.b.c -> value`` strings (MLflow's parameters are flat and short)."""
    found: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            found.update(flat(value, f"{name}."))
        else:
            found[name] = json.dumps(value)[:500] if not isinstance(value, str) else value[:500]
    return found


def final_figures(report: dict[str, Any]) -> dict[str, float]:
    """Every form's test metrics, batch-1 median latency and size, as ``kind/form/name`` figures."""
    figures: dict[str, float] = {}
    for form, values in (report.get("metrics") or {}).items():
        for name, value in values.items():
            if isinstance(value, (int, float)):
                figures[f"test/{form}/{name}"] = float(value)
    for form, timing in (report.get("latency_ms") or {}).items():
        if isinstance(timing, dict) and isinstance(timing.get("median"), (int, float)):
            figures[f"latency_ms/{form}"] = float(timing["median"])
    for form, size in (report.get("form_bytes") or {}).items():
        figures[f"bytes/{form}"] = float(size)
    return figures


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self.writer.add_text("config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "))

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"val/{name}", value, epoch)
        self.writer.flush()

    def finish(self, run_dir: Path, report: dict[str, Any], error: str | None) -> None:
        for name, value in final_figures(report).items():
            self.writer.add_scalar(name, value, 0)
        if error:
            self.writer.add_text("error", error)
        self.writer.close()


class MLflow:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow (or mlflow-skinny)") from None
        try:
            self.client = MlflowClient()
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "adapt")
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment, run_name=str(config.get("name", run_dir.name))).info.run_id
        except Exception as exc:  # noqa: BLE001 - MLflow's stores raise their own kinds
            advice = (
                "point MLFLOW_TRACKING_URI at a tracking server or a database (sqlite:///mlflow.db with mlflow "
                "installed); a local folder needs MLFLOW_ALLOW_FILE_STORE=true"
            )
            raise ConfigError(
                f"MLflow cannot log this run ({advice}): {str(exc).splitlines()[0][:200]}", hint=advice
            ) from None
        params = [Param(k, v) for k, v in flat(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _metrics(self, figures: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name.replace("/", "_"), value, now, step) for name, value in figures.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._metrics({f"val/{k}": v for k, v in metrics.items()}, epoch)

    def finish(self, run_dir: Path, report: dict[str, Any], error: str | None) -> None:
        self._metrics(final_figures(report), 0)
        deployable = report.get("deployable")
        files = [
            run_dir / "report.json",
            run_dir / "report.md",
            run_dir / "report.html",
            *([run_dir / deployable] if deployable else []),
        ]
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FAILED" if error else "FINISHED")


OPENERS = {"tensorboard": TensorBoard, "mlflow": MLflow}


@hookimpl
def adapt_run_started(run_dir: Path, config: dict[str, Any]) -> None:
    wanted = (config.get("train") or {}).get("report_to") or []
    opened = []
    try:
        for name in wanted:
            opened.append(OPENERS[name](run_dir, config))
    finally:
        _OPEN[str(run_dir)] = opened  # those that opened still log (and close) when another fails


@hookimpl
def adapt_epoch_ended(run_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
    for tracker in _OPEN.get(str(run_dir), []):
        tracker.epoch(epoch, metrics)


@hookimpl
def adapt_run_finished(run_dir: Path, report: dict[str, Any], error: str | None) -> None:
    for tracker in _OPEN.pop(str(run_dir), []):
        tracker.finish(run_dir, report, error)
