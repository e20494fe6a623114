"""The five things a plugin can provide, as small Protocols.

A plugin object only has to *look* like one of these (duck typing); it does not
inherit from anything. Heavy types (torch) appear only in annotations, so this
module imports nothing heavy.

Examples travel between data sources, tasks and backbones as plain dicts:

* text-classification:  ``{"text": str, "label": str}``
* token-classification: ``{"tokens": list[str], "tags": list[str]}``
* image-classification: ``{"image": numpy uint8 array (H, W) or (H, W, C), "label": str}``
* object-detection: ``{"image": path or array, "size": [w, h], "boxes": [[x1, y1, x2, y2], ...], "labels": [str, ...]}``

Before batching, the pipeline replaces label names by their index
(``label``: int, ``tags``: list[int]) using the run's saved label names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

Example = dict[str, Any]
Batch = dict[str, "torch.Tensor"]

SPLITS = ("train", "val", "test")
#: Label value for positions the loss and metrics skip (padding, later sub-words of a word).
IGNORE_INDEX = -100


@dataclass
class BuiltModel:
    """A model built by a backbone for one task, with what methods need to know about it.

    ``model(**inputs)`` returns the logits tensor: ``(batch, labels)`` for sequence
    and image classification, ``(batch, tokens, labels)`` for token classification.
    """

    model: torch.nn.Module
    task: str
    num_labels: int
    #: Module names of the task head (replaced or added for the data's labels).
    head: tuple[str, ...] = ()
    #: Parameter names the checkpoint did not provide. They stay trainable under
    #: every method, so a frozen backbone never carries a frozen random layer.
    new_parameters: tuple[str, ...] = ()
    #: Module names of the repeated blocks, input side first (for "train the last N blocks").
    blocks: tuple[str, ...] = ()
    #: Whatever the backbone needs again later (tokenizer, image transform, ...).
    preprocessor: Any = None
    #: Target families of this model: family name -> full module names
    #: (``{"attention-qv": ["model.bert.encoder.layer.0.attention.self.query", ...]}``).
    #: Methods adapt these by default (``Method.default_families``) and
    #: ``method.options.targets`` may name one. See adapt.families.
    families: dict[str, list[str]] = field(default_factory=dict)
    #: Where the pretrained weights came from: an absolute local path or a hub id
    #: (set by the host from ``backbone.checkpoint``; None without one). PEFT's
    #: adapter_config.json names it as ``base_model_name_or_path``.
    checkpoint: str | None = None


@dataclass(frozen=True)
class OnnxIO:
    """Names and dynamic axes of the exported graph's inputs and outputs."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


@dataclass
class MergeResult:
    """What a method's merge returns.

    ``folded`` is True when the method was folded into the backbone's own weights
    (the model has the backbone's architecture and parameter count); False when it
    cannot be folded exactly and stays inline as plain modules of the one model.
    """

    model: torch.nn.Module
    folded: bool
    note: str = ""
    #: None for an exact merge. A method whose merge is approximate by design sets the
    #: largest difference it promises, in the units of ``merge.tolerance`` (max abs
    #: logit difference over max(1, largest logit)); the gate then uses it and the
    #: report says the merge is approximate.
    tolerance: float | None = None


@dataclass
class Parity:
    """How closely one form of the model (merged, an exported file) reproduces another."""

    max_abs_diff: float
    label_agreement: float
    examples: int
    #: The reference's largest absolute logit (the scale a relative tolerance uses).
    scale: float = 0.0
    #: Which side holds NaN or Inf: "", "reference", "candidate" or "both".
    nonfinite: str = ""


@dataclass
class DataRequest:
    """What a data source is asked to read (built by the host from ``data:`` in the config)."""

    task: str
    path: Path | None
    text_column: str = "text"
    label_column: str = "label"
    #: text-generation: the columns of prompt/completion pairs (else ``text_column``, or a ``messages`` column).
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    #: text-embedding: the columns of (query, positive) pairs.
    query_column: str = "query"
    positive_column: str = "positive"
    #: recommendation: the file of item texts (``item``, ``text``), resolved like ``path``.
    items: Path | None = None
    options: Any = None
    #: Items the source left out (a file that is not valid text, a corrupt image), with why.
    skipped: list[str] = field(default_factory=list)

    def skip(self, item: str, reason: str) -> None:
        """Record an unreadable item that the source leaves out; the run's report counts them."""
        self.skipped.append(f"{item}: {reason}")


