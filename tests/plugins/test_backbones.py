"""Conformance of every registered backbone, on tiny random checkpoints written to disk.

A backbone added to the host without a tiny recipe here fails
``test_every_backbone_has_a_recipe``: the contract is checked for all of them.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from adapt.host import make_host
from adapt.plan import validate_options

from tests.tiny import bert_checkpoint, roberta_checkpoint

HOST = make_host()
LABELS = 3


@pytest.fixture(scope="session")
def recipes(tmp_path_factory):
    """backbone name -> (checkpoint, arch, options) of a tiny model."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "bert": (str(bert_checkpoint(root / "bert")), None, {"max_length": 32}),
        "roberta": (str(roberta_checkpoint(root / "roberta")), None, {"max_length": 32}),
        "mobilenet": (None, "mobilenetv3_small_050", {"image_size": 32}),
    }


EXAMPLES = {
    "text-classification": [{"text": "obama visited paris", "label": 1}, {"text": "the market fell", "label": 0}],
    "token-classification": [{"tokens": ["obama", "visited", "paris"], "tags": [1, 0, 2]}, {"tokens": ["shares", "rose"], "tags": [0, 0]}],
    "image-classification": [{"image": np.full((8, 8), 200, np.uint8), "label": 2}, {"image": np.zeros((12, 10, 3), np.uint8), "label": 0}],
}

CASES = [(name, task) for name in HOST.backbones.names() for task in HOST.backbones.get(name).tasks]


def test_every_backbone_has_a_recipe(recipes):
    assert set(HOST.backbones.names()) <= set(recipes)


@pytest.fixture
def built(request, recipes):
    name, task = request.param
    backbone = HOST.backbones.get(name)
    checkpoint, arch, raw = recipes[name]
    options = validate_options(backbone, "backbone", raw, "backbone.options")
    torch.manual_seed(0)
    model = backbone.build(task, LABELS, checkpoint=checkpoint, arch=arch, options=options)
    model.model.eval()
    return backbone, model, options


def logits_shape_ok(logits: torch.Tensor, batch: dict, task: str) -> bool:
    if task == "token-classification":
        return tuple(logits.shape) == (batch["input_ids"].shape[0], batch["input_ids"].shape[1], LABELS)
    return tuple(logits.shape) == (next(iter(batch.values())).shape[0], LABELS)


@pytest.mark.parametrize("built", CASES, indirect=True, ids=[f"{n}-{t}" for n, t in CASES])
def test_backbone_contract(built):
    backbone, model, options = built
    task = model.task
    inputs = backbone.example_inputs(model, batch_size=2)
    with torch.no_grad():
        assert logits_shape_ok(model.model(**inputs), inputs, task)

    batch = backbone.collator(model, options)(EXAMPLES[task])
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model.model(**batch)
    assert logits_shape_ok(logits, batch, task)
    assert labels.shape == logits.shape[:-1]

    io = backbone.onnx_io(model)
    parameters = list(inspect.signature(model.model.forward).parameters)
    assert parameters[: len(io.input_names)] == list(io.input_names)
    assert list(io.input_names) == list(inputs)
    assert io.output_names == ("logits",)
    assert set(io.dynamic_axes) == set(io.input_names) | set(io.output_names)
    assert all(axes[0] == "batch" for axes in io.dynamic_axes.values())

    modules = dict(model.model.named_modules())
    params = dict(model.model.named_parameters())
    assert model.head and all(h in modules for h in model.head)
    assert model.blocks and all(b in modules for b in model.blocks)
    assert all(p in params for p in model.new_parameters)
    for method in HOST.methods.names():
        for target in backbone.default_targets(method):
            assert any(n == target or n.endswith("." + target) for n in modules), f"default {method} target {target!r} matches no module"
    assert backbone.default_targets("lora"), "every backbone names default LoRA targets"
