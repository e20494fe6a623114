"""The run config: schema, YAML loading, ``--set`` overrides and readable errors.

Validation happens in two steps, both before anything heavy is imported:
:func:`load_config` checks the shape (keys, types, ranges) here, and
:func:`adapt.plan.make_plan` checks the names against the installed plugins and
each plugin's own ``options`` schema. Every error names the key path, the value
given and what is allowed.
"""

from __future__ import annotations

import codecs
import difflib
import reprlib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, model_validator

from adapt.errors import ConfigError

STARTER_CONFIG = "starter.yaml"
#: A config expands to at most this many values (keys, items, scalars) and this
#: depth: YAML aliases can make a few hundred bytes expand to billions ("billion laughs").
MAX_VALUES = 20_000
MAX_DEPTH = 40


def _not_a_bool(value: Any) -> Any:
    # pydantic's lax mode reads `epochs: true` as 1; a number key wants a number.
    if isinstance(value, bool):
        raise ValueError("a number is required, not true/false")
    return value


#: Integers and floats of the config: true/false are refused, and so are .inf and .nan (allow_inf_nan below).
Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool)]


class _Section(BaseModel):
    # Unknown keys are errors, never silently ignored: a typo must not change a run.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BackboneConfig(_Section):
    name: str = Field(description="a registered backbone plugin")
    checkpoint: str | None = Field(None, description="hub id, local folder or file, or pkg:<module>/<path>")
    arch: str | None = Field(
        None, description="architecture name, for backbones that build several (a timm model name)"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the backbone's own schema")


class MethodConfig(_Section):
    name: str = Field("freeze", description="a registered method plugin")
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the method's own schema")


class SplitConfig(_Section):
    val: Float = Field(0.1, ge=0, lt=1, description="fraction of the data held out for validation")
    test: Float = Field(0.1, ge=0, lt=1, description="fraction of the data held out for testing")
    seed: Int = Field(0, description="seed of the shuffle before splitting")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(
                f"val + test must be below 1 so that some data is left to train on (got {self.val} + {self.test})"
            )
        return self


class DataConfig(_Section):
    source: str = Field(description="a registered data-source plugin")
    path: str | None = Field(None, description="file or folder, or pkg:<module>/<path>; some sources need none")
    text_column: str = Field("text", description="column holding the text, for table-like sources")
    label_column: str = Field("label", description="column holding the label, for table-like sources")
    prompt_column: str = Field(
        "prompt", description="prompt/completion data: column holding the prompt (the loss is on the completion only)"
    )
    completion_column: str = Field(
        "completion", description="prompt/completion data: column holding the completion of the prompt"
    )
    query_column: str = Field("query", description="(query, positive) pairs: column holding the query")
    positive_column: str = Field(
        "positive",
        description="(query, positive) pairs: column holding the positive (the document the query should find)",
    )
    items: str | None = Field(
        None,
        description="two-tower recommenders: CSV or jsonl file of the items' text (`item`, `text`), or "
        "pkg:<module>/<path>",
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="used where the data has no split of its own")
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the data source's own schema")


Switch = StrictBool | Literal["auto"]


class FastConfig(_Section):
    """The training fast path (``adapt.fast_path``): speed-ups that keep the maths."""

    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="attention kernel while training transformers (auto: sdpa); the export always uses eager"
    )
    compile: Switch = Field("auto", description="torch.compile the model for training (auto: on CUDA only)")
    cuda_graphs: Switch = Field(
        "auto", description="with compile on CUDA, record CUDA graphs (reduce-overhead) (auto: yes)"
    )
    channels_last: Switch = Field("auto", description="NHWC memory layout for convolutional models (auto: yes)")
    cls_last_layer: Switch = Field(
        "auto",
        description="where the backbone offers it (encoder classifiers whose head reads the first token): compute the "
        "last layer for that position only (auto: on a CPU)",
    )
    pin_memory: Switch = Field(
        "auto",
        description="collate batches into pinned host memory so the copy to the GPU does not stall the host (auto: on "
        "CUDA)",
    )