@runtime_checkable
class Task(Protocol):
    """A kind of prediction: how labels are found, the loss, metrics and predictions."""

    name: str
    #: The metric used to pick the best checkpoint and gate quantisation ("accuracy", "f1").
    primary_metric: str
    # Optional members (read with getattr, so older task plugins need not declare them):
    #: ``labelled = False``: examples carry no label (text-generation); ``label_names``
    #: returns [] and the model is built with ``num_labels`` 0.
    #: ``lower_is_better = True``: the primary metric improves downwards (perplexity).
    #: ``min_labels``: the fewest label names the training data must hold (default 2).
    #: ``augment(example, rng, kinds=...)``: a changed copy of a training example.
    #: ``graph_outputs(model) -> (module, names)``: export ``module`` (logits first, then
    #: the task's final outputs ``names``: object-detection's boxes after NMS).
    #: ``final_predictions(outputs, inputs)``: predictions from an exported file's outputs.
    #: ``agreement(reference, candidate) -> float`` and ``agreement_name``: how many of the
    #: reference's predictions the candidate reproduces (parity where equality means nothing).
    #: ``draw(examples, predictions, label_names, folder) -> {name: path}``: report pictures.
    #: ``example_scores(predictions, references, label_names) -> list[float]``: each
    #: example's share of the primary metric (their mean is it), so the int8 gate judges a
    #: drop paired over the examples with a bootstrap interval (adapt.paired).
    #: docs/plugins.md, "Task", says what each must do.

    def label_names(self, examples: Sequence[Example]) -> list[str]:
        """The sorted label names found in ``examples``; raises DataError on a malformed example."""

    def encode(self, example: Example, index: Mapping[str, int]) -> Example:
        """A copy of ``example`` with label names replaced by indices; DataError for an unseen label."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss; label ``-100`` is ignored."""

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[Any], list[Any]]:
        """Per-example predictions and references, dropping ignored (``-100``) positions."""

    def metrics(self, predictions: Sequence[Any], references: Sequence[Any], label_names: Sequence[str]) -> dict[str, float]:
        """Metrics over a whole split; always includes ``primary_metric``."""


@runtime_checkable
class Backbone(Protocol):
    """A pretrained network family that can be built for tasks and exported."""

    name: str
    tasks: tuple[str, ...]
    #: A pydantic model validating ``backbone.options``, or None when there are none.
    options_schema: type[BaseModel] | None

    def build(self, task: str, num_labels: int, *, checkpoint: str | None, arch: str | None, options: Any) -> BuiltModel:
        """Build the model for ``task`` with a head of ``num_labels`` outputs, loading ``checkpoint``."""

    def collator(self, built: BuiltModel, options: Any) -> Callable[[Sequence[Example]], Batch]:
        """A function turning encoded examples into a batch of tensors (``labels`` included)."""

    def example_inputs(self, built: BuiltModel, batch_size: int = 2) -> Batch:
        """Inputs that ``built.model(**inputs)`` accepts, for export and checks."""

    def onnx_io(self, built: BuiltModel) -> OnnxIO:
        """Input/output names (in forward order) and dynamic batch/sequence axes."""

    # Optional members (a backbone may leave them out):
    #   families: tuple[str, ...] -- the target families its models have (adapt.families)
    #   save_preprocessing(built, options, folder) -> dict -- writes what a device needs
    #       (tokenizer.json, ...) into ``folder`` and returns preprocess.json's content
    #       (``kind``: text | tokens | image, and its keys, see adapt.onnx_predict);
    #       without it the export has no predict.py and preprocess.json (the report says so)
    #   onnx_optimizer_options(built) -> dict -- DeriveContext.model_info for the exporter
    #   recommended_families: tuple[str, ...] -- the families a method that declares no
    #       ``default_families`` adapts (its targets unset); the run says so

    def default_targets(self, method: str) -> list[str]:
        """Optional, the older way: module names (or suffixes) a method adapts when the
        config names none. A backbone that fills ``BuiltModel.families`` (and lists
        their names in a ``families`` attribute) serves every method, a new one too."""


