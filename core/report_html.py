"""report.html: the run's report as one self-contained page (no file beside it, no network).

The same figures as report.md, for people who look rather than read JSON: the summary,
the training curve, every form's test metrics, parity, latency and size as tables, one plot
of the primary metric against batch-1 latency per form (inline SVG), and the task's
pictures (``Task.draw``: a confusion matrix, boxes drawn on test images, nearest neighbours)
and the samples an export check kept (a decoder's continuations of test prompts). Pictures are
embedded as data URIs; a picture's path is read from the report, so it must lie inside the
run directory. A short inline script marks the page rendered (``data-rendered`` on
``<body>``: how many pictures decoded), which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from adapt.report import (
    CURVE_PNG,
    agreements_text,
    diff_text,
    fmt_value,
    versus_text,
    agreement_text,
    data_text,
    form_metric,
    params_text,
)

REPORT_HTML = "report.html"

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.no{color:#b00020;font-weight:bold}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:bold}
img{max-width:100%;border:1px solid #eee}figure{margin:1rem 0}.note{color:#555}
"""

#: Marks the page rendered once every embedded picture decoded: what the browser test reads.
SCRIPT = """
window.addEventListener("load", () => {
  const pictures = [...document.images];
  const decoded = pictures.filter((p) => p.complete && p.naturalWidth > 0).length;
  document.body.dataset.rendered = `${decoded}/${pictures.length}`;
});
"""


def esc(value: Any) -> str:
    return html.escape(fmt_value(value) if isinstance(value, float) else str(value))


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embedded_png(run_dir: Path, relative: str, alt: str) -> str:
    """An <img> holding the PNG at ``run_dir/relative``; a note where the file is missing or outside the run."""
    root = run_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return f'<p class="note">{esc(alt)}: {esc(relative)} is not a file inside the run directory</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def summary(report: dict[str, Any]) -> str:
    params, data, training = report.get("params") or {}, report.get("data") or {}, report.get("training") or {}
    items = {
        "task": report.get("task"),
        "backbone": f"{report.get('backbone')} ({report.get('arch') or report.get('checkpoint') or ''})",
        "method": f"{report.get('method')} (merge: {report.get('merge', 'not yet')})",
        "parameters": params_text(params),
        "data": data_text(data),
        "training": f"best epoch {training.get('best_epoch')} of {training.get('epochs_run')}, "
        f"{training.get('seconds', 0):.0f} s on {training.get('device')}"
        if training
        else "not run",
        "deployable": report.get("deployable") or "none",
        "total time": f"{(report.get('timings') or {}).get('total', 0):.0f} s",
    }
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items.items()) + "</dl>"


def metrics_table(report: dict[str, Any]) -> str:
    metrics = report.get("metrics") or {}
    names = sorted({k for m in metrics.values() for k in m})
    return table(["form", *names], [[esc(form), *(esc(m.get(k, "")) for k in names)] for form, m in metrics.items()])


def parity_table(report: dict[str, Any]) -> str:
    """Each form's parity with the form it came from, in report.md's words (a failed check in red)."""
    rows = []
    for form, p in (report.get("parity") or {}).items():
        verified = {True: "yes", False: '<span class="no">NO</span>'}.get(p.get("verified"), "")
        agreement = agreement_text(p.get("agreement_of"), p.get("label_agreement", 0)) + agreements_text(p)
        bound = diff_text(p.get("bound"), "no bound (accuracy gate)")
        rows.append([esc(form), esc(diff_text(p.get("max_abs_diff"))), esc(bound), esc(agreement), verified])
    return table(["form", "max abs diff", "allowed", "agreement", "verified"], rows)


def latency_rows(report: dict[str, Any]) -> list[list[Any]]:
    """Per form: median and p90 ms, the interleaved ratio to PyTorch eager, bytes shipped, test metric."""
    latency, sizes = report.get("latency_ms") or {}, report.get("form_bytes") or {}
    versus = report.get("latency_vs_pytorch") or {}
    rows = []
    for form, v in latency.items():
        size = sizes.get(form, "")
        metric = form_metric(report, form)
        rows.append(
            [
                esc(form),
                esc(f"{v.get('median', 0):.2f}"),
                esc(f"{v.get('p90', 0):.2f}"),
                esc(versus_text(form, versus, latency)),
                esc(f"{size:,}" if isinstance(size, int) else size),
                esc("" if metric is None else metric),
            ]
        )
    return rows


