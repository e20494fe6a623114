"""The layout's rules (DESIGN.md, "Layout"), checked on the source, statically: core/
never imports the plugins or the exporters (built-ins reach the host through entry
points, like everyone's); a family package under plugins/ imports core and its own
modules, never another family's; an exporter never imports a plugin; and no built-in
task or architecture is named in the code of core/ or exporters/ (docstrings and
comments may explain; code may not decide by a name)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Sequence

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


FAMILIES = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())


def test_every_built_in_plugin_lives_in_a_family_package():
    loose = [p.name for p in files("plugins") if p.name != "__init__.py"]
    assert not loose, f"plugins/ holds modules outside a family package: {loose}"
    assert {"classification", "detection", "embeddings", "methods", "sources", "timm", "transformers"} <= set(FAMILIES)


@pytest.mark.parametrize("path", [p for family in FAMILIES for p in sorted((ROOT / "plugins" / family).glob("*.py"))], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_family_imports_no_other_family(path):
    family = path.parent.name
    bad = [name for name in imports(path) if name.startswith("adapt.plugins.") and name.split(".")[2] != family]
    assert not bad, f"plugins/{family}/{path.name} imports another family's code: {bad}"


#: The built-in tasks' names and the architectures (and their layer classes) core once decided by.
ARCHITECTURES = ("bert", "roberta", "gpt2", "gpt-2", "llama", "qwen", "mobilenet", "efficientnet", "conv1d", "conv2dsame", "model_types")


def built_in_task_names() -> list[str]:
    from adapt.host import make_host

    return make_host(autoload=False).tasks.names()


def named_in_code(path: Path, names: Sequence[str]) -> list[str]:
    """Each string literal (not a docstring) and identifier of ``path`` that holds one of ``names``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        else:
            continue
        found += [f"line {node.lineno}: {name}" for name in names if name in text.lower()]
    return found


@pytest.mark.parametrize("path", [p for p in files("core") + files("exporters") if p.name != "moved.py"], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_and_the_exporters_name_no_built_in_task_or_architecture(path):
    """core/moved.py maps the old module names to the family packages, and is exempt."""
    found = named_in_code(path, [*built_in_task_names(), *ARCHITECTURES])
    assert not found, f"{path.parent.name}/{path.name} names {found}: a task or backbone member should decide instead"


def test_the_names_check_finds_a_name():
    assert named_in_code(ROOT / "tests" / "test_architecture.py", ["gpt-2"])  # ARCHITECTURES above holds it


@pytest.mark.parametrize("path", files("exporters"), ids=lambda p: p.name)
def test_an_exporter_imports_no_plugin(path):
    bad = [name for name in imports(path) if name.startswith("adapt.plugins")]
    assert not bad, f"exporters/{path.name} imports {bad}"


def test_every_file_name_adapt_writes_is_in_the_run_layout():
    """--overwrite deletes exactly RUN_LAYOUT: a name written elsewhere but missing
    there would survive an overwrite as if it were the user's (or the reverse)."""
    from adapt import checkpoint, engine, export_stage, pipeline, report, report_html, rundir
    from adapt.plugins.trackers.trackers import TENSORBOARD_DIR  # the built-in tracker's folder

    written = {
        pipeline.LABELS_FILE, pipeline.MERGED_DIR, engine.ADAPTER_DIR, engine.METRICS_FILE, checkpoint.CHECKPOINT.parts[0],
        export_stage.EXPORT_DIR, export_stage.REJECTED_DIR, report.REPORT_JSON, report.REPORT_MD, report.CURVE_PNG,
        report_html.REPORT_HTML, pipeline.PICTURES_DIR, TENSORBOARD_DIR,
        rundir.CONFIG_FILE, rundir.LOCK_FILE, rundir.MARKER_FILE,
    }
    assert written == set(rundir.RUN_LAYOUT)
