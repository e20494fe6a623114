"""The built-in tasks: text, token (NER) and image classification, and text generation.

Each says where the label lives in an example, how names become indices, the
loss (cross-entropy; ``-100`` marks positions to ignore, such as the non-first
sub-words of a word), and the metrics: accuracy and macro-F1 for
classification, entity-level F1 (CoNLL rules) for token classification.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from adapt import hookimpl
from adapt.errors import DataError
from adapt.interfaces import IGNORE_INDEX, ExportCheck, ExportVerdict, Predictor, Task

if TYPE_CHECKING:
    import torch



def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def _label_of(example: Mapping[str, Any], position: int) -> str:
    if "label" not in example or example["label"] is None or example["label"] == "":
        raise DataError(f"example {position} has no label: {_short(example)}", hint="every training example needs a label")
    return str(example["label"])


def _short(example: Mapping[str, Any]) -> str:
    text = repr({k: v for k, v in example.items() if k != "image"})
    return text if len(text) < 120 else text[:117] + "..."


def macro_f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over classes seen in either list (as scikit-learn)."""
    classes = set(predictions) | set(references)
    if not classes:
        return 0.0
    total = 0.0
    for c in classes:
        tp = sum(1 for p, r in zip(predictions, references) if p == c and r == c)
        fp = sum(1 for p, r in zip(predictions, references) if p == c and r != c)
        fn = sum(1 for p, r in zip(predictions, references) if p != c and r == c)
        total += 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return total / len(classes)


class _SequenceClassification(Task):
    """One label per example: shared by text and image classification."""

    name = ""
    primary_metric = "accuracy"
    input_field = ""
    #: predict prints the most likely label and its probability
    postprocess = MappingProxyType({"kind": "softmax-top-k", "k": 1})

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        for i, example in enumerate(examples):
            if self.input_field not in example:
                raise DataError(f"example {i} has no {self.input_field!r} field: {_short(example)}", hint=f"{self.name} examples need `{self.input_field}` and `label`")
        return sorted({_label_of(e, i) for i, e in enumerate(examples)})

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        label = str(example["label"])
        if label not in index:
            raise DataError(f"label {label!r} does not occur in the training data (known: {', '.join(index)})", hint="add training examples of that label, or drop the examples that carry it")
        return {**example, "label": index[label]}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(logits, labels)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[int], list[int]]:
        return logits.argmax(-1).tolist(), labels.tolist()

    def metrics(self, predictions: Sequence[int], references: Sequence[int], label_names: Sequence[str]) -> dict[str, float]:
        n = len(references)
        correct = sum(1 for p, r in zip(predictions, references) if p == r)
        return {"accuracy": correct / n if n else 0.0, "macro_f1": macro_f1(predictions, references), "examples": float(n)}

    def example_scores(self, predictions: Sequence[int], references: Sequence[int], label_names: Sequence[str]) -> list[float]:
        """1 for each example labelled right, else 0: their mean is the accuracy, so the
        int8 gate can judge a drop paired over the examples (adapt.paired)."""
        return [float(p == r) for p, r in zip(predictions, references)]


class TextClassification(_SequenceClassification):
    name = "text-classification"
    input_field = "text"
    fields = ("text", "label")


class ImageClassification(_SequenceClassification):
    name = "image-classification"
    input_field = "image"
    fields = ("image", "label")


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entity spans ``(type, start, end)`` in a BIO tag sequence, by the CoNLL-2000 rules:
    an ``I-X`` after ``O`` or after another type starts a new entity."""
    spans: set[tuple[str, int, int]] = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if tag != "O" else ("O", "", "")
        if not label:  # a tag without B-/I- (IO scheme) continues or starts its own type
            prefix, label = ("I", tag) if tag != "O" else ("O", "")
        if kind is not None and (prefix != "I" or label != kind):
            spans.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = label, i
    return spans


class TokenClassification(Task):
    """A BIO tag per word (named-entity recognition)."""

    name = "token-classification"
    primary_metric = "f1"
    fields = ("tokens", "tags")
    postprocess = MappingProxyType({"kind": "token-tags"})

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        names: set[str] = set()
        for i, example in enumerate(examples):
            tokens, tags = example.get("tokens"), example.get("tags")
            if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
                raise DataError(f"sentence {i} needs `tokens` and `tags` lists of equal length: {_short(example)}", hint="one tag per token, e.g. CoNLL `token<TAB>B-PER` lines")
            names.update(str(t) for t in tags)
        return sorted(names)

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        unknown = [t for t in example["tags"] if str(t) not in index]
        if unknown:
            raise DataError(f"tag {unknown[0]!r} does not occur in the training data (known: {', '.join(index)})", hint="add training sentences with that tag, or map it to a known one")
        return {**example, "tags": [index[str(t)] for t in example["tags"]]}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(logits, labels)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
        predicted = logits.argmax(-1)
        keep = labels != IGNORE_INDEX
        return [p[k].tolist() for p, k in zip(predicted, keep)], [r[k].tolist() for r, k in zip(labels, keep)]

    def metrics(self, predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]], label_names: Sequence[str]) -> dict[str, float]:
        found = gold = hit = tokens = correct = 0
        for pred, ref in zip(predictions, references):
            pred_spans = entities([label_names[i] for i in pred])
            ref_spans = entities([label_names[i] for i in ref])
            found, gold, hit = found + len(pred_spans), gold + len(ref_spans), hit + len(pred_spans & ref_spans)
            tokens += len(ref)
            correct += sum(1 for p, r in zip(pred, ref) if p == r)
        precision = hit / found if found else 0.0
        recall = hit / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"f1": f1, "precision": precision, "recall": recall, "accuracy": correct / tokens if tokens else 0.0, "examples": float(len(references))}


class TextGeneration:
    """Causal language modelling: each token predicts the next. The collator marks the
    tokens that carry no loss (a prompt, padding) with ``-100``, so prompt/completion
    data trains on the completion only. Metrics from teacher forcing: perplexity (the
    primary metric, lower is better), token accuracy of the greedy next token, and
    exact match: the share of examples whose every target token is the greedy choice,
    which is exactly the share whose greedy completion reproduces the reference."""

    name = "text-generation"
    primary_metric = "perplexity"
    labelled = False
    lower_is_better = True
    fields = ("text",)
    postprocess = MappingProxyType({"kind": "generation"})

    def predict(self, predictor: Predictor, inputs: Sequence[str], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Continuations of the prompts by transformers' ``generate`` (adapt.causal_lm.generate_text)."""
        from adapt import causal_lm
        from adapt.hf_text import inner_model

        options = {k: v for k, v in settings.items() if k != "sources"}
        model = inner_model(predictor.built.model)
        return [{"input": prompt, **causal_lm.generate_text(model, predictor.built.preprocessor, prompt, options)} for prompt in inputs]

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        for i, example in enumerate(examples):
            if not any(k in example for k in ("text", "completion", "messages")):
                raise DataError(f"example {i} has no text: {_short(example)}", hint="text-generation examples need `text`, `prompt` and `completion`, or `messages`")
        return []

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        return dict(example)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(logits[:, :-1], labels[:, 1:])

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

    def check_export(self, check: ExportCheck) -> ExportVerdict | None:
        """The export gate: greedy continuations through the file's KV cache equal the merged model's."""
        from adapt.generation_check import check_generation

        return check_generation(check)

    def metrics(self, predictions: Sequence[Sequence[int]], references: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> dict[str, float]:
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
def adapt_register_tasks(register):
    register(TextClassification())
    register(TokenClassification())
    register(ImageClassification())
    register(TextGeneration())
