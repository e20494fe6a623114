"""The multi-label task passes adapt's task contract (adapt.testing.check_task) and its
metrics are scikit-learn's on hand-checked cases."""

from __future__ import annotations

import pytest
import torch

import adapt_multilabel
from adapt.errors import DataError
from adapt.testing import check_task, make_test_host

EXAMPLES = [
    {"text": "the striker scored twice", "labels": ["sport"]},
    {"text": "the club's shares rose after the final", "labels": ["business", "sport"]},
    {"text": "the bank raised its rates", "labels": ["business"]},
    {"text": "a quiet day", "labels": []},
]


def test_the_host_finds_the_task():
    task = make_test_host(adapt_multilabel).tasks.get("text-multilabel")
    assert task.fields == ("text", "labels") and task.postprocess["kind"] == "sigmoid-threshold"


def test_the_task_meets_the_contract():
    check_task(
        adapt_multilabel.MultiLabelText(),
        examples=EXAMPLES,
        logits=torch.tensor([[3.0, -2.0], [1.0, 2.0], [2.0, -3.0], [-1.0, -1.0]]),
    )


def test_labels_become_a_multi_hot_row():
    task = adapt_multilabel.MultiLabelText()
    names = task.label_names(EXAMPLES)
    assert names == ["business", "sport"]
    encoded = task.encode(EXAMPLES[1], {n: i for i, n in enumerate(names)})
    assert encoded["label"] == [1.0, 1.0]
    with pytest.raises(DataError, match="does not occur"):
        task.encode({"text": "x", "labels": ["weather"]}, {n: i for i, n in enumerate(names)})


def test_metrics_count_each_label_decision():
    task = adapt_multilabel.MultiLabelText()
    predictions, references = [[1, 0], [1, 1], [0, 0]], [[1, 0], [0, 1], [0, 1]]
    metrics = task.metrics(predictions, references, ["a", "b"])
    # true positives 2, false positives 1, false negatives 1: micro-F1 = 2*2 / (2*2 + 1 + 1)
    assert metrics["micro_f1"] == pytest.approx(4 / 6) and metrics["exact_match"] == pytest.approx(1 / 3)
