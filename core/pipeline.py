"""``adapt run``: the stages of a run, in order, each writing into the run directory.

Stages so far: load (data and model) and adapt (the method, with trainable and
total parameter counts in the report). Training, merge and export join here as
they are built; each stage only reads what earlier stages wrote, so a stage can
also run on its own against a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click

from adapt.data import Splits, load_splits
from adapt.host import Host
from adapt.interfaces import BuiltModel
from adapt.plan import Plan
from adapt.rundir import RunDir

LABELS_FILE = "labels.json"
REPORT_FILE = "report.json"


def count_parameters(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def summarise(names: Sequence[str]) -> str:
    """Parameter names grouped by their module: ``model.classifier (weight, bias)``."""
    modules: dict[str, list[str]] = {}
    for name in names:
        module, _, leaf = name.rpartition(".")
        modules.setdefault(module, []).append(leaf)
    return ", ".join(f"{m} ({', '.join(leaves)})" for m, leaves in modules.items())


def load_data(plan: Plan) -> Splits:
    return load_splits(plan.source, plan.data_request(), plan.task, plan.config.data.split)


def build_model(plan: Plan, num_labels: int) -> BuiltModel:
    cfg = plan.config.backbone
    return plan.backbone.build(plan.config.task, num_labels, checkpoint=cfg.checkpoint, arch=cfg.arch, options=plan.backbone_options)


def adapt_model(plan: Plan, built: BuiltModel) -> list[str]:
    targets = plan.backbone.default_targets(plan.method.name)
    return plan.method.apply(built, plan.method_options, targets)


def run_pipeline(plan: Plan, host: Host, *, overwrite: bool = False) -> Path:
    """Run every available stage of ``plan``; return the run directory."""
    config = plan.config
    run = RunDir.create(config.run_dir(), overwrite=overwrite)
    resolved = config.model_dump(mode="json")
    run.write_config(resolved)
    host.call("adapt_run_started", run_dir=run.path, config=resolved)
    click.echo(f"run directory: {run.path}")

    splits = load_data(plan)
    run.write_json(LABELS_FILE, splits.label_names)
    sizes = splits.sizes()
    click.echo(f"load: {config.data.source} -> " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + f"; {len(splits.label_names)} labels")

    built = build_model(plan, len(splits.label_names))
    if built.new_parameters:
        click.echo(f"load: not in the checkpoint, so trained under every method: {summarise(built.new_parameters)}")
    adapt_model(plan, built)
    params = count_parameters(built.model)
    click.echo(f"adapt: {config.method.name} on {config.backbone.name}: {params['trainable']:,} of {params['total']:,} parameters trainable ({params['trainable'] / max(params['total'], 1):.2%})")

    report = {
        "task": config.task,
        "backbone": config.backbone.name,
        "method": config.method.name,
        "params": params,
        "new_parameters": list(built.new_parameters),
        "data": {"source": config.data.source, "sizes": sizes, "labels": splits.label_names},
    }
    run.write_json(REPORT_FILE, report)
    click.echo(f"report: {run.path / REPORT_FILE}")
    return run.path
