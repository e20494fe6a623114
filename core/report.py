"""``report.json`` (for tools) and ``report.md`` (for people), plus the training-curve picture.

report.json keys: ``task``, ``backbone``, ``method``, ``params`` (``trainable``,
``total``), ``metrics`` (one entry per form: ``adapted``, ``merged``, and the
exported forms), ``parity`` (``merged``, exported forms: ``max_abs_diff``,
``label_agreement``), ``merge`` (``folded`` or ``inline``), ``latency_ms``,
``files`` (path relative to the run directory -> bytes), ``forms`` (form -> file),
``deployable``, and
``data``, ``training``, ``new_parameters``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from adapt.rundir import atomic_write_bytes, atomic_write_json, atomic_write_text

#: The metric the latency table shows, by task (others: accuracy).
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVE_PNG = "training_curve.png"


def read_report(run_dir: Path, *, damaged_ok: bool = False) -> dict[str, Any]:
    """``report.json`` of a run ({} before the first stage wrote it). A damaged file is
    an error naming it, unless ``damaged_ok`` (a stage that writes the report anew)."""
    from adapt.errors import RunDirError

    path = run_dir / REPORT_JSON
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("it does not hold a JSON object")
        return report
    except (OSError, ValueError) as exc:
        if damaged_ok:
            return {}
        raise RunDirError(f"{path} is damaged ({exc})", hint=f"`adapt export {run_dir}` writes it again") from None


def require_report(run_dir: Path) -> dict[str, Any]:
    """``report.json`` of a run that a command needs (``bench``, ``predict --onnx``): its
    absence is named as such, not taken for a run without exports."""
    from adapt.errors import RunDirError

    if not (run_dir / REPORT_JSON).exists():
        raise RunDirError(
            f"{run_dir} has no {REPORT_JSON} (it is written by each stage; was it removed?)",
            hint=f"export the run again to write it: adapt export {run_dir}",
        )
    return read_report(run_dir)


def report_file(run_dir: Path, report: dict[str, Any], key: str) -> Path | None:
    """The run file that report.json's ``key`` (``deployable``, ``forms.<name>``) names,
    held inside the run directory (adapt.paths.inside); None where the key is absent."""
    from adapt.errors import RunDirError
    from adapt.paths import inside

    value: Any = report
    for part in key.split(".", 1):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else inside(run_dir, value, file=run_dir / REPORT_JSON, key=key, error=RunDirError)


def report_forms(run_dir: Path, report: dict[str, Any]) -> dict[str, Path]:
    """report.json's ``forms``: form name -> its file inside the run directory."""
    from adapt.errors import RunDirError

    forms = report.get("forms", {})
    if not isinstance(forms, dict):
        raise RunDirError(
            f"{run_dir / REPORT_JSON}: forms is a {type(forms).__name__}, not a mapping from form to file",
            hint=f"`adapt export {run_dir}` writes it again",
        )
    return {name: path for name in forms if (path := report_file(run_dir, report, f"forms.{name}")) is not None}


def _drop(attempt: dict[str, Any]) -> str:
    """An attempt's validation drop, with its paired interval where the gate had one."""
    interval = attempt.get("drop_interval")
    drop = fmt_value(attempt.get("val_drop", ""))
    return (
        f"{drop} [{fmt_value(interval[0])}, {fmt_value(interval[1])}]"
        if isinstance(interval, list) and len(interval) == 2
        else drop
    )


def list_files(run_dir: Path) -> dict[str, int]:
    """Every file of the run (checkpoints aside), by relative path, with its size."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] != "checkpoints" and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = path.stat().st_size
    return files


def add_section(report: dict[str, Any], section: dict[str, Any]) -> None:
    """Add a stage's ``section`` to ``report``; entries of a key both hold as a dict
    (``metrics``, ``parity``, ``params``) are merged, not replaced."""
    for key, value in section.items():
        if isinstance(value, dict) and isinstance(report.get(key), dict):
            report[key] = {**report[key], **value}
        else:
            report[key] = value


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and the self-contained report.html, each written whole or not at all."""
    from adapt.report_html import REPORT_HTML, render_html, unrendered  # it draws on this module's helpers

    report["files"] = list_files(run_dir)
    atomic_write_json(run_dir / REPORT_JSON, report)
    atomic_write_text(run_dir / REPORT_MD, render_markdown(report))
    try:
        page = render_html(run_dir, report)
    except (TypeError, ValueError, KeyError, OSError) as exc:  # a figure of an unexpected shape: the run goes on
        page = unrendered(exc)
    atomic_write_text(run_dir / REPORT_HTML, page)


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def diff_text(value: Any, missing: str = "NaN/Inf") -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else missing


