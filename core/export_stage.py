"""The export stage: from the merged PyTorch model to deployable files, each one
checked against the merged model on the run's real test inputs.

For each configured exporter: export, then evaluate the file on the test split
(the task's metrics) and compare its logits with the merged model's (max abs
difference, label agreement); an exact form (fp32, optimised) that drifts past
``export.parity_tolerance`` fails the run. Exporters may derive further forms
(optimised, int8, mobile) through :class:`DeriveContext`, which lets them score
a candidate file on the validation split and time it. Every runnable form's
CPU latency at batch 1 is measured next to PyTorch eager.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

EXPORT_DIR = "export"
#: How to turn raw inputs into the graph's inputs without torch (see adapt.onnx_predict).
PREPROCESS_FILE = "preprocess.json"


@dataclass
class Form:
    """One file an exporter produced. ``exact``: must reproduce the merged model
    within the parity tolerance (not so for int8); ``runnable``: the exporter's
    ``load`` can run it here (a .ort file is for devices)."""

    name: str
    path: Path
    exact: bool = True
    runnable: bool = True


@dataclass
class Derived:
    """What an exporter's ``derive`` made, and the file it recommends."""

    deployable: Path
    forms: list[Form] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeriveContext:
    """What an exporter may use to make and judge further forms."""

    out_dir: Path
    #: The backbone's ``onnx_optimizer_options(built)``, e.g. {"model_type": "bert",
    #: "num_heads": 12, "hidden_size": 384} for ONNX Runtime's transformer optimiser;
    #: empty for graphs it does not know.
    model_info: dict[str, Any]
    quantize: str
    mobile: bool
    max_accuracy_drop: float
    #: Single-example model inputs from the training split, for calibration.
    calibration: list[dict[str, Any]]
    #: The task's primary metric of a file on the validation split.
    score: Callable[[Path], float]
    #: Batch-1 CPU latency of a file: {"median", "p90", "threads"} in milliseconds.
    latency: Callable[[Path], dict[str, float]]
    options: Any = None


