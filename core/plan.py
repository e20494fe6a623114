"""A config checked against the installed plugins: what a run will use.

This is the second half of validation (after :mod:`adapt.config`): every
plugin name exists, the backbone and the data source support the task, and
each plugin's ``options`` pass that plugin's own schema. Still nothing heavy
has been imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from adapt.config import RunConfig, format_errors
from adapt.errors import AdaptError, ConfigError
from adapt.host import Host
from adapt.interfaces import Backbone, DataRequest, DataSource, Exporter, Method, Task, declare
from adapt.paths import resolve_path


@dataclass
class Plan:
    """The config plus the plugin objects and validated options it names."""

    config: RunConfig
    task: Task
    backbone: Backbone
    method: Method
    source: DataSource
    exporters: list[Exporter]
    backbone_options: Any
    method_options: Any
    data_options: Any
    exporter_options: dict[str, Any]
    #: Who provides each plugin object the run uses, for messages that blame one:
    #: {"method": "plugin 'lora' (package adapt-edge 0.1.0)", ...}.
    owners: dict[str, str] = field(default_factory=dict)

    def data_request(self) -> DataRequest:
        data = self.config.data
        path = resolve_path(data.path, what="data.path") if data.path else None
        items = resolve_path(data.items, what="data.items") if data.items else None
        return DataRequest(
            task=self.config.task,
            path=path,
            text_column=data.text_column,
            label_column=data.label_column,
            prompt_column=data.prompt_column,
            completion_column=data.completion_column,
            query_column=data.query_column,
            positive_column=data.positive_column,
            items=items,
            options=self.data_options,
            fields=tuple(self.task.fields),
        )


def _lookup(registry: Any, name: str, key: str) -> Any:
    try:
        return registry.get(name)
    except AdaptError as exc:
        raise ConfigError(f"{key}: {exc.message}", hint=exc.hint) from None


def validate_options(plugin: Any, kind: str, options: dict[str, Any], key: str) -> Any:
    """Validate ``options`` with the plugin's ``options_schema`` (a pydantic model, or None)."""
    schema: type[BaseModel] | None = plugin.options_schema
    if schema is None:
        if options:
            raise ConfigError(
                f"`{key}`: {kind} {plugin.name!r} takes no options, got {options!r}", hint=f"remove `{key}`"
            )
        return None
    try:
        return schema.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(
            format_errors(exc, schema, prefix=key),
            hint=f"see `adapt plugins --verbose` or the docs of {kind} {plugin.name!r}",
        ) from None


def _check_task(plugin: Any, kind: str, key: str, task: str) -> None:
    if task not in plugin.tasks:
        raise ConfigError(
            f"`{key}`: {kind} {plugin.name!r} does not support task {task!r}; it supports: {', '.join(plugin.tasks)}",
            hint=f"pick another {kind} (`adapt plugins` lists them) or another task",
        )


def _check_source(source: DataSource, task: Task, name: str) -> None:
    """A data source serves a task that gives it every field the task needs (both declare
    ``fields``); one of them without fields is matched the older way, by the source's ``tasks``."""
    if not (task.fields and source.fields):
        _check_task(source, "data source", "data.source", name)
        return
    missing = [f for f in task.fields if f not in source.fields]
    if missing:
        raise ConfigError(
            f"`data.source`: data source {source.name!r} gives the fields {', '.join(source.fields)}; task {name!r} "
            f"needs {', '.join(task.fields)} ({', '.join(missing)} missing)",
            hint="pick a data source that gives those fields (`adapt plugins --verbose` lists each source's), or "
            "another task",
        )


def model_task(backbone: Any, task: Any, name: str) -> str:
    """The task a backbone builds the model for: the task's own where the backbone lists
    it (recommendation's ``item-table``), else the one the task names in ``model_task``
    (recommendation's text item tower is a text-embedding model)."""
    return name if name in backbone.tasks or task.model_task is None else task.model_task


def make_plan(config: RunConfig, host: Host) -> Plan:
    """Resolve every plugin a config names, or raise one ConfigError saying which key is wrong."""
    task = _lookup(host.tasks, config.task, "task")
    head = validate_options(task, "task", config.head, "head")  # a task with options: its head's
    if head is not None:
        task = declare(task.configure(head), Task)
    backbone = _lookup(host.backbones, config.backbone.name, "backbone.name")
    _check_task(backbone, "backbone", "backbone.name", model_task(backbone, task, config.task))
    method = _lookup(host.methods, config.method.name, "method.name")
    source = _lookup(host.data_sources, config.data.source, "data.source")
    _check_source(source, task, config.task)
    exporters = [_lookup(host.exporters, name, f"export.formats[{i}]") for i, name in enumerate(config.export.formats)]
    return Plan(
        config=config,
        task=task,
        backbone=backbone,
        method=method,
        source=source,
        exporters=exporters,
        backbone_options=validate_options(backbone, "backbone", config.backbone.options, "backbone.options"),
        method_options=validate_options(method, "method", config.method.options, "method.options"),
        data_options=validate_options(source, "data source", config.data.options, "data.options"),
        exporter_options=_exporter_options(exporters, config.export.options),
        owners={
            "backbone": host.describe(host.backbones.owner(backbone.name)),
            "method": host.describe(host.methods.owner(method.name)),
            **{f"exporter {e.name}": host.describe(host.exporters.owner(e.name)) for e in exporters},
        },
    )


def _exporter_options(exporters: list[Any], options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    names = {e.name for e in exporters}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(
            f"`export.options` names {unknown[0]!r}, which is not in export.formats "
            f"({', '.join(sorted(names)) or 'empty'})",
            hint="add it to export.formats or remove its options",
        )
    return {
        e.name: validate_options(e, "exporter", options.get(e.name, {}), f"export.options.{e.name}") for e in exporters
    }
