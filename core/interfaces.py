"""The five things a plugin can provide, declared whole: every member, required or
optional, with its type and its default behaviour.

A plugin object may inherit from its kind's base class (:class:`Task`, :class:`Backbone`,
:class:`Method`, :class:`Exporter`, :class:`DataSource`) or only look like it (duck
typing): the host then hands core a :func:`declare`d view in which each member the
object lacks takes the default declared here. Heavy types (torch) appear only in
annotations, so this module imports nothing heavy.

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
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, TypeVar

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
    #: A feature extractor for a task that adds its own head (object-detection): the model
    #: returns one feature map per level, input side first; each level's (channels, stride).
    #: The task's ``wrap_model`` puts its head on top. Empty for a model with its own head.
    pyramid: tuple[tuple[int, int], ...] = ()
    #: Settings the backbone's options give for the head such a task adds (mobilenet:
    #: ``backbone.options.head``: ``channels``, ``depth``); the task reads what it knows.
    head_options: dict[str, Any] = field(default_factory=dict)
    #: Ways to make training faster that the backbone offers for this model, by the name of
    #: their ``train.fast`` switch (transformers' BERT family: ``cls_last_layer``, the last
    #: layer computed for the [CLS] position only). Each switches the model in place and
    #: returns how to undo it (None: it does not apply) and a note saying why not.
    switches: dict[str, Callable[[], tuple[Callable[[], None] | None, str]]] = field(default_factory=dict)
    #: Where the pretrained weights came from: an absolute local path or a hub id
    #: (set by the host from ``backbone.checkpoint``; None without one). PEFT's
    #: adapter_config.json names it as ``base_model_name_or_path``.
    checkpoint: str | None = None


@dataclass
class MergedFolder:
    """What ``Backbone.save_merged`` wrote: the library whose loader opens the folder, and
    the usage lines (markdown) the model card shows, with ``merged`` as the folder's path."""

    library: str
    usage: list[str] = field(default_factory=list)


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
class LowRank:
    """One adapted layer's update ``scale * B A``, against the checkpoint's own weight (an
    adapter bundle keeps that weight in the graph and feeds A and B as inputs).

    For an ``nn.Linear`` (or transformers' ``Conv1D``): ``A`` is (r, in), ``B`` (out, r).
    For an ``nn.Conv2d`` with ``g`` groups (depthwise included): ``A`` is the weight of the
    layer's own k x k convolution with ``g`` groups to ``g r`` channels, (g r, in/g, kh, kw);
    ``B`` the weight of a 1 x 1 convolution with ``g`` groups back to ``out``, (out, r, 1, 1).
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float


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
    #: What ``label_agreement`` measured: "labels" (equal predictions), or the name of the
    #: task's own agreement where it has one (``box_agreement``, ``min_cosine``).
    agreement_of: str = "labels"


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
    #: The example fields the task needs (``Task.fields``): a source that can give a field
    #: in two shapes gives this one (``labels``: a list of names from the label column).
    fields: tuple[str, ...] = ()
    #: Items the source left out (a file that is not valid text, a corrupt image), with why.
    skipped: list[str] = field(default_factory=list)
    #: Set by a source whose data declares its label names in an order of its own (a
    #: ``datasets`` ClassLabel): the run keeps those names, in that order, as its label names,
    #: so label ids match the data's. None: the task's sorted names from the training split.
    label_order: list[str] | None = None

    def skip(self, item: str, reason: str) -> None:
        """Record an unreadable item that the source leaves out; the run's report counts them."""
        self.skipped.append(f"{item}: {reason}")


# --- The contract: every member a plugin may implement -----------------------------------
#
# Each kind is a base class holding every member, required or optional, with its type and
# its default behaviour. A plugin may inherit from it (the built-ins do) or only look like it
# (duck typing, as plugins written against earlier docs do): the host hands core a
# :func:`declare`d view of such an object, in which a member the plugin lacks takes the
# default below. Core calls members; it never asks whether one exists.

#: Post-processing kinds the standalone predict.py implements after the graph (``Task.postprocess``).
from adapt.onnx_predict import POSTPROCESS_KINDS as POSTPROCESS_KINDS  # noqa: E402 - the standalone file owns the list


