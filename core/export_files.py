"""The export card's "Files" section: every file in export/, what it is and how to run it,
so a person handed the folder knows which file goes where without reading adapt's docs."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Sequence

#: What a file adapt always writes is, and how it is used, by its name in export/.
KNOWN = {
    "predict.py": (
        "the standalone predictor: numpy, onnxruntime, Pillow and tokenizers, no PyTorch or adapt",
        "`python predict.py MODEL INPUT...` (`--help` lists its options)",
    ),
    "preprocess.json": (
        "labels, how raw inputs become the graph's inputs, and what follows the graph",
        "read by predict.py",
    ),
    "tokenizer.json": ("the tokenizer (Hugging Face tokenizers)", "read by predict.py"),
    "README.md": ("this card", ""),
    "gallery.npy": ("the embeddings predict.py searches (the gallery)", "read by predict.py, beside gallery.json"),
    "gallery.json": ("what each gallery row is (its document or identity)", "read by predict.py"),
}


def _form_row(name: str, form: str, report: dict[str, Any]) -> list[str]:
    from adapt.report import form_metric

    primary = str(report.get("primary_metric") or "accuracy")
    metric = form_metric(report, form)
    latency = (report.get("latency_ms") or {}).get(form, {}).get("median")
    facts = [f"form `{form}`"]
    if isinstance(metric, (int, float)):
        facts.append(f"test {primary} {metric:.4g}")
    if isinstance(latency, (int, float)):
        facts.append(f"{latency:.2f} ms at batch 1 here")
    if str(report.get("deployable", "")).endswith(f"/{name}"):
        facts.append("**the one to deploy**")
    if name.endswith(".ort"):
        return [
            name,
            "ONNX Runtime Mobile's format: " + ", ".join(facts),
            "`onnxruntime.InferenceSession` in an ONNX Runtime Mobile app (Android, iOS), or `python predict.py`",
        ]
    return [
        name,
        "ONNX graph: " + ", ".join(facts),
        f"`python predict.py {name} INPUT...` or `onnxruntime.InferenceSession`",
    ]


def _row(name: str, report: dict[str, Any], forms: dict[str, str]) -> list[str]:
    path = PurePosixPath(name)
    if name in forms:
        return _form_row(name, forms[name], report)
    if name in KNOWN:
        return [name, *KNOWN[name]]
    if name.endswith(".data"):
        return [name, f"the weights of {name[:-5]} (ONNX external data, past 2 GB)", f"keep it beside {path.name[:-5]}"]
    if path.parts[0] == "mobile" and name.endswith(".config"):
        return [
            name,
            "the operators the .ort file uses",
            "`build.sh --include_ops_by_config` for a reduced ONNX Runtime",
        ]
    return [name, "ships with the model (written by a plugin)", ""]


def export_file_lines(report: dict[str, Any], files: Sequence[str]) -> list[str]:
    """A markdown table of ``files`` (paths inside export/); web/ as one row."""
    forms = {
        str(path).removeprefix("export/"): form
        for form, path in (report.get("forms") or {}).items()
        if str(path).startswith("export/")
    }
    rows, web = [], False
    for name in sorted(files):
        if name.startswith("web/"):
            web = True
            continue
        rows.append(_row(name, report, forms))
    if web:
        rows.append(
            [
                "web/",
                "a page that runs the model in a browser (onnxruntime-web, vendored)",
                "serve export/ (`python -m http.server`) and open `/web/`; `adapt web-check` checks it",
            ]
        )
    lines = ["| file | what it is | how to use it |", "|---|---|---|"]
    return lines + [f"| `{name}` | {what} | {how} |" for name, what, how in rows]