def _verified(value: Any) -> str:
    return {True: "yes", False: "**NO**"}.get(value, "")


def agreement_text(measured: Any, share: float) -> str:
    """``label agreement 100.00%``, or the task's own agreement by its name (``box agreement 99.50%``,
    ``min cosine 0.99998``): what a parity entry's ``label_agreement`` measured (``agreement_of``)."""
    name = "label_agreement" if measured in (None, "labels") else str(measured)
    return f"{name.replace('_', ' ')} " + (f"{share:.2%}" if name.endswith("agreement") else f"{share:.6g}")


#: The entries every parity check has; anything else in one is a task's own (its agreement_name, its check_export's).
PARITY_KEYS = ("max_abs_diff", "label_agreement", "agreement_of", "examples", "bound", "verified")


def agreements_text(parity: dict[str, Any]) -> str:
    """A form's task-specific checks, after its label agreement (boxes after NMS, generated tokens,
    the smallest cosine): every other number in its parity entry, by its own name."""
    shown = []
    for key, value in parity.items():
        if key in PARITY_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        text = agreement_text(key, value)  # the same name as the agreement: measured on the graph's own final outputs
        shown.append(f"; final outputs' {text}" if key == parity.get("agreement_of") else f"; {text}")
    return "".join(shown)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the run's summary and test metrics, parity, latency, the int8 attempts, files and pictures."""
    lines = _summary_lines(report) + _parity_lines(report)
    if report.get("latency_ms"):
        lines += ["", "## CPU latency (batch 1)", "", latency_table(report)]
    lines += _export_lines(report) + _closing_lines(report)
    return "\n".join(lines) + "\n"


def _stage_lines(report: dict[str, Any]) -> list[str]:
    """Each stage's seconds and peak resident memory, and the run's peak against the fp32 weights."""
    timings, memory = report.get("timings") or {}, report.get("memory") or {}
    peaks = memory.get("peak_mib") or {}
    stages = [s for s in timings if s != "total"] or list(peaks)
    if not stages:
        return []
    line = "- stages: " + ", ".join(
        f"{stage} {timings.get(stage, 0):.1f} s" + (f" / {peaks[stage]:,.0f} MiB" if stage in peaks else "")
        for stage in stages
    )
    if memory.get("peak_over_weights") is not None:
        line += (
            f"; peak {memory['run_peak_mib']:,.0f} MiB, {memory['peak_over_weights']}x the fp32 weights "
            f"({memory['fp32_weights_mib']:,.0f} MiB)"
        )
    return [line]


def params_text(params: dict[str, Any]) -> str:
    """``75,653 trainable of 22,788,869 (0.33%)``."""
    trainable, total = params.get("trainable", 0), params.get("total", 0)
    return f"{trainable:,} trainable of {total:,} ({trainable / max(total or 1, 1):.2%})"


def data_text(data: dict[str, Any]) -> str:
    """``text-folder: train 1780, val 222, test 222; 5 labels; 1 items skipped``."""
    sizes = ", ".join(f"{k} {v}" for k, v in (data.get("sizes") or {}).items())
    return (
        f"{data.get('source')}: {sizes}; {len(data.get('labels') or [])} labels; "
        f"{len(data.get('skipped') or [])} items skipped"
    )


def form_metric(report: dict[str, Any], form: str) -> Any:
    """A form's test value of the task's primary metric (PyTorch eager's is the merged model's); None if absent."""
    primary = str(report.get("primary_metric") or "accuracy")  # the task's (Task.primary_metric)
    return (report.get("metrics") or {}).get("merged" if form == "pytorch" else form, {}).get(primary)