def tradeoff_svg(report: dict[str, Any]) -> str:
    """The primary metric against batch-1 median latency, one labelled point per form."""
    points = [
        (form, float(v["median"]), float(metric))
        for form, v in (report.get("latency_ms") or {}).items()
        if isinstance(metric := form_metric(report, form), (int, float))
        and math.isfinite(metric)
        and math.isfinite(float(v.get("median", math.nan)))
    ]
    if not points:
        return '<p class="note">no form has both a latency and a test metric</p>'
    width, height, pad = 640, 320, 56
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    x0, x1 = 0.0, max(xs) * 1.15 or 1.0
    span = max(ys) - min(ys) or max(abs(max(ys)) * 0.01, 1e-3)  # equal values still get a visible range
    y0, y1 = min(ys) - 0.2 * span, max(ys) + 0.2 * span

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad), height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    marks: list[str] = []
    placed: list[tuple[float, float]] = []  # labels already drawn: a close one is pushed down, not drawn over them
    for form, x, y in sorted(points, key=lambda p: (p[1], -p[2])):
        cx, cy = at(x, y)
        ty = cy - 8
        while any(abs(cx - px) < 90 and abs(ty - py) < 13 for px, py in placed):
            ty += 14
        placed.append((cx, ty))
        marks.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="#1f77b4"/>'
            f'<text x="{cx + 8:.1f}" y="{ty:.1f}" font-size="12">{esc(form)}</text>'
        )
    primary = esc(report.get("primary_metric") or "accuracy")
    axes = (
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>'
        f'<text x="{width / 2}" y="{height - 14}" text-anchor="middle">'
        f"batch-1 median latency (ms), 0 to {x1:.3g}</text>"
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">test {primary}'
        f" ({y0:.4g} to {y1:.4g})</text>"
    )
    return (
        f'<svg id="tradeoff" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="test {primary} against latency per form">{axes}{"".join(marks)}</svg>'
    )


#: A sample's prompt is shown by its last this many characters.
PROMPT_CHARS = 240


def samples_table(report: dict[str, Any]) -> str:
    """Each sampled input (a test prompt) and what every form made of it (``samples.<form>``)."""
    samples = report.get("samples") or {}
    forms = list(samples)
    count = max(len(rows) for rows in samples.values())
    rows = []
    for index in range(count):
        entries = [samples[form][index] if index < len(samples[form]) else {} for form in forms]
        prompt = str(next((e.get("prompt") for e in entries if e.get("prompt") is not None), ""))
        shown = prompt if len(prompt) <= PROMPT_CHARS else "…" + prompt[-PROMPT_CHARS:]
        rows.append([esc(shown), *(f"<b>{esc(e.get('continuation', ''))}</b>" for e in entries)])
    return table(["prompt", *forms], rows)


def render_html(run_dir: Path, report: dict[str, Any]) -> str:
    """The whole page."""
    sections = [f"<h1>Run report: {esc(report.get('name', ''))}</h1>", summary(report)]
    if (run_dir / CURVE_PNG).is_file():
        sections += ["<h2>Training curve</h2>", embedded_png(run_dir, CURVE_PNG, "training curve")]
    if report.get("metrics"):
        sections += ["<h2>Test metrics</h2>", metrics_table(report)]
    if report.get("parity"):
        sections += ["<h2>Parity</h2>", parity_table(report)]
    if report.get("latency_ms"):
        header = ["form", "median ms", "p90 ms", "vs PyTorch (range)", "bytes", f"test {report.get('primary_metric')}"]
        sections += ["<h2>CPU latency (batch 1) and size</h2>", table(header, latency_rows(report))]
        sections += [f"<h2>{esc(report.get('primary_metric'))} against latency</h2>", tradeoff_svg(report)]
    if report.get("samples"):
        sections += ["<h2>Sample generations (greedy, through each file)</h2>", samples_table(report)]
    for name, path in (report.get("pictures") or {}).items():
        sections += [f"<h2>{esc(name)}</h2>", f"<figure>{embedded_png(run_dir, path, name)}</figure>"]
    notes = [*(report.get("export_notes") or []), *(report.get("notes") or [])]
    if notes:
        sections += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"]
    title = esc(f"adapt run report: {report.get('name', '')}")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{''.join(sections)}</body></html>\n"
    )


def unrendered(error: Exception) -> str:
    """The page written where the report could not be drawn: what went wrong, and where the figures are."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>adapt run report</title></head><body>'
        f"<p>report.html could not be drawn ({esc(type(error).__name__)}: {esc(error)}); report.md and "
        "report.json beside it hold every figure. Please report this as a bug.</p></body></html>\n"
    )