class Predictor(Protocol):
    """What ``adapt predict`` hands a task's :meth:`Task.predict` (the PyTorch path)."""

    #: The run's label names.
    label_names: list[str]
    #: The trained model as the task built it (``BuiltModel``), for tasks that run it themselves.
    built: BuiltModel
    #: The run's export folder (a gallery or an index lives there), or None before any export.
    export_dir: Path | None

    def outputs(self, example: Example) -> dict[str, Any]:
        """The model's named outputs (numpy arrays, batch of one) for an example from ``read_input``:
        ``logits`` first, then the task's ``graph_outputs`` names, as the exported graph gives them."""

    def finish(
        self, source: str, example: Example, outputs: dict[str, Any], settings: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The prediction row for one input (``example``, from ``read_input``): the task's
        ``postprocess`` applied to ``outputs`` by the same code the exported predict.py runs."""


class Task:
    """A kind of prediction: the fields its examples hold, how labels are found, the loss,
    metrics, predictions, how two forms of a model are compared, and how ``adapt predict``
    and the exported predict.py turn inputs into predictions."""

    #: The name a config's ``task:`` uses.
    name: str = ""
    #: The metric that picks the best checkpoint and gates quantisation (``accuracy``, ``f1``, ...).
    primary_metric: str = "accuracy"
    #: True when the primary metric improves downwards (perplexity): the best epoch has the
    #: lowest, quantised files are scored by its negative logarithm, the report says so.
    lower_is_better: bool = False
    #: False for a task whose examples carry no label (text-generation): ``label_names``
    #: returns [] and the model is built with ``num_labels`` 0.
    labelled: bool = True
    #: The example fields the task needs (``("text", "label")``). A data source serves the task
    #: when it gives them all (``DataSource.fields``); the source is told them (``DataRequest.fields``).
    #: Empty: the source is matched by its ``tasks`` list instead (the older way).
    fields: tuple[str, ...] = ()
    #: A pydantic model for the config's ``head:`` key (None: the task takes no options).
    options_schema: type[BaseModel] | None = None
    #: The task a backbone that does not list this one builds the model for (None: this one).
    model_task: str | None = None
    #: True: the untuned model's test metrics are measured before training (``metrics.baseline``).
    baseline: bool = False
    #: What ``baseline_metrics`` measures, for the report ("popularity").
    baseline_name: str = "model-free"
    #: The split ``gallery`` reads.
    gallery_split: str = "train"
    #: The report key of ``agreement`` on final outputs (``parity.<form>.<agreement_name>``).
    agreement_name: str = "final_agreement"
    #: The least ``agreement`` the merged model and every exact exported form must reach
    #: (None: no merge gate on it, and 0.99 for an exported form's final outputs).
    min_agreement: float | None = None
    #: What the exported predict.py (and ``adapt predict``) does after the graph: ``{"kind": k, ...}``
    #: with ``k`` one of :data:`POSTPROCESS_KINDS` (``softmax-top-k`` with ``k``; ``sigmoid-threshold``
    #: with ``threshold``; ``outputs``: every named output as JSON). Written into preprocess.json.
    postprocess: Mapping[str, Any] = MappingProxyType({"kind": "outputs"})
    #: The Hugging Face Hub's pipeline tag for this task's models (``text-classification``,
    #: ``sentence-similarity``, ...), written into the model cards; None: the Hub has none.
    pipeline_tag: str | None = None

    @property
    def augments(self) -> bool:
        """Whether ``augment`` changes training examples (default: whether the task defines its
        own ``augment``); the engine then augments, and cannot cache a probe's features."""
        return getattr(self.augment, "__func__", None) is not Task.augment

    @property
    def min_labels(self) -> int:
        """The fewest label names the training data must hold (2, or 0 when not ``labelled``)."""
        return 2 if self.labelled else 0

    # Required: what every task must implement.

    def label_names(self, examples: Sequence[Example]) -> list[str]:
        """The sorted label names found in ``examples``; raises DataError on a malformed example."""
        raise NotImplementedError(f"task {self.name!r} must implement label_names")

    def encode(self, example: Example, index: Mapping[str, int]) -> Example:
        """A copy of ``example`` with label names replaced by indices; DataError for an unseen label."""
        raise NotImplementedError(f"task {self.name!r} must implement encode")

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss; label ``-100`` is ignored."""
        raise NotImplementedError(f"task {self.name!r} must implement loss")

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[Any], list[Any]]:
        """Per-example predictions and references, dropping ignored (``-100``) positions."""
        raise NotImplementedError(f"task {self.name!r} must implement decode")

    def metrics(
        self, predictions: Sequence[Any], references: Sequence[Any], label_names: Sequence[str]
    ) -> dict[str, float]:
        """Metrics over a whole split; always includes ``primary_metric``."""
        raise NotImplementedError(f"task {self.name!r} must implement metrics")

    # Optional: each default is what a task without the member gets.

    def configure(self, options: Any) -> Task:
        """A copy of the task bound to the validated ``head:`` options (default: the task itself)."""
        return self

    def head_size(self, num_labels: int) -> int:
        """How many outputs the backbone's head gets (default: the label count)."""
        return num_labels

    def wrap_model(self, built: BuiltModel, num_labels: int) -> BuiltModel:
        """A BuiltModel whose model wraps the backbone's (default: ``built`` as it is)."""
        return built

    def flatten(self, examples: Sequence[Example]) -> Sequence[Example]:
        """The examples the backbone's collator gets for one batch (default: ``examples``)."""
        return examples

    def augment(self, example: Example, rng: Any, kinds: Sequence[str] | None = None) -> Example | None:
        """A changed copy of one training example, or None (the default): no augmentation."""
        return None

    def pack(self, batch: Batch, length: int) -> Batch | None:
        """``train.packing``: the training batch's examples joined into as few rows of at most ``length``
        tokens as fit, each attending only to itself, with the same loss as ``batch``. Default None: the
        task cannot pack (the run is refused before training)."""
        return None

    def graph_outputs(self, model: torch.nn.Module) -> tuple[torch.nn.Module, tuple[str, ...]] | None:
        """``(module, names)`` to export instead of ``model``: logits first, then the task's final
        outputs ``names`` (boxes after NMS). Default None: the model as it is."""
        return None

    def final_predictions(self, outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[Any]:
        """Per-example predictions (``decode``'s form) from a file's named outputs (with ``graph_outputs``)."""
        raise NotImplementedError(f"task {self.name!r} has graph_outputs and must implement final_predictions")

    def agreement(self, reference: Sequence[Any], candidate: Sequence[Any]) -> float | None:
        """The share of the reference's predictions the candidate reproduces; None (the default):
        predictions are compared for equality."""
        return None

    def gallery(
        self,
        predictions: Sequence[Any],
        references: Sequence[Any],
        label_names: Sequence[str],
        examples: Sequence[Example],
    ) -> dict[str, Any]:
        """Files to write beside the deployable model ({name: bytes or JSON-able}); default none."""
        return {}

    def baseline_metrics(self, train: Sequence[Example], test: Sequence[Example]) -> dict[str, float] | None:
        """A model-free baseline's test metrics (``metrics.baseline``); default None: none."""
        return None

    def draw(
        self, examples: Sequence[Example], predictions: Sequence[Any], label_names: Sequence[str], folder: Path
    ) -> dict[str, Path]:
        """Pictures written into ``folder`` (the run's ``pictures/``): {name: path}; default none.
        ``examples`` is the whole test split and ``predictions`` the merged model's on it: draw a
        few (boxes on four images) or a summary of all (a confusion matrix)."""
        return {}

    def example_scores(
        self, predictions: Sequence[Any], references: Sequence[Any], label_names: Sequence[str]
    ) -> list[float] | None:
        """Each example's share of the primary metric (their mean is it), so the int8 gate judges a
        drop paired over the examples; None (the default): the two scores are compared."""
        return None

    def read_input(self, source: str) -> Example:
        """One ``adapt predict`` input as an example the backbone's collator takes (label
        placeholders included). Default, by ``fields``: ``image`` reads an image path, ``tokens``
        splits on spaces, otherwise the input is ``text``."""
        if "image" in self.fields:
            from adapt.onnx_predict import open_image  # an InputError naming the file when it is no image

            return {"image": open_image(source), "label": 0}
        if "tokens" in self.fields:
            return {"tokens": source.split(), "tags": [0] * len(source.split())}
        return {"text": source, "label": 0}

    def input_of(self, example: Example, folder: Path, index: int) -> str | None:
        """:meth:`read_input` backwards: the ``adapt predict`` input that gives ``example`` (for
        the browser page's recorded test examples). Default, by ``fields``: an image is written
        into ``folder`` as ``example-<index>.png`` and its file name returned; sentences are
        their tokens joined by spaces; otherwise the ``text``. None: the task has no such input."""
        if "image" in self.fields:
            from adapt.web_export import save_png

            return save_png(example["image"], folder, f"example-{index}.png")
        if "tokens" in self.fields:
            return " ".join(str(t) for t in example["tokens"])
        text = example.get("text")
        return text if isinstance(text, str) else None

    def predict(self, predictor: Predictor, inputs: Sequence[str], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``adapt predict``'s rows with PyTorch, one per input. Default: each input through
        ``read_input``, the model's named outputs, then ``postprocess`` as predict.py does it."""
        rows = []
        for source in inputs:
            example = self.read_input(source)
            rows.append(predictor.finish(source, example, predictor.outputs(example), settings))
        return rows

    def check_export(self, check: ExportCheck) -> ExportVerdict | None:
        """The task's own check of one exported file beyond parity and metrics (text-generation:
        the file's greedy continuations through its KV cache against the merged model's).
        Default None: no check."""
        return None


@dataclass
class ExportCheck:
    """What :meth:`Task.check_export` gets for one exported file."""

    path: Path
    #: False for a quantised file (it need not reproduce the merged model exactly).
    exact: bool
    merged_model: Any
    #: The test split (encoded examples), the backbone's preprocessor (a tokenizer) and the
    #: token length inputs are cut to (``Backbone.sequence_length``; None: not a sequence model).
    test: Sequence[Example]
    preprocessor: Any
    sequence_length: int | None
    #: Kept for the whole export (every file's check sees the same dict): work done once
    #: for the merged model, such as its reference outputs.
    memo: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportVerdict:
    """What :meth:`Task.check_export` found. ``problem`` (a sentence) fails an exact file."""

    #: Entries for the file's ``parity.<form>`` (``generation_agreement``: 1.0).
    parity: dict[str, Any] = field(default_factory=dict)
    #: Entries for the file's ``latency_ms.<form>`` and for PyTorch's (``tokens_per_s``).
    latency: dict[str, Any] = field(default_factory=dict)
    reference_latency: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    hint: str = ""
    #: A few of the file's outputs for people to read (report key ``samples.<form>``, shown in
    #: report.html and report.md): text-generation gives ``{"prompt", "continuation"}`` per test prompt.
    samples: list[dict[str, str]] = field(default_factory=list)


class Backbone:
    """A pretrained network family that can be built for tasks and exported."""

    name: str = ""
    tasks: tuple[str, ...] = ()
    #: A pydantic model validating ``backbone.options``, or None when there are none.
    options_schema: type[BaseModel] | None = None
    #: The target families its models have (adapt.families); ``adapt plugins --verbose`` lists them.
    families: tuple[str, ...] = ()
    #: The families a method that declares no ``default_families`` adapts; the run says so.
    recommended_families: tuple[str, ...] = ()

    def build(
        self, task: str, num_labels: int, *, checkpoint: str | None, arch: str | None, options: Any
    ) -> BuiltModel:
        """Build the model for ``task`` with a head of ``num_labels`` outputs, loading ``checkpoint``."""
        raise NotImplementedError(f"backbone {self.name!r} must implement build")

    def collator(self, built: BuiltModel, options: Any) -> Callable[[Sequence[Example]], Batch]:
        """A function turning encoded examples into a batch of tensors (``labels`` included)."""
        raise NotImplementedError(f"backbone {self.name!r} must implement collator")

    def example_inputs(self, built: BuiltModel, batch_size: int = 2) -> Batch:
        """Inputs that ``built.model(**inputs)`` accepts, for export and checks."""
        raise NotImplementedError(f"backbone {self.name!r} must implement example_inputs")

    def onnx_io(self, built: BuiltModel) -> OnnxIO:
        """Input/output names (in forward order) and dynamic batch/sequence axes."""
        raise NotImplementedError(f"backbone {self.name!r} must implement onnx_io")

    def export_form(self, model: torch.nn.Module, inputs: Batch, io: OnnxIO) -> torch.nn.Module:
        """The merged model as exporters should trace it (``inputs``: example inputs by name): a
        copy with export-friendly layers where the architecture has layers that trace badly
        (GPT-2's Conv1D as the equal Linear; timm's run-time "same" padding as constants when
        the image size is fixed). Default: ``model`` itself. The export's parity check compares
        what it returns with the merged model."""
        return model

    def save_merged(
        self, model: torch.nn.Module, built: BuiltModel, folder: Path, label_names: Sequence[str], options: Any
    ) -> MergedFolder | None:
        """Write the folded, merged ``model`` into ``folder`` as the folder its library's own
        loader opens (a transformers folder with the run's label names and tokenizer; timm's
        tensor names) and say which library and how (the model card shows it). Default None:
        adapt writes ``model.safetensors`` itself, and the card says ``adapt predict`` runs it."""
        return None

    def save_preprocessing(self, built: BuiltModel, options: Any, folder: Path) -> dict[str, Any] | None:
        """Write what a device needs (tokenizer.json, ...) into ``folder`` and return preprocess.json's
        content (``kind``: text | tokens | image, see adapt.onnx_predict). Default None: the export
        has no predict.py and preprocess.json (the report says so)."""
        return None

    def onnx_optimizer_options(self, built: BuiltModel) -> dict[str, Any]:
        """``DeriveContext.model_info`` for the exporter (default: nothing known)."""
        return {}

    def default_targets(self, method: str) -> list[str]:
        """The older way: module names (or suffixes) a method adapts when the config names none
        and the model has none of its families (default: none)."""
        return []

    def sequence_length(self, built: BuiltModel, options: Any) -> int | None:
        """The token length an input is cut to (``backbone.options.max_length``, within the
        model's positions), for checks and benchmarks that build inputs of the model's size;
        None (the default): not a sequence model."""
        return None


class Method:
    """A way of adapting a model with few trainable parameters, and of folding it back."""

    name: str = ""
    options_schema: type[BaseModel] | None = None
    #: The target families it adapts when the config names no targets; None (the default):
    #: the backbone's ``recommended_families``; ``()``: none by design (freeze trains the head).
    default_families: tuple[str, ...] | None = None

    def apply(self, built: BuiltModel, options: Any, default_targets: Sequence[str]) -> list[str]:
        """Change ``built.model`` in place; return the names of the parameters left trainable."""
        raise NotImplementedError(f"method {self.name!r} must implement apply")

    def adapter_state(self, built: BuiltModel) -> dict[str, torch.Tensor]:
        """The tensors this method trained (the head included), to save as safetensors."""
        raise NotImplementedError(f"method {self.name!r} must implement adapter_state")

    def load_adapter_state(self, built: BuiltModel, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`adapter_state` returned into a freshly applied model."""
        raise NotImplementedError(f"method {self.name!r} must implement load_adapter_state")

    def merge(self, built: BuiltModel) -> MergeResult:
        """Fold the method into the backbone in fp32, or keep it inline and say so."""
        raise NotImplementedError(f"method {self.name!r} must implement merge")

    def adapter_config(self, built: BuiltModel) -> dict[str, Any] | None:
        """A dict saved as adapter_config.json beside the adapter weights (LoRA: PEFT's format);
        default None: none."""
        return None

    def learning_rates(self, built: BuiltModel) -> dict[str, float]:
        """Trainable parameters (full names) that learn at a multiple of ``train.lr`` (LoRA+:
        every B at ``lr_ratio`` times it); default: none, every parameter at ``train.lr``."""
        return {}

    def low_rank_updates(self, built: BuiltModel) -> dict[str, LowRank] | None:
        """Each adapted layer's update (module name in ``built.model`` -> :class:`LowRank`), for
        ``adapt bundle``, which switches such updates at run time in one ONNX graph. Default None:
        this method's updates are not low-rank products on the checkpoint's weights (the bundle
        refuses the run); raise ConfigError to say why not for one run."""
        return None


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


class Exporter:
    """Writes a merged model to a deployable file and runs that file, so adapt can
    check it against PyTorch (parity and the task's metrics on the test split)."""

    name: str = ""
    suffix: str = ""
    options_schema: type[BaseModel] | None = None

    def export(self, model: torch.nn.Module, inputs: Batch, io: OnnxIO, path: Path, options: Any) -> Path:
        """Write ``model`` to ``path`` (traced with ``inputs``); return the path written."""
        raise NotImplementedError(f"exporter {self.name!r} must implement export")

    def load(self, path: Path, threads: int | None = None) -> Callable[[dict[str, Any]], Any]:
        """A function from named numpy inputs to the logits array, running the file."""
        raise NotImplementedError(f"exporter {self.name!r} must implement load")

    def load_outputs(self, path: Path, threads: int | None = None) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """A function from named numpy inputs to every output of the graph by name (a task's final
        outputs are compared with it); default None: those are not compared, the report says so."""
        return None

    def derive(self, path: Path, ctx: DeriveContext) -> Derived | None:
        """Further forms of the file (optimised, quantised, mobile) and the one to deploy;
        default None: the exported file is the deployable one."""
        return None

    def companions(self, path: Path) -> list[Path]:
        """Files beside ``path`` that belong to the model and ship with it (ONNX's external
        weights past 2 GB); its size in the report counts them. Default: none."""
        return []

    def quantize_keeping(self, path: Path, out: Path, keep: Sequence[str], target: str) -> dict[str, Any] | None:
        """int8 of the graph at ``path`` into ``out`` for the CPU ``target`` (``export.target``),
        every node that reads one of the inputs ``keep`` left in float (an adapter bundle's
        low-rank branches and heads, whose weights arrive at run time); returns what was done
        (for the report). Default None: not offered (the bundle says so)."""
        return None


class DataSource:
    """Reads examples for a task from a path (or from a package)."""

    name: str = ""
    #: The tasks it serves, for tasks that declare no ``fields`` (the older way).
    tasks: tuple[str, ...] = ()
    #: The example fields it can give (``("text", "label", "labels")``): it serves every task
    #: whose ``fields`` it covers, a task it has never heard of too.
    fields: tuple[str, ...] = ()
    options_schema: type[BaseModel] | None = None

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        """Examples by split. Return ``{"train": [...]}`` alone when the data has no split
        of its own; the host carves ``val`` and ``test`` out with the config's seeded split."""
        raise NotImplementedError(f"data source {self.name!r} must implement read")


#: Each kind's contract, by the registry's kind name.
CONTRACTS: dict[str, type] = {
    "backbone": Backbone,
    "method": Method,
    "exporter": Exporter,
    "data source": DataSource,
    "task": Task,
}

C = TypeVar("C")


def members(contract: type) -> set[str]:
    """Every public member a contract declares (attributes, properties, methods)."""
    names = set()
    for klass in contract.__mro__[:-1]:
        names |= {n for n in vars(klass) if not n.startswith("_")}
        names |= {n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_")}
    return names


class _Declared:
    """A view of a duck-typed plugin object through its contract: a member the object has
    is the object's; one it lacks is the contract's default (bound to the view, so a
    default that calls another member reaches the object's own)."""

    _adapt_plugin: Any

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("__") and name != "_adapt_plugin":
            plugin = object.__getattribute__(self, "_adapt_plugin")
            try:
                return getattr(plugin, name)
            except AttributeError:
                pass
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        return repr(object.__getattribute__(self, "_adapt_plugin"))


_VIEWS: dict[type, type] = {}


def declare(obj: Any, contract: type[C]) -> C:
    """``obj`` as its contract: itself when it inherits from it, else a view in which every
    member it lacks takes the contract's default."""
    if isinstance(obj, contract):
        return obj
    view_type = _VIEWS.setdefault(contract, type(f"Declared{contract.__name__}", (_Declared, contract), {}))
    view: C = object.__new__(view_type)
    object.__setattr__(view, "_adapt_plugin", obj)
    return view


def undeclared_members(obj: Any, contract: type) -> list[tuple[str, str]]:
    """``(attribute, member)`` for each public attribute of ``obj`` that is not part of its
    contract but looks like a misspelt member of it (``lower_is_beter``)."""
    import difflib

    declared = members(contract)
    found = []
    for attribute in sorted(a for a in dir(obj) if not a.startswith("_") and a not in declared):
        close = difflib.get_close_matches(attribute, sorted(declared), n=1, cutoff=0.85)
        if close:
            found.append((attribute, close[0]))
    return found
