"""Every registered task meets the task contract (adapt.testing.check_task), as timm checks
every model: built-ins and whatever is installed. Where a task's examples are simple enough
to write here, its loss, decoding and metrics run too. And a plugin object that only looks
like a task (duck typing) gets the contract's defaults, with a warning for a misspelt member."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt import hookimpl
from adapt.host import make_host
from adapt.interfaces import Task
from adapt.testing import check_task, make_test_host

TASKS = make_host(autoload=False).tasks
#: Examples and logits for the tasks whose examples are a field and a label.
DYNAMIC = {
    "text-classification": ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "c", "label": "x"}], torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])),
    "image-classification": ([{"image": np.zeros((4, 4), np.uint8), "label": "cat"}, {"image": np.ones((4, 4), np.uint8), "label": "dog"}], torch.tensor([[1.0, 0.0], [0.5, 2.0]])),
}


@pytest.mark.parametrize("name", TASKS.names())
def test_every_registered_task_meets_the_contract(name):
    examples, logits = DYNAMIC.get(name, ((), None))
    check_task(TASKS.get(name), examples=examples, logits=logits)


class OldStyle:
    """A task written against the earlier docs: no base class, no fields, no postprocess."""

    name = "old-style"
    primary_metric = "accuracy"
    lower_is_beter = True  # misspelt: adapt never reads it

    def label_names(self, examples):
        return sorted({e["label"] for e in examples})

    def encode(self, example, index):
        return {**example, "label": index[example["label"]]}

    def loss(self, logits, labels):
        return torch.nn.functional.cross_entropy(logits, labels)

    def decode(self, logits, labels):
        return logits.argmax(-1).tolist(), labels.tolist()

    def metrics(self, predictions, references, label_names):
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / max(1, len(references))}


class Plugin:
    @hookimpl
    def adapt_register_tasks(self, register):
        register(OldStyle())


def test_a_duck_typed_task_gets_every_default_and_a_warning_for_a_misspelt_member(capsys):
    host = make_test_host(Plugin())
    task = host.tasks.get("old-style")
    assert isinstance(task, Task)
    assert task.lower_is_better is False and task.fields == () and task.postprocess["kind"] == "outputs" and task.min_labels == 2
    assert task.graph_outputs(torch.nn.Identity()) is None and task.augments is False
    assert task.read_input("a text") == {"text": "a text", "label": 0}
    assert task.label_names([{"label": "b"}, {"label": "a"}]) == ["a", "b"]  # its own members are its own
    warned = capsys.readouterr().err
    assert "`lower_is_beter`" in warned and "did you mean `lower_is_better`?" in warned and "old-style" in warned
    with pytest.raises(AssertionError, match="lower_is_beter"):
        check_task(OldStyle())