class TrainConfig(_Section):
    epochs: Int = Field(3, ge=1, description="passes over the training data")
    batch_size: Int = Field(16, ge=1, description="examples per step on each process")
    lr: Float = Field(5.0e-4, gt=0, description="peak learning rate")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: Int = 0
    grad_accum: Int = Field(1, ge=1, description="batches per optimiser step")
    max_grad_norm: Float = Field(1.0, ge=0, description="gradient clipping norm; 0 turns it off")
    warmup: Float = Field(0.06, ge=0, lt=1, description="fraction of the steps with a rising learning rate")
    weight_decay: Float = Field(0.01, ge=0)
    patience: Int = Field(
        0, ge=0, description="stop after this many epochs without a better validation metric; 0 never stops early"
    )
    checkpoint_every: Int = Field(
        50,
        ge=0,
        description="optimiser steps between checkpoints (one is always written at each epoch end); 0: epoch ends only",
    )
    eval_batch_size: Int | None = Field(None, ge=1, description="batch size for evaluation; default twice batch_size")
    workers: Int = Field(0, ge=0, description="data-loading worker processes (batches are collated in them)")
    group_by_length: StrictBool = Field(
        False, description="batch examples of similar length together (less padding: faster on texts of uneven length)"
    )
    augment: StrictBool | list[Literal["flip", "crop"]] = Field(
        True,
        description="the task's training augmentation where it has one: true (all its kinds), false, or a list of "
        "kinds (a detector's: flip, crop; leave out flip for digits or text, which a mirror changes); "
        "evaluation never sees it",
    )
    fast: FastConfig = Field(
        default_factory=FastConfig, description="the training fast path; every switch keeps the maths"
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun: ddp (every process holds the whole model and averages gradients) or fsdp (the "
        "frozen base sharded across the processes with FSDP2's fully_shard, the trainable parameters whole on each, "
        "their gradients averaged: for a base too big for one device); one process ignores it",
    )
    gradient_checkpointing: StrictBool = Field(
        False,
        description="recompute each block's activations in the backward pass instead of keeping them: less memory "
        "(a large decoder's long sequences), about a third more compute; the same loss. Where the backbone offers it",
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="trackers that receive the run's config, each epoch's metrics and the final figures: "
        "tensorboard (<run>/tensorboard/), mlflow (MLFLOW_TRACKING_URI); pip install 'adapt-edge[tracking]'",
    )
    packing: StrictBool = Field(
        False,
        description="join each training batch's token sequences into as few rows as fit the sequence length, each "
        "attending only to itself (less padding, the same loss); where the task offers it (Task.pack: decoder LMs)",
    )
    cache_features: StrictBool = Field(
        True,
        description="linear probes (only the head trains): compute the frozen backbone once per example and train the "
        "head on its outputs; the frozen part runs in eval mode either way",
    )

    @property
    def eval_batch(self) -> int:
        """The batch size of every evaluation (validation, test, export checks): the one rule."""
        return self.eval_batch_size or 2 * self.batch_size


class QatConfig(_Section):
    epochs: Int = Field(2, ge=1, description="epochs of quantisation-aware fine-tuning over the training split")
    lr: Float = Field(1e-5, gt=0, description="its learning rate (AdamW, every weight of the merged model trains)")
    batch_size: Int | None = Field(None, ge=1, description="its batch size (default: train.batch_size)")


class ExportConfig(_Section):
    formats: list[str] = Field(
        default_factory=lambda: ["onnx"], description="registered exporters to run after the merge"
    )
    quantize: Literal["int8", "int4", "all", "none"] = Field(
        "int8",
        description="int8 (dynamic for transformers, static for CNNs), int4 (weight-only, for MatMul weights: "
        "transformers), all (both), or none",
    )
    mobile: StrictBool = True
    prefer: Literal["size", "speed"] = Field(
        "size",
        description="which passing file to deploy: the smallest quantised one, or the fastest at batch 1 (fp32 "
        "included)",
    )
    target: Literal["auto", "x86", "x86-vnni", "arm"] = Field(
        "auto",
        description="the CPU the export is for: auto (this machine: its int8 arithmetic is probed), x86 (any x86 CPU: "
        "7-bit int8 weights, which cannot saturate on CPUs without VNNI), x86-vnni (8-bit weights) or "
        "arm; int8 formats are timed on the exporting machine when it is of that family",
    )
    max_accuracy_drop: Float = Field(
        0.01, ge=0, le=1, description="largest accuracy loss a quantised model may have and still be recommended"
    )
    max_perplexity_increase: Float = Field(
        0.05,
        ge=0,
        description="a lower-is-better primary metric (perplexity): largest relative increase on the validation split "
        "a quantised model may have and still be recommended",
    )
    parity_tolerance: Float = Field(
        1e-3, gt=0, description="largest max-abs logit difference an exact (fp32) export may have"
    )
    latency_runs: Int = Field(30, ge=1, description="timed runs per form for the latency figures")
    latency_batch: Int = Field(1, ge=1, description="a second batch size to time every form at (1: batch 1 only)")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options per exporter, e.g. {onnx: {opset: 17}}"
    )
    qat: QatConfig | None = Field(
        None,
        description="static int8: quantisation-aware fine-tuning of the merged model as a remedy when post-training "
        "int8 fails the gate ({epochs, lr}); off when absent",
    )


class MergeConfig(_Section):
    tolerance: Float = Field(
        1e-4,
        gt=0,
        description="largest max abs logit difference of the merged model from the adapted one, over max(1, largest "
        "logit); beyond it (or with NaN/Inf) the run fails",
    )


