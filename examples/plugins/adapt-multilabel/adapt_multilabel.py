"""``text-multilabel``: each text carries any number of labels (a news story about sport
*and* business), written against adapt's Task contract alone (docs/plugins.md).

Examples are ``{"text": str, "labels": [name, ...]}``: the ``csv`` and ``jsonl`` sources
give a list-valued label column because the task asks for the ``labels`` field. The
model has one output per label; the loss is binary cross-entropy over sigmoids; a label
is predicted when its sigmoid reaches 0.5. The metrics are scikit-learn's micro- and
macro-F1 and the share of texts whose label set is exactly right.

Everything after training comes from the contract's declared members: any transformers
text backbone builds the model (``model_task``: a text classifier with one output per
label), and ``postprocess`` tells ``adapt predict`` and the exported predict.py to print
every label whose sigmoid reaches the threshold, with each label's score.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Sequence

from adapt import hookimpl
from adapt.errors import DataError
from adapt.interfaces import Task

#: A label is predicted when its sigmoid reaches this.
THRESHOLD = 0.5


class MultiLabelText(Task):
    name = "text-multilabel"
    primary_metric = "micro_f1"
    fields = ("text", "labels")
    #: the backbone builds a text classifier with one output per label
    model_task = "text-classification"
    postprocess = MappingProxyType({"kind": "sigmoid-threshold", "threshold": THRESHOLD})

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        names: set[str] = set()
        for i, example in enumerate(examples):
            labels = example.get("labels")
            if "text" not in example or not isinstance(labels, list):
                raise DataError(
                    f"example {i} needs `text` and a `labels` list",
                    hint="read it with data.source: csv or jsonl, whose label column lists the names",
                )
            names.update(str(label) for label in labels)
        return sorted(names)

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        unknown = [str(label) for label in example["labels"] if str(label) not in index]
        if unknown:
            raise DataError(
                f"label {unknown[0]!r} does not occur in the training data (known: {', '.join(index)})",
                hint="add training examples of that label",
            )
        wanted = {index[str(label)] for label in example["labels"]}
        return {"text": example["text"], "label": [1.0 if i in wanted else 0.0 for i in range(len(index))]}

    def loss(self, logits: Any, labels: Any) -> Any:
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def decode(self, logits: Any, labels: Any) -> tuple[list[list[int]], list[list[int]]]:
        predicted = (logits.float().sigmoid() >= THRESHOLD).int()
        return predicted.tolist(), labels.round().int().tolist()

    def metrics(
        self, predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]], label_names: Sequence[str]
    ) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        if not references:
            return {"micro_f1": 0.0, "macro_f1": 0.0, "exact_match": 0.0, "examples": 0.0}
        return {
            "micro_f1": float(f1_score(references, predictions, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0)),
            "exact_match": float(accuracy_score(references, predictions)),  # the whole label set right
            "examples": float(len(references)),
        }


@hookimpl
def adapt_register_tasks(register: Any) -> None:
    register(MultiLabelText())
