"""The classification tasks: text, token (NER) and image classification.

Each says where the label lives in an example, how names become indices, the
loss (cross-entropy; ``-100`` marks positions to ignore, such as the non-first
sub-words of a word), and the metrics: accuracy and macro-F1 for
classification, entity-level F1 (CoNLL rules) for token classification.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from adapt import hookimpl
from adapt.errors import DataError
from adapt.interfaces import IGNORE_INDEX, Task
from adapt.task_kit import cross_entropy, describe_example

if TYPE_CHECKING:
    import torch


def _label_of(example: Mapping[str, Any], position: int) -> str:
    if "label" not in example or example["label"] is None or example["label"] == "":
        raise DataError(
            f"example {position} has no label: {describe_example(example)}", hint="every training example needs a label"
        )
    return str(example["label"])


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
                raise DataError(
                    f"example {i} has no {self.input_field!r} field: {describe_example(example)}",
                    hint=f"{self.name} examples need `{self.input_field}` and `label`",
                )
        return sorted({_label_of(e, i) for i, e in enumerate(examples)})

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        label = str(example["label"])
        if label not in index:
            raise DataError(
                f"label {label!r} does not occur in the training data (known: {', '.join(index)})",
                hint="add training examples of that label, or drop the examples that carry it",
            )
        return {**example, "label": index[label]}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, labels)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[int], list[int]]:
        return logits.argmax(-1).tolist(), labels.tolist()

    def metrics(
        self, predictions: Sequence[int], references: Sequence[int], label_names: Sequence[str]
    ) -> dict[str, float]:
        n = len(references)
        correct = sum(1 for p, r in zip(predictions, references) if p == r)
        return {
            "accuracy": correct / n if n else 0.0,
            "macro_f1": macro_f1(predictions, references),
            "examples": float(n),
        }

    def example_scores(
        self, predictions: Sequence[int], references: Sequence[int], label_names: Sequence[str]
    ) -> list[float]:
        """1 for each example labelled right, else 0: their mean is the accuracy, so the
        int8 gate can judge a drop paired over the examples (adapt.paired)."""
        return [float(p == r) for p, r in zip(predictions, references)]

    def draw(
        self,
        examples: Sequence[Mapping[str, Any]],
        predictions: Sequence[int],
        label_names: Sequence[str],
        folder: Path,
    ) -> dict[str, Path]:
        """The test split's confusion matrix."""
        from adapt.plugins.classification.confusion import draw_confusion

        return draw_confusion([int(e["label"]) for e in examples], predictions, label_names, folder)


class TextClassification(_SequenceClassification):
    name = "text-classification"
    pipeline_tag = "text-classification"
    input_field = "text"
    fields = ("text", "label")


class ImageClassification(_SequenceClassification):
    name = "image-classification"
    pipeline_tag = "image-classification"
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
    pipeline_tag = "token-classification"
    primary_metric = "f1"
    fields = ("tokens", "tags")
    postprocess = MappingProxyType({"kind": "token-tags"})

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        names: set[str] = set()
        for i, example in enumerate(examples):
            tokens, tags = example.get("tokens"), example.get("tags")
            if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
                raise DataError(
                    f"sentence {i} needs `tokens` and `tags` lists of equal length: {describe_example(example)}",
                    hint="one tag per token, e.g. CoNLL `token<TAB>B-PER` lines",
                )
            names.update(str(t) for t in tags)
        return sorted(names)

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        unknown = [t for t in example["tags"] if str(t) not in index]
        if unknown:
            raise DataError(
                f"tag {unknown[0]!r} does not occur in the training data (known: {', '.join(index)})",
                hint="add training sentences with that tag, or map it to a known one",
            )
        return {**example, "tags": [index[str(t)] for t in example["tags"]]}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, labels)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
        predicted = logits.argmax(-1)
        keep = labels != IGNORE_INDEX
        return [p[k].tolist() for p, k in zip(predicted, keep)], [r[k].tolist() for r, k in zip(labels, keep)]

    def metrics(
        self, predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]], label_names: Sequence[str]
    ) -> dict[str, float]:
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
        return {
            "f1": f1,
            "precision": precision,
            "recall": recall,
            "accuracy": correct / tokens if tokens else 0.0,
            "examples": float(len(references)),
        }


@hookimpl
def adapt_register_tasks(register: Any) -> None:
    register(TextClassification())
    register(TokenClassification())
    register(ImageClassification())