class RunConfig(_Section):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run name; the run directory is <output_dir>/<name>"
    )
    task: str = Field(description="a registered task (`adapt plugins` lists them)")
    backbone: BackboneConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig
    head: dict[str, Any] = Field(
        default_factory=dict,
        description="the task's head options, for tasks that have them (the embedding tasks: dim, loss, margin, "
        "scale, temperature)",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    output_dir: str = "runs"

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def starter_text() -> str:
    """The commented starter config that ``adapt init`` writes and ``adapt run`` uses by default."""
    return resources.files("adapt").joinpath(STARTER_CONFIG).read_text(encoding="utf-8")


#: Byte-order marks of encodings a config is sometimes saved in by mistake (longest first).
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a config file into a dict, with the line and column of any syntax error."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path}", hint="check the path, or run `adapt init` to write a starter config"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return parse_yaml(decode_config(raw, str(path)), str(path))


def decode_config(raw: bytes, origin: str) -> str:
    """The text of a config file, which must be UTF-8 (a UTF-8 byte-order mark is fine)."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise ConfigError(
                f"{origin} is encoded as {encoding} (it starts with a {encoding} byte-order mark); a config must be "
                "UTF-8",
                hint="save it as UTF-8 (in most editors: Save As, encoding UTF-8)",
            )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{origin} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} cannot be decoded",
            hint="save it as UTF-8",
        ) from None


class ConfigLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key `{key_node.value}` is given twice, at line {seen[key]} and at line {line}",
                        key_node.start_mark,
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML with :class:`ConfigLoader`, then check its expanded size."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader


def check_size(data: Any, origin: str) -> None:
    """Refuse data that expands beyond :data:`MAX_VALUES` values or :data:`MAX_DEPTH` levels.
    Aliases are shared, not copied, by the YAML loader, so loading stays cheap; this
    walk stops at the limit, so a "billion laughs" config is refused in bounded time."""
    count, stack = 0, [(data, 0)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            what = (
                f"more than {MAX_VALUES:,} values (a run config has a few dozen)"
                if count > MAX_VALUES
                else f"more than {MAX_DEPTH} levels of nesting (a run config has four)"
            )
            raise ConfigError(
                f"{origin} expands to {what}",
                hint="remove YAML aliases (*name) that repeat large parts, and self-references",
            )
        if isinstance(item, dict):
            stack.extend((x, depth + 1) for pair in item.items() for x in pair)
        elif isinstance(item, list):
            stack.extend((x, depth + 1) for x in item)


def parse_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        twice = "given twice" in str(exc.problem)
        raise ConfigError(
            f"{origin} is not valid YAML{where}: {exc.problem}",
            hint="keep one of the two" if twice else "fix the syntax there (indentation, a missing colon or quote)",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML: {_short(str(exc))}") from None
    except RecursionError:
        raise ConfigError(
            f"{origin} is nested too deeply to read", hint="a run config has a few levels; remove the nesting"
        ) from None
    if data is None:
        raise ConfigError(f"{origin} is empty", hint="run `adapt init` to write a starter config")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of keys (task:, backbone:, ...), got a {type(data).__name__}")
    check_size(data, origin)
    return data


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 6
_REPR.maxlevel = 3


def _short(value: Any) -> str:
    """A value as it can appear in an error message: at most a line."""
    return _REPR.repr(value) if not isinstance(value, str) or len(value) > 80 else value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[a, b]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(
                f"--set {item!r} is not of the form key.path=value", hint="for example --set train.epochs=5"
            )
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item!r}: `{'.'.join(parts[: depth + 1])}` holds {child!r}, not a mapping of keys"
                )
            node = child
        node[parts[-1]] = value
    return data


def validate_config(data: dict[str, Any]) -> RunConfig:
    """Check the shape of a config dict; every problem found is listed in one ConfigError."""
    check_size(data, "the config")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, RunConfig), hint="see docs/config.md for every key") from None


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read ``path`` (or the built-in starter config when None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else parse_yaml(starter_text(), "the built-in default config")
    return validate_config(apply_overrides(data, list(overrides)))


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """Turn pydantic's errors into lines naming the key path, the value and what is allowed."""
    lines = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        path = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            line = f"unknown key `{path}`; allowed here: {', '.join(allowed)}"
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            if close:
                line += f" (did you mean `{close[0]}`?)"
        elif kind == "missing":
            line = f"missing key `{path}`" + _describe(model, loc)
        elif loc:
            line = f"`{path}` = {_REPR.repr(error['input'])}: {_lower_first(error['msg'])}"
        else:
            line = _lower_first(error["msg"])
        lines.append(line)
    return "invalid config:" + "".join(f"\n  - {line}" for line in lines)


def _field_model(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model found by following ``loc`` from ``model`` (None if it leaves the schema)."""
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    found = _field_model(model, loc)
    return sorted(found.model_fields) if found else []


def _describe(model: type[BaseModel], loc: list[str]) -> str:
    parent = _field_model(model, loc[:-1])
    field = parent.model_fields.get(loc[-1]) if parent else None
    return f" ({field.description})" if field is not None and field.description else ""


def _lower_first(text: str) -> str:
    text = text.removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
    return text[:1].lower() + text[1:]
