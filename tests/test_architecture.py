"""The one-way import rules of docs/DESIGN (the layout): core/ never imports the
plugins or the exporters (built-ins reach the host through entry points, like
everyone's); a plugin never imports another plugin (its own private ``_helpers``
aside); an exporter never imports a plugin. Checked on the source, statically."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", files("core"), ids=lambda p: p.name)
def test_core_imports_no_plugin_and_no_exporter(path):
    bad = [name for name in imports(path) if name.startswith(("adapt.plugins", "adapt.exporters"))]
    assert not bad, f"core/{path.name} imports {bad}"


@pytest.mark.parametrize("path", [p for p in files("plugins") if not p.name.startswith("_")], ids=lambda p: p.name)
def test_a_plugin_imports_no_other_plugin(path):
    others = {p.stem for p in files("plugins") if not p.name.startswith("_")} - {path.stem}
    bad = [name for name in imports(path) if name.startswith("adapt.plugins.") and name.split(".")[2] in others]
    assert not bad, f"plugins/{path.name} imports another plugin: {bad}"


@pytest.mark.parametrize("path", files("exporters"), ids=lambda p: p.name)
def test_an_exporter_imports_no_plugin(path):
    bad = [name for name in imports(path) if name.startswith("adapt.plugins")]
    assert not bad, f"exporters/{path.name} imports {bad}"


def test_every_file_name_adapt_writes_is_in_the_run_layout():
    """--overwrite deletes exactly RUN_LAYOUT: a name written elsewhere but missing
    there would survive an overwrite as if it were the user's (or the reverse)."""
    from adapt import checkpoint, engine, export_stage, pipeline, report, rundir

    written = {
        pipeline.LABELS_FILE, pipeline.MERGED_DIR, engine.ADAPTER_DIR, engine.METRICS_FILE, checkpoint.CHECKPOINT.parts[0],
        export_stage.EXPORT_DIR, export_stage.REJECTED_DIR, report.REPORT_JSON, report.REPORT_MD, report.CURVE_PNG,
        rundir.CONFIG_FILE, rundir.LOCK_FILE, rundir.MARKER_FILE,
    }
    assert written == set(rundir.RUN_LAYOUT)