@runtime_checkable
class Method(Protocol):
    """A way of adapting a model with few trainable parameters, and of folding it back."""

    name: str
    options_schema: type[BaseModel] | None
    #: Optional: the target families this method adapts by default, e.g.
    #: ("attention-qv", "pointwise-conv"); the modules of those the model has
    #: arrive as ``default_targets``.
    default_families: tuple[str, ...]

    def apply(self, built: BuiltModel, options: Any, default_targets: Sequence[str]) -> list[str]:
        """Change ``built.model`` in place; return the names of the parameters left trainable."""

    def adapter_state(self, built: BuiltModel) -> dict[str, torch.Tensor]:
        """The tensors this method trained (the head included), to save as safetensors."""

    def load_adapter_state(self, built: BuiltModel, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`adapter_state` returned into a freshly applied model."""

    def merge(self, built: BuiltModel) -> MergeResult:
        """Fold the method into the backbone in fp32, or keep it inline and say so."""

    # Optional: adapter_config(built) -> dict, saved as adapter_config.json beside the
    # adapter weights (LoRA writes PEFT's format there).


@dataclass
class Form:
    """One file an exporter produced. ``exact``: must reproduce the merged model
    within the parity tolerance (not so for int8); ``runnable``: the exporter's
    ``load`` can run it here (a .ort file is for devices)."""

    name: str
    path: Path
    exact: bool = True
    runnable: bool = True


@dataclass
class Derived:
    """What an exporter's ``derive`` made, and the file it recommends."""

    deployable: Path
    forms: list[Form] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeriveContext:
    """What an exporter may use to make and judge further forms."""

    out_dir: Path
    #: The backbone's ``onnx_optimizer_options(built)``, e.g. {"model_type": "bert",
    #: "num_heads": 12, "hidden_size": 384} for ONNX Runtime's transformer optimiser;
    #: {"quantization": "dynamic"} where weight-only (dynamic) int8 suits the graph
    #: (transformers); empty for graphs it does not know.
    model_info: dict[str, Any]
    quantize: str
    mobile: bool
    #: The largest drop of ``score`` a quantised file may have and still be recommended.
    max_accuracy_drop: float
    #: Single-example model inputs from the training split, for calibration.
    calibration: list[dict[str, Any]]
    #: A file's score on the validation split, higher is better: the task's primary
    #: metric, or for a lower-is-better one (perplexity) its negative logarithm, so that
    #: ``max_accuracy_drop`` = log(1 + export.max_perplexity_increase) bounds the relative increase.
    score: Callable[[Path], float]
    #: Batch-1 CPU latency of a file: {"median", "p90", "threads"} in milliseconds.
    latency: Callable[[Path], dict[str, float]]
    options: Any = None
    #: What a deployed file should carry inside it (``adapt.labels``, ``adapt.task``,
    #: ``adapt.preprocess``: JSON strings), for formats that hold metadata.
    metadata: dict[str, str] = field(default_factory=dict)
    #: The device family the export is for (``export.target``): "x86", "arm", or "auto"
    #: (the machine exporting); a quantiser may measure formats on it where they match.
    target: str = "auto"
    #: ``export.prefer``: "size" deploys the smallest quantised file within the accuracy
    #: budget; "speed" the fastest file at batch 1 among those and the fp32 one.
    prefer: str = "size"
    #: ``export.qat``: fine-tunes a copy of the merged model with simulated int8 (fake
    #: quantisation of weights per channel and of activations) and writes it as an fp32
    #: ONNX file at the given path, for a static quantiser to quantise; returns what it
    #: did ({"epochs", "lr", "seconds", ...}). None where export.qat is not set.
    qat: Callable[[Path], dict[str, Any]] | None = None
    #: ``judge(candidate, reference)``: the candidate file's validation score and its drop
    #: against the reference file, judged paired over the same examples with a bootstrap
    #: interval (adapt.paired): {"val_score", "val_drop", "drop_interval", "examples",
    #: "verdict": passed | rejected | undecided, "passed", "why"}. None (or a None answer,
    #: where the task has no per-example scores): compare ``score``s against the budget.
    judge: Callable[[Path, Path], dict[str, Any] | None] | None = None


@runtime_checkable
class Exporter(Protocol):
    """Writes a merged model to a deployable file and runs that file, so adapt can
    check it against PyTorch (parity and the task's metrics on the test split).

    Optional: ``derive(path, ctx: DeriveContext) -> Derived`` makes further forms
    of the file (optimised, quantised, mobile) and names the one to deploy; ``ctx``
    lets it score a candidate on the validation split and time it.
    """

    name: str
    suffix: str
    options_schema: type[BaseModel] | None

    def export(self, model: torch.nn.Module, inputs: Batch, io: OnnxIO, path: Path, options: Any) -> Path:
        """Write ``model`` to ``path`` (traced with ``inputs``); return the path written."""

    def load(self, path: Path, threads: int | None = None) -> Callable[[dict[str, Any]], Any]:
        """A function from named numpy inputs to the logits array, running the file."""

    # Optional: load_outputs(path, threads) -> a function from named numpy inputs to every
    # output of the graph by name (a task's final outputs are compared with it).


@runtime_checkable
class DataSource(Protocol):
    """Reads labelled examples for a task from a path (or from a package)."""

    name: str
    tasks: tuple[str, ...]
    options_schema: type[BaseModel] | None

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        """Examples by split. Return ``{"train": [...]}`` alone when the data has no split
        of its own; the host carves ``val`` and ``test`` out with the config's seeded split."""