def _summary_lines(report: dict[str, Any]) -> list[str]:
    """The title, what ran on what data and how training went, and each form's test metrics."""
    lines = [f"# Run report: {report.get('name', '')}", ""]
    params = report.get("params", {})
    lines += [
        f"- task: {report.get('task')}",
        f"- backbone: {report.get('backbone')}",
        f"- method: {report.get('method')} (merge: {report.get('merge', 'not yet')})",
        f"- parameters: {params_text(params)}",
    ]
    data = report.get("data", {})
    if data:
        lines.append(f"- data: {data_text(data)}")
    training = report.get("training", {})
    if training:
        fast = training.get("fast_path") or {}
        switched = ", ".join(f"{k} {v}" for k, v in fast.items() if v) or "off"
        lines.append(
            f"- training: best epoch {training.get('best_epoch')} of {training.get('epochs_run')}, "
            f"{training.get('steps')} steps, {training.get('seconds', 0):.0f} s on {training.get('device')} "
            f"({training.get('precision')}); fast path: {switched}"
        )
    lines += _stage_lines(report)
    metrics = report.get("metrics", {})
    if metrics:
        names = sorted({k for m in metrics.values() for k in m})
        lines += ["", "## Test metrics", "", "| form | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [
            f"| {form} | " + " | ".join(fmt_value(m.get(k, "")) for k in names) + " |" for form, m in metrics.items()
        ]
    return lines


def _parity_lines(report: dict[str, Any]) -> list[str]:
    """Each form's parity with the form it came from."""
    lines: list[str] = []
    parity = report.get("parity", {})
    if parity:
        lines += [
            "",
            "## Parity (merged: against the adapted model; exported forms: against the merged model)",
            "",
            "| form | max abs diff of logits | allowed | agreement | verified |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {form} | {diff_text(p.get('max_abs_diff'))} | "
            f"{diff_text(p.get('bound'), 'no bound (accuracy gate)')} | "
            f"{agreement_text(p.get('agreement_of'), p.get('label_agreement', 0))}{agreements_text(p)} | "
            f"{_verified(p.get('verified'))} |"
            for form, p in parity.items()
        ]
    return lines


def _export_lines(report: dict[str, Any]) -> list[str]:
    """Each exporter's int8 attempts, notes and mobile usability check."""
    lines: list[str] = []
    export = report.get("export", {})
    for name, details in export.items():
        attempts = details.get("attempts") or []
        if attempts:
            lines += [
                "",
                f"## {name}: int8 attempts (scored on the validation split)",
                "",
                "| attempt | val score | drop (95% interval) | verdict | median ms | bytes |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {a['attempt']} | {fmt_value(a.get('val_score', ''))} | {_drop(a)} | "
                f"{a.get('verdict', a.get('passed', a.get('error', '')))} | "
                f"{a.get('latency_ms', {}).get('median', '')} | {a.get('bytes', '')} |"
                for a in attempts
            ]
        if details.get("notes"):
            lines.append("")
        for note in details.get("notes") or []:
            lines.append(f"- {name}: {note}")
        if details.get("mobile_usability"):
            lines += ["", "Mobile usability check:", "", *[f"    {line}" for line in details["mobile_usability"]]]
    return lines


def _closing_lines(report: dict[str, Any]) -> list[str]:
    """Files with their sizes, the deployable one, export notes, pictures and notes."""
    lines: list[str] = []
    files = report.get("files", {})
    if files:
        lines += ["", "## Files", "", "| file | bytes |", "|---|---|"]
        lines += [f"| {name} | {size:,} |" for name, size in files.items()]
    if report.get("deployable"):
        lines += ["", f"Deployable: `{report['deployable']}`"]
    for note in report.get("export_notes") or []:
        lines.append(f"- export: {note}")
    for name, path in (report.get("pictures") or {}).items():
        lines += ["", f"## Picture: {name}", "", f"![{name}]({path})"]
    lines += _sample_lines(report)
    if report.get("notes") or []:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return lines


def _sample_lines(report: dict[str, Any]) -> list[str]:
    """The deployable form's samples (a decoder's continuations of test prompts), where the export kept some."""
    samples: dict[str, list[dict[str, str]]] = report.get("samples") or {}
    form = _deployable_form(report)
    shown = form if form in samples else next(iter(samples), None)
    if shown is None:
        return []
    lines = ["", f"## Samples ({shown})", ""]
    return lines + [f"- {row.get('prompt', '')!r} -> **{row.get('continuation', '')!r}**" for row in samples[shown]]


