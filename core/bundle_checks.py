"""What proves an adapter bundle (adapt.bundle), run by run on each run's own test split:
the bundle with the run's adapter active against the run's merged model (max abs logit
difference within the run's ``export.parity_tolerance``, every label the same, the same
test metric), then the sizes (the base once plus the adapters, against one merged file
per run) and the latency of unmerged LoRA against each run's merged ONNX file, the two
taking turns round by round (adapt.latency)."""

from __future__ import annotations

import math
import statistics
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from adapt.bundle import MODEL_FILE, BundledRun, BundleError

INT8_FILE = "model.int8.onnx"

#: Latency rounds and calls per round of each contender (batch 1).
LATENCY_ROUNDS, LATENCY_RUNS = 5, 10
#: How far the bundle's test metric may sit from the merged model's (labels agree, so it is equal).
METRIC_TOLERANCE = 1e-9


def open_bundle(folder: Path, threads: int | None = None, file: str = MODEL_FILE) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the adapters' inputs are not constant-folded: expected, not news
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])


def adapter_runner(session: Any, adapter: Path, output: str) -> Callable[[dict[str, Any]], Any]:
    """A function from a feed to the bundle's ``output`` with ``adapter`` active."""
    import onnxruntime as ort

    loaded = ort.LoraAdapter()
    loaded.Load(str(adapter))
    options = ort.RunOptions()
    options.add_active_adapter(loaded)

    def run(feed: dict[str, Any], _adapter: Any = loaded) -> Any:  # the adapter lives as long as its runner
        return session.run([output], feed, options)[0]

    return run


