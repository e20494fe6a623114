"""``text-generation``: causal language modelling on a decoder (GPT-2, Llama, Qwen2, ...),
exported as one ONNX decoder with a key/value cache. Its examples are ``{"text"}``,
``{"prompt", "completion"}`` or ``{"messages": [...]}``; the export gate continues the test
prompts through each file's cache (adapt.plugins.transformers.generation_check), and
``adapt predict`` generates with transformers' ``generate``."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from adapt import hookimpl
from adapt.errors import DataError
from adapt.interfaces import IGNORE_INDEX, Batch, ExportCheck, ExportVerdict, Predictor, Task
from adapt.task_kit import cross_entropy, describe_example

if TYPE_CHECKING:
    import torch


class TextGeneration(Task):
    """Causal language modelling: each token predicts the next. The collator marks the
    tokens that carry no loss (a prompt, padding) with ``-100``, so prompt/completion
    data trains on the completion only. Metrics from teacher forcing: perplexity (the
    primary metric, lower is better), token accuracy of the greedy next token, and
    exact match: the share of examples whose every target token is the greedy choice,
    which is exactly the share whose greedy completion reproduces the reference."""

    name = "text-generation"
    pipeline_tag = "text-generation"
    primary_metric = "perplexity"
    labelled = False
    lower_is_better = True
    fields = ("text",)
    postprocess = MappingProxyType({"kind": "generation"})

    def predict(self, predictor: Predictor, inputs: Sequence[str], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Continuations of the prompts by transformers' ``generate``
        (adapt.plugins.transformers.causal_lm.generate_text)."""
        from adapt.plugins.transformers import causal_lm
        from adapt.plugins.transformers.hf_text import inner_model

        options = {k: v for k, v in settings.items() if k != "sources"}
        model = inner_model(predictor.built.model)
        return [
            {"input": prompt, **causal_lm.generate_text(model, predictor.built.preprocessor, prompt, options)}
            for prompt in inputs
        ]

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        for i, example in enumerate(examples):
            if not any(k in example for k in ("text", "completion", "messages")):
                raise DataError(
                    f"example {i} has no text: {describe_example(example)}",
                    hint="text-generation examples need `text`, `prompt` and `completion`, or `messages`",
                )
        return []

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        return dict(example)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits[:, :-1], labels[:, 1:])

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[int]], list[dict[str, Any]]]:
        """Predictions: the greedy next token at each target position (so parity counts
        agreeing tokens); references: the targets and their summed negative log-likelihood."""
        import torch.nn.functional as F

        logits, targets = logits[:, :-1].float(), labels[:, 1:]
        keep = targets != IGNORE_INDEX
        nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none") * keep
        greedy = logits.argmax(-1)
        predictions = [g[k].tolist() for g, k in zip(greedy, keep)]
        references = [{"targets": t[k].tolist(), "nll": float(n.sum())} for t, k, n in zip(targets, keep, nll)]
        return predictions, references

    def pack(self, batch: Batch, length: int) -> Batch:
        """``train.packing`` (adapt.plugins.transformers.causal_lm.pack)."""
        from adapt.plugins.transformers.causal_lm import pack

        return pack(batch, length)

    def check_export(self, check: ExportCheck) -> ExportVerdict | None:
        """The export gate: greedy continuations through the file's KV cache equal the merged model's."""
        from adapt.plugins.transformers.generation_check import check_generation

        return check_generation(check)

    def metrics(
        self, predictions: Sequence[Sequence[int]], references: Sequence[Mapping[str, Any]], label_names: Sequence[str]
    ) -> dict[str, float]:
        import math

        tokens = sum(len(r["targets"]) for r in references)
        nll = sum(r["nll"] for r in references)
        correct = [sum(1 for p, t in zip(pred, ref["targets"]) if p == t) for pred, ref in zip(predictions, references)]
        exact = sum(1 for c, ref in zip(correct, references) if ref["targets"] and c == len(ref["targets"]))
        return {
            "perplexity": (math.exp(nll / tokens) if nll / tokens < 700 else math.inf) if tokens else math.nan,
            "token_accuracy": sum(correct) / tokens if tokens else 0.0,
            "exact_match": exact / len(references) if references else 0.0,
            "tokens": float(tokens),
            "examples": float(len(references)),
        }


@hookimpl
def adapt_register_tasks(register: Any) -> None:
    register(TextGeneration())