def latency_table(report: dict[str, Any]) -> str:
    """Markdown table: each form's batch-1 latency, its ratio to PyTorch eager (measured
    taking turns: median and range of the per-round ratios), size and primary metric;
    for text-generation also its greedy generation speed (new tokens per second)."""
    latency, files = report.get("latency_ms", {}), report.get("files", {})
    versus = report.get("latency_vs_pytorch", {})
    primary = str(report.get("primary_metric") or "accuracy")  # the task's (Task.primary_metric)
    direction = " (lower is better)" if report.get("lower_is_better") else ""
    generation = any("tokens_per_s" in v for v in latency.values())
    rows = [
        "| form | median ms | p90 ms | vs PyTorch (range) | threads | bytes | test "
        + primary
        + direction
        + (" | tokens/s |" if generation else " |"),
        "|---|---|---|---|---|---|---|" + ("---|" if generation else ""),
    ]
    forms = report.get("forms", {})
    for form, v in latency.items():
        size = (report.get("form_bytes") or {}).get(form, files.get(forms.get(form, ""), ""))
        metric = form_metric(report, form)
        speed = f" {fmt_value(v.get('tokens_per_s', ''))} |" if generation else ""
        rows.append(
            f"| {form} | {v.get('median', 0):.2f} | {v.get('p90', 0):.2f} | {versus_text(form, versus, latency)} | "
            f"{v.get('threads', '')} | {size} | {fmt_value('' if metric is None else metric)} |{speed}"
        )
    if versus.get("note"):
        rows.append(f"\n{versus['note']}")
    return "\n".join(rows)


def versus_text(form: str, versus: dict[str, Any], latency: dict[str, Any]) -> str:
    """A form's ratio to eager: the interleaved one (with its range) where the report has
    it; a report from before interleaving: the plain ratio of medians."""
    if form == "pytorch":
        return "1.00x"
    entry = versus.get(form)
    if isinstance(entry, dict):
        return f"{entry['ratio']:.3f}x ({entry['range'][0]:.3f}-{entry['range'][1]:.3f})"
    base = latency.get("pytorch", {}).get("median")
    return "" if versus.get("note") or not base else f"{latency[form].get('median', 0) / base:.2f}x"