def feed_of(batch: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {n: batch[n].numpy() for n in names if n in batch}


def verify_bundle(
    runs: Sequence[BundledRun], folder: Path, manifest: dict[str, Any], say: Callable[[str], None]
) -> dict[str, Any]:
    """The bundle's report; BundleError naming the run whose task it does not reproduce."""
    from adapt.latency import machine

    session = open_bundle(folder)
    names = manifest["inputs"]
    report: dict[str, Any] = {"tasks": {}, "inputs": names}
    runners = {}
    for run in runs:
        entry = manifest["tasks"][run.name]
        runners[run.name] = adapter_runner(session, folder / entry["adapter"], entry["output"])
        report["tasks"][run.name] = verify_run(run, runners[run.name], names)
        found = report["tasks"][run.name]
        say(
            f"bundle: {run.name}: {found['primary']} {found['metrics']['bundle'][found['primary']]:.4f} (merged "
            f"{found['metrics']['merged'][found['primary']]:.4f}), max abs diff {found['parity']['max_abs_diff']:.2e}, "
            f"labels agree {found['parity']['label_agreement']:.0%}"
        )
    int8_form(runs, folder, manifest, report, runners)
    report["sizes"] = sizes(runs, folder, manifest)
    int8 = {}
    if report["deployable"] == INT8_FILE:
        quantised = open_bundle(folder, file=INT8_FILE)
        int8 = {
            r.name: adapter_runner(
                quantised, folder / manifest["tasks"][r.name]["adapter"], manifest["tasks"][r.name]["output"]
            )
            for r in runs
        }
    report["latency_ms"] = latency(runs, runners, names, int8)
    report["machine"] = machine()
    return report


def verify_run(run: BundledRun, runner: Callable[[dict[str, Any]], Any], names: Sequence[str]) -> dict[str, Any]:
    """One run's test split through the bundle and through its merged model."""
    import torch

    from adapt.engine import evaluate
    from adapt.parity import compare, report_entry, verdict

    session, task = run.session, run.session.plan.task
    test, size = session.splits.test, session.config.train.eval_batch
    merged = session.plan.method.merge(session.built).model
    reference = evaluate(
        merged,
        test,
        session.collate,
        task,
        session.label_names,
        batch_size=size,
        device=torch.device("cpu"),
        keep_logits=True,
    )
    logits, predictions, metrics = run_split(run, runner, names, test)
    parity = compare(reference.logits, logits, reference.predictions, predictions, task.agreement, task.agreement_name)
    bound = session.config.export.parity_tolerance
    problem = verdict(parity, bound, reference=f"{run.name}'s merged model", candidate="the bundle")
    primary = task.primary_metric
    moved = abs(metrics.get(primary, math.nan) - reference.metrics.get(primary, math.nan))
    if not problem and parity.label_agreement < 1.0:
        problem = f"labels agree on {parity.label_agreement:.2%} of the test split, not all"
    if not problem and not moved <= METRIC_TOLERANCE:
        problem = f"test {primary} {metrics.get(primary)} against the merged model's {reference.metrics.get(primary)}"
    if problem:
        raise BundleError(
            f"the bundle with adapter {run.name!r} does not reproduce {run.path}'s merged model: {problem}",
            hint="report it with the run's backbone and method; the run still deploys as its own merged export",
        )
    return {
        "task": run.kind,
        "run": str(run.path),
        "primary": primary,
        "metrics": {
            "merged": _rounded({k: v for k, v in reference.metrics.items() if k in metrics}),
            "bundle": _rounded(metrics),
        },
        "parity": report_entry(parity, bound, verified=True),
    }


def run_split(
    run: BundledRun, runner: Callable[[dict[str, Any]], Any], names: Sequence[str], examples: Sequence[Any]
) -> tuple[list[Any], list[Any], dict[str, float]]:
    """The bundle's logits, predictions and the task's metrics on ``examples`` of ``run``."""
    import numpy as np
    import torch

    session, task = run.session, run.session.plan.task
    size = session.config.train.eval_batch
    logits, predictions, references = [], [], []
    for start in range(0, len(examples), size):
        batch = session.collate(examples[start : start + size])
        out = torch.from_numpy(np.asarray(runner(feed_of(batch, names)), dtype=np.float32))
        pred, ref = task.decode(out, batch["labels"])
        logits.append(out)
        predictions += pred
        references += ref
    return logits, predictions, task.metrics(predictions, references, session.label_names)


def int8_form(
    runs: Sequence[BundledRun],
    folder: Path,
    manifest: dict[str, Any],
    report: dict[str, Any],
    runners: dict[str, Callable[[dict[str, Any]], Any]],
) -> None:
    """``model.int8.onnx`` where the runs' exporter offers int8 with the adapters' inputs kept in
    float (Exporter.quantize_keeping), gated per task: its primary metric on the task's
    validation split, its adapter active, may fall at most ``export.max_accuracy_drop`` below
    the fp32 bundle's. Recommended (``deployable``) only when every task passes."""
    first = runs[0].session
    exporter = next((e for e in first.plan.exporters if e.suffix == ".onnx"), None)
    keep = _adapter_inputs(folder / MODEL_FILE)
    out = folder / INT8_FILE
    info = exporter.quantize_keeping(folder / MODEL_FILE, out, keep, first.config.export.target) if exporter else None
    report["deployable"] = MODEL_FILE
    if info is None:
        report["int8"] = {"note": "the exporter offers no int8 of this graph (a CNN's convolutions need static int8)"}
        return
    session, names, tasks = open_bundle(folder, file=INT8_FILE), manifest["inputs"], {}
    for run in runs:
        entry = manifest["tasks"][run.name]
        fp32, int8 = runners[run.name], adapter_runner(session, folder / entry["adapter"], entry["output"])
        val = run.session.splits.val or run.session.splits.test
        primary, budget = run.session.plan.task.primary_metric, run.session.config.export.max_accuracy_drop
        before, after = (run_split(run, r, names, val)[2].get(primary, math.nan) for r in (fp32, int8))
        drop = before - after
        tasks[run.name] = {
            "val": {"fp32": round(before, 6), "int8": round(after, 6), "drop": round(drop, 6), "budget": budget},
            "passed": bool(drop <= budget),
            "metrics": _rounded(run_split(run, int8, names, run.session.splits.test)[2]),
        }
    passed = all(t["passed"] for t in tasks.values())
    report["int8"] = {**info, "file": INT8_FILE, "bytes": out.stat().st_size, "tasks": tasks, "passed": passed}
    if passed:
        report["deployable"] = INT8_FILE


def _adapter_inputs(path: Path) -> list[str]:
    """The graph inputs with defaults: what adapters feed."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    defaults = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name in defaults]


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) if math.isfinite(v) else v for k, v in metrics.items()}


def merged_file(run: BundledRun) -> Path | None:
    """The run's own fp32 ONNX export (its merged model as one file), if it has one."""
    from adapt.report import read_report, report_forms

    forms = report_forms(run.path, read_report(run.path, damaged_ok=True))
    path = forms.get("onnx")
    return path if path is not None and path.is_file() else None


def sizes(runs: Sequence[BundledRun], folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The base once plus one adapter per run, against one merged fp32 file per run."""
    adapters = {run.name: (folder / manifest["tasks"][run.name]["adapter"]).stat().st_size for run in runs}
    model = (folder / MODEL_FILE).stat().st_size
    files = {run.name: path.stat().st_size for run in runs if (path := merged_file(run)) is not None}
    found: dict[str, Any] = {"model": model, "adapters": adapters, "bundle_total": model + sum(adapters.values())}
    if (folder / INT8_FILE).is_file():
        found["model_int8"] = (folder / INT8_FILE).stat().st_size
    if len(files) == len(runs):
        found.update(merged_files=files, merged_total=sum(files.values()))
        found["bundle_over_merged"] = round(found["bundle_total"] / found["merged_total"], 4)
    return found


def latency(
    runs: Sequence[BundledRun],
    runners: dict[str, Callable[[dict[str, Any]], Any]],
    names: Sequence[str],
    int8: dict[str, Callable[[dict[str, Any]], Any]],
) -> dict[str, Any]:
    """Batch-1 milliseconds of each task through the bundle and through its run's merged ONNX
    file, all taking turns in every round; each task's ratio bundle / merged with its range."""
    from adapt.latency import figures, ratio, timed_rounds

    contenders: dict[str, Callable[[], Any]] = {}
    pairs = {}
    for run in runs:
        path = merged_file(run)
        if path is None:
            continue
        feed = feed_of(run.session.collate(run.session.splits.test[:1]), names)
        merged = _merged_runner(path)
        bundle = runners[run.name]
        contenders[f"{run.name}:merged"] = partial(merged, feed)
        contenders[f"{run.name}:bundle"] = partial(bundle, feed)
        pairs[run.name] = (f"{run.name}:bundle", f"{run.name}:merged")
        if run.name in int8:
            contenders[f"{run.name}:bundle_int8"] = partial(int8[run.name], feed)
            pairs[f"{run.name}:int8"] = (f"{run.name}:bundle_int8", f"{run.name}:merged")
    if not contenders:
        return {"note": "no run has its own ONNX export to compare with (adapt export RUN_DIR)"}
    times = timed_rounds(contenders, LATENCY_ROUNDS, LATENCY_RUNS, pause=0.1)
    medians = {name: [statistics.median(r) for r in rounds] for name, rounds in times.items()}
    return {
        "ms": {name: figures(rounds) for name, rounds in times.items()},
        "bundle_over_merged": {name: ratio(medians, *pair) for name, pair in pairs.items()},
        "batch": 1,
    }


def _merged_runner(path: Path) -> Callable[[dict[str, Any]], Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]
    return lambda feed: session.run(None, {n: feed[n] for n in wanted})[0]


def write_bundle_report(folder: Path, report: dict[str, Any]) -> None:
    """report.json and a short report.md in the bundle's folder."""
    from adapt.rundir import atomic_write_json, atomic_write_text

    atomic_write_json(folder / "report.json", report)
    atomic_write_text(folder / "report.md", render(report))


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Adapter bundle",
        "",
        "| task | kind | merged | bundle | max abs diff | labels agree | bundle / merged latency |",
    ]
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    ratios = report.get("latency_ms", {}).get("bundle_over_merged", {})
    for name, entry in report["tasks"].items():
        primary, ratio = entry["primary"], ratios.get(name)
        lines.append(
            f"| {name} | {entry['task']} | {primary} {entry['metrics']['merged'][primary]:.4f} | "
            f"{entry['metrics']['bundle'][primary]:.4f} | {entry['parity']['max_abs_diff']:.2e} | "
            f"{entry['parity']['label_agreement']:.0%} | "
            + (f"{ratio['ratio']:.2f}x ({ratio['range'][0]:.2f}-{ratio['range'][1]:.2f})" if ratio else "-")
            + " |"
        )
    size = report["sizes"]
    lines += [
        "",
        f"Bundle: {size['model'] / 1e6:.1f} MB graph + {sum(size['adapters'].values()) / 1e6:.2f} MB of adapters",
    ]
    if "merged_total" in size:
        lines[-1] += (
            f", against {size['merged_total'] / 1e6:.1f} MB of merged files ({size['bundle_over_merged']:.2f}x)."
        )
    int8 = report.get("int8", {})
    if "tasks" in int8:
        lines += [
            "",
            f"int8 graph ({int8['kind']}): {int8['bytes'] / 1e6:.1f} MB; per task, validation drop against fp32:",
        ]
        lines += [
            f"- {name}: {t['val']['drop']:+.4f} (budget {t['val']['budget']}) {'passed' if t['passed'] else 'REJECTED'}"
            for name, t in int8["tasks"].items()
        ]
    elif int8:
        lines += ["", f"int8: {int8['note']}"]
    lines += ["", f"Deployable: {report['deployable']}"]
    return "\n".join(lines) + "\n"