def measure(fn: Callable[[], Any], runs: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median": round(statistics.median(times), 3), "p90": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3)}


#: What the export stage writes into the report (besides the exported forms' metrics and parity).
EXPORT_KEYS = ("export", "forms", "deployable", "latency_ms", "latency_ms_batch")
#: Entries of ``metrics`` / ``parity`` that the merge stage writes; all others are exported forms'.
MODEL_ENTRIES = ("adapted", "merged")


def forget_export(report: dict[str, Any]) -> None:
    """Drop everything a previous export put into ``report``."""
    for key in EXPORT_KEYS:
        report.pop(key, None)
    for key in ("metrics", "parity"):
        if isinstance(report.get(key), dict):
            report[key] = {k: v for k, v in report[key].items() if k in MODEL_ENTRIES}


def export_stage(session: Any, merged_model: Any, merged: Any, report: dict[str, Any], host: Any) -> None:
    """Export, verify, derive and time every configured format; fill ``report``.

    A previous export's entries are dropped from ``report`` and the report is written
    before the export folder is rewritten, so a run killed meanwhile leaves a report that
    sends ``adapt predict --onnx`` to ``adapt export``, never to a half-written file, and
    a re-export never keeps figures of forms it no longer makes.
    ``merged`` is the merged model's test-split evaluation (logits kept), the reference."""
    import numpy as np
    import torch

    from adapt.errors import ExportError
    from adapt.parity import compare

    plan, built, cfg = session.plan, session.built, session.config.export
    if not plan.exporters:
        return
    run_dir = session.run.path
    out = run_dir / EXPORT_DIR
    from adapt.report import write_report

    forget_export(report)
    write_report(run_dir, report)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    threads = torch.get_num_threads()
    io = plan.backbone.onnx_io(built)
    batch_size = session.config.train.eval_batch_size or 2 * session.config.train.batch_size
    task, labels = plan.task, session.label_names

    def batches(examples: list) -> list[dict[str, Any]]:
        return [session.collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]

    test_batches = batches(session.splits.test)
    val_batches = batches(session.splits.val) or test_batches
    numpy_inputs = lambda batch: {n: batch[n].numpy() for n in io.input_names}  # noqa: E731

    def run_file(exporter: Any, path: Path, data: list[dict[str, Any]]) -> tuple[dict[str, float], list[torch.Tensor], list[Any]]:
        runner = exporter.load(path, threads)
        predictions, references, logits = [], [], []
        for batch in data:
            out_logits = torch.from_numpy(np.asarray(runner(numpy_inputs(batch)), dtype=np.float32))
            pred, ref = task.decode(out_logits, batch["labels"])
            predictions += pred
            references += ref
            logits.append(out_logits)
        return task.metrics(predictions, references, labels), logits, predictions

    def latency_of(fn: Callable[[], Any]) -> dict[str, float]:
        return {**measure(fn, cfg.latency_runs), "threads": threads}

    def time_runner(runner: Callable[[dict[str, Any]], Any], batch: dict[str, Any]) -> dict[str, float]:
        feed = {n: batch[n].numpy() for n in io.input_names}
        return latency_of(lambda: runner(feed))

    one = session.collate(session.splits.test[:1])
    one_inputs = {n: one[n] for n in io.input_names}
    many = session.collate(session.splits.test[: cfg.latency_batch]) if cfg.latency_batch > 1 else None
    merged_model.eval()
    with torch.no_grad():
        report.setdefault("latency_ms", {})["pytorch"] = latency_of(lambda: merged_model(**one_inputs))
        if many is not None:
            report["latency_ms_batch"] = {"batch": len(session.splits.test[: cfg.latency_batch]), "pytorch": latency_of(lambda: merged_model(**{n: many[n] for n in io.input_names}))}

    save = getattr(plan.backbone, "save_preprocessing", None)
    if callable(save):
        from adapt.rundir import atomic_write_json

        atomic_write_json(out / PREPROCESS_FILE, {**save(built, plan.backbone_options, out), "labels": labels, "task": session.config.task})
        from adapt import onnx_predict

        shutil.copyfile(onnx_predict.__file__, out / "predict.py")  # the standalone predictor a device runs
    report["export"] = {}
    for exporter in plan.exporters:
        path = exporter.export(merged_model, plan.backbone.example_inputs(built, 2), io, out / f"model{exporter.suffix}", plan.exporter_options.get(exporter.name))
        host.call("adapt_artifact_exported", run_dir=run_dir, path=path, kind=exporter.name)
        forms = [Form(exporter.name, path)]
        details: dict[str, Any] = {}
        deployable = path
        derive = getattr(exporter, "derive", None)
        if callable(derive):
            def score(candidate: Path, exporter: Any = exporter) -> float:
                return run_file(exporter, candidate, val_batches)[0].get(task.primary_metric, 0.0)

            def file_latency(candidate: Path, exporter: Any = exporter) -> dict[str, float]:
                return time_runner(exporter.load(candidate, threads), one)

            calibration = [{n: v.numpy() for n, v in session.collate([e]).items() if n in io.input_names} for e in session.splits.train[:400]]
            hints = getattr(plan.backbone, "onnx_optimizer_options", None)
            ctx = DeriveContext(out, hints(built) if callable(hints) else {}, cfg.quantize, cfg.mobile, cfg.max_accuracy_drop, calibration, score, file_latency, plan.exporter_options.get(exporter.name))
            derived = derive(path, ctx)
            forms += derived.forms
            deployable = derived.deployable
            details = {"attempts": derived.attempts, "notes": derived.notes, **derived.info}
        for form in forms:
            report.setdefault("forms", {})[form.name] = form.path.relative_to(run_dir).as_posix()
            if not form.runnable:
                continue
            metrics, logits, predictions = run_file(exporter, form.path, test_batches)
            parity = compare(merged.logits, logits, merged.predictions, predictions)
            report.setdefault("metrics", {})[form.name] = {k: round(v, 6) for k, v in metrics.items()}
            report.setdefault("parity", {})[form.name] = {"max_abs_diff": parity.max_abs_diff, "label_agreement": parity.label_agreement, "examples": parity.examples}
            runner = exporter.load(form.path, threads)
            report["latency_ms"][form.name] = time_runner(runner, one)
            if many is not None:
                report["latency_ms_batch"][form.name] = time_runner(runner, many)
            if form.exact and parity.max_abs_diff > cfg.parity_tolerance:
                report["export"][exporter.name] = details
                raise ExportError(
                    f"{form.path.name} does not reproduce the merged model: max abs difference {parity.max_abs_diff:.3g} > export.parity_tolerance {cfg.parity_tolerance}",
                    hint="the file is kept for inspection; raise export.parity_tolerance only if that difference is acceptable",
                )
        report["export"][exporter.name] = details
        report["deployable"] = deployable.relative_to(run_dir).as_posix()
        session.say(f"export: {exporter.name}: " + ", ".join(f"{f.name} {_short(report['metrics'].get(f.name, {}), task.primary_metric)}" for f in forms if f.runnable) + f"; deployable {report['deployable']}")


def _short(metrics: dict[str, float], primary: str) -> str:
    value = metrics.get(primary)
    return f"{primary} {value:.4f}" if isinstance(value, float) else ""