def save_figure(fig: Any, path: Path) -> Path:
    """A matplotlib figure as a PNG at ``path`` (written whole or not at all); the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_curve(run_dir: Path, history: list[dict[str, Any]], primary: str) -> Path | None:
    """Training loss and the validation metric per epoch, as a PNG."""
    epochs = [r for r in history if r.get("kind") == "epoch"]
    if not epochs:
        return None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(6, 3.5), dpi=100)
    x = [r["epoch"] for r in epochs]
    left.plot(x, [r["train_loss"] for r in epochs], "o-", color="tab:blue", label="train loss")
    if any("val_loss" in r for r in epochs):
        left.plot(x, [r.get("val_loss", math.nan) for r in epochs], "o--", color="tab:cyan", label="val loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    right = left.twinx()
    key = f"val_{primary}"
    if any(key in r for r in epochs):
        right.plot(x, [r.get(key, math.nan) for r in epochs], "s-", color="tab:orange", label=f"val {primary}")
        right.set_ylabel(primary)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [str(h.get_label()) for h in handles], loc="center right")
    left.set_title("training curve")
    return save_figure(fig, run_dir / CURVE_PNG)


def model_card(report: dict[str, Any], kind: str, files: Sequence[str] = ()) -> str:
    """A model card (README.md) for ``merged/`` (``kind="merged"``) or ``export/``
    (``kind="export"``), as Hugging Face model cards are: what the model is, what it
    was trained on, its test metrics and parity with the form it came from, how to run it."""
    import yaml

    from adapt import __version__

    params, data, task = report.get("params", {}), report.get("data", {}), report.get("task", "")
    labels = data.get("labels") or []
    library = (
        "onnxruntime" if kind == "export" else str(report.get("merged_library") or "adapt")
    )  # the backbone's save_merged says
    lines = [
        "---",
        yaml.safe_dump(hub_metadata(report, kind, library), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {report.get('name', '')}: {report.get('backbone', '')} + {report.get('method', '')} ({task})",
        "",
        f"Fine-tuned with adapt {__version__}: {params.get('trainable', 0):,} of {params.get('total', 0):,} "
        f"parameters trained, then merged ({report.get('merge', '')}).",
        f"Labels ({len(labels)}): {', '.join(map(str, labels[:20]))}{', ...' if len(labels) > 20 else ''}.",
        "",
        "## Intended use",
        "",
        f"{task} of inputs like its training data (data source `{data.get('source', '')}`, split sizes "
        f"{data.get('sizes', {})}). "
        "It was evaluated on that data's test split only; check it on your own data before relying on it.",
        "",
    ]
    forms = (
        ["adapted", "merged"] if kind == "merged" else [f for f in report.get("metrics", {}) if f not in ("adapted",)]
    )
    metrics, parity = report.get("metrics", {}), report.get("parity", {})
    names = sorted({k for f in forms for k in metrics.get(f, {})})
    lines += [
        "## Test metrics and parity",
        "",
        "| form | " + " | ".join(names) + " | max abs diff | verified |",
        "|---" * (len(names) + 3) + "|",
    ]
    for form in forms:
        check = parity.get(form, {})
        lines.append(
            f"| {form} | "
            + " | ".join(fmt_value(metrics.get(form, {}).get(k, "")) for k in names)
            + f" | {diff_text(check.get('max_abs_diff'), '')} | {_verified(check.get('verified'))} |"
        )
    lines += ["", "## How to use", "", *_usage(report, kind, library), ""]
    if files:
        from adapt.export_files import export_file_lines

        lines += ["## Files", "", *export_file_lines(report, files), ""]
    return "\n".join(lines)


def hub_metadata(report: dict[str, Any], kind: str, library: str) -> dict[str, Any]:
    """The card's metadata block as the Hugging Face Hub reads it: the library that opens the
    folder, the task's pipeline tag, the base model (where the checkpoint is a Hub id), and the
    test metrics of the card's form (merged/: the merged model; export/: the deployable file)
    as a ``model-index`` entry."""
    task = str(report.get("task", ""))
    meta: dict[str, Any] = {"library_name": library, "tags": ["adapt", str(report.get("method", "")), task]}
    if report.get("pipeline_tag"):
        meta["pipeline_tag"] = report["pipeline_tag"]
    if is_hub_id(report.get("checkpoint")):
        meta["base_model"] = report["checkpoint"]
    form = "merged" if kind == "merged" else _deployable_form(report)
    values = {k: v for k, v in (report.get("metrics") or {}).get(form, {}).items() if _finite(v) and k != "loss"}
    if values:
        source = str((report.get("data") or {}).get("source", "data"))
        meta["metrics"] = sorted(values)
        meta["model-index"] = [
            {
                "name": str(report.get("name", "")),
                "results": [
                    {
                        "task": {"type": str(report.get("pipeline_tag") or task), "name": task},
                        "dataset": {"type": source, "name": source, "split": "test"},
                        "metrics": [
                            {"type": k, "value": float(v), "name": f"test {k} ({form})"} for k, v in values.items()
                        ],
                    }
                ],
            }
        ]
    return meta


def is_hub_id(checkpoint: Any) -> bool:
    """Whether backbone.checkpoint names a Hub repository (``org/name``), not a local path or a package path."""
    import re

    if not isinstance(checkpoint, str) or checkpoint.startswith(("pkg:", "/", ".", "~")) or Path(checkpoint).exists():
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", checkpoint) is not None


def _deployable_form(report: dict[str, Any]) -> str:
    deployable = report.get("deployable")
    return next((form for form, path in (report.get("forms") or {}).items() if path == deployable), "merged")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _usage(report: dict[str, Any], kind: str, library: str) -> list[str]:
    if kind == "export":
        deployable = str(report.get("deployable", "model.onnx")).rpartition("/")[2]
        return [
            "```bash",
            "pip install onnxruntime numpy pillow tokenizers",
            f'python predict.py {deployable} "an input"   # text, a sentence (NER) or an image path',
            "```",
            "",
            "The `.onnx` files carry the labels and the preprocessing in their metadata (`adapt.labels`, "
            "`adapt.preprocess`).",
        ]
    if report.get("merge") == "inline":
        return [
            "The method's modules stay inline (they cannot be folded), so `model.safetensors` is in adapt's layout:",
            "run it with `adapt predict RUN_DIR ...`, or deploy `export/`, which holds the one graph.",
        ]
    usage = report.get("merged_usage")
    if usage:  # the backbone wrote its library's folder and said how to open it (Backbone.save_merged)
        return [str(line) for line in usage]
    return [
        "`model.safetensors` holds the merged model in adapt's layout: run it with `adapt predict RUN_DIR ...`, or "
        "deploy `export/`."
    ]
