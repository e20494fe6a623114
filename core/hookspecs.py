"""The hooks a plugin can implement: the whole plugin contract in one page.

Registration hooks hand the plugin a ``register`` callback; the plugin calls it
once per object it provides. Lifecycle hooks let a logger or tracker follow a
run. pluggy passes only the arguments an implementation names, so a hook may
gain keyword arguments later without breaking plugins written against today's
signature. docs/plugins.md documents each hook; a test keeps the two in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import click

    from adapt.interfaces import Backbone, DataSource, Exporter, Method, Task

PROJECT = "adapt"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def adapt_register_backbones(register: Callable[[Backbone], None]) -> None:
    """Register backbones: ``register(MyBackbone())`` once for each."""


@hookspec
def adapt_register_methods(register: Callable[[Method], None]) -> None:
    """Register adaptation methods (freeze, LoRA, adapters, ...)."""


@hookspec
def adapt_register_exporters(register: Callable[[Exporter], None]) -> None:
    """Register exporters that turn a merged model into a deployable file."""


@hookspec
def adapt_register_data_sources(register: Callable[[DataSource], None]) -> None:
    """Register data sources that read examples for a task."""


@hookspec
def adapt_register_tasks(register: Callable[[Task], None]) -> None:
    """Register tasks: label encoding, loss, metrics and predictions."""


@hookspec
def adapt_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``adapt`` command line (``@cli.command()``)."""


@hookspec
def adapt_run_started(run_dir: Path, config: dict[str, Any]) -> None:
    """Called once a run directory exists and the resolved config is saved."""


@hookspec
def adapt_run_finished(run_dir: Path, report: dict[str, Any], error: str | None) -> None:
    """Called once when a run started with adapt_run_started ends: with the report
    written so far, and ``error`` None on success or the message it failed with."""


@hookspec
def adapt_epoch_ended(run_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each epoch's evaluation with that epoch's metrics."""


@hookspec
def adapt_artifact_exported(run_dir: Path, path: Path, kind: str) -> None:
    """Called once per file written for deployment, after it is in place: each adapter
    file (``kind`` ``adapter``) and every file of the export folder: a model file with
    its exporter's name (each form, the .ort too), ``preprocessing`` (preprocess.json,
    tokenizer.json), ``predictor`` (predict.py), ``card`` (README.md), ``mobile-config``,
    ``gallery`` or ``export``. An exception here is a warning, not a failed run."""
