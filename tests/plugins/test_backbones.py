"""Conformance of every registered backbone, on tiny random checkpoints written to disk.

A backbone added to the host without a tiny recipe here fails
``test_every_backbone_has_a_recipe``: the contract is checked for all of them.
"""

from __future__ import annotations

import numpy as np
import pytest
from adapt.host import make_host
from adapt.plan import validate_options
from adapt.testing import check_backbone
from adapt.plugins.embeddings.interactions_source import Catalogue

from tests.tiny import bert_checkpoint, decoder_checkpoint, encoder_checkpoint, roberta_checkpoint

HOST = make_host()


@pytest.fixture(scope="session")
def recipes(tmp_path_factory):
    """backbone name (or "name/task" where a task needs another model) -> (checkpoint, arch, options) of a tiny model."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "bert": (str(bert_checkpoint(root / "bert")), None, {"max_length": 32}),
        "roberta": (str(roberta_checkpoint(root / "roberta")), None, {"max_length": 32}),
        "mobilenet": (None, "mobilenetv3_small_050", {"image_size": 32}),
        "mobilenet/object-detection": (None, "mobilenetv3_small_050", {"image_size": 64, "head": {"channels": 16, "depth": 1}}),
        "transformers": (str(encoder_checkpoint(root / "distilbert", "distilbert")), None, {"max_length": 32}),
        "transformers/text-generation": (str(decoder_checkpoint(root / "gpt2", "gpt2", causal_lm=True)), None, {"max_length": 32}),
        "item-table": (None, None, {"width": 8, "buckets": 64}),
    }


CATALOGUE = Catalogue(ids=("sport/001", "tech/042", "biz/007"), texts=("sport/001", "tech/042", "biz/007"))
EXAMPLES = {
    "text-classification": [{"text": "obama visited paris", "label": 1}, {"text": "the market fell", "label": 0}],
    "token-classification": [{"tokens": ["obama", "visited", "paris"], "tags": [1, 0, 2]}, {"tokens": ["shares", "rose"], "tags": [0, 0]}],
    "image-classification": [{"image": np.full((8, 8), 200, np.uint8), "label": 2}, {"image": np.zeros((12, 10, 3), np.uint8), "label": 0}],
    "text-generation": [{"prompt": "obama visited", "completion": " paris"}, {"text": "the market fell"}],
    "text-embedding": [{"query": "obama visited paris", "positive": "the market fell"}, {"query": "shares rose", "positive": "the team won"}],
    "image-embedding": [{"image": np.full((8, 8), 200, np.uint8), "label": 1}, {"image": np.zeros((12, 10, 3), np.uint8), "label": 0}],
    "recommendation": [  # two users and a catalogue item; the item tower sees each distinct item's text once (the task's flatten)
        {"user": "u1", "history": [0], "target": 1, "catalogue": CATALOGUE},
        {"user": "u2", "history": [1], "target": 2, "catalogue": CATALOGUE},
        {"item": 0, "catalogue": CATALOGUE},
    ],
    "object-detection": [{"image": np.full((40, 50, 3), 90, np.uint8), "boxes": [[2.0, 3.0, 20.0, 30.0], [25.0, 5.0, 48.0, 18.0]], "labels": [2, 0]}, {"image": np.zeros((20, 20), np.uint8), "boxes": [], "labels": []}],
}

CASES = [(name, task) for name in HOST.backbones.names() for task in HOST.backbones.get(name).tasks]


def test_every_backbone_has_a_recipe(recipes):
    assert set(HOST.backbones.names()) <= set(recipes)


@pytest.mark.parametrize("name, task", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_backbone_contract(name, task, recipes, tmp_path):
    backbone = HOST.backbones.get(name)
    checkpoint, arch, raw = recipes.get(f"{name}/{task}", recipes[name])
    options = validate_options(backbone, "backbone", raw, "backbone.options")
    garbage = tmp_path / "not-weights.safetensors"
    garbage.write_bytes(b"\x00 this is not a checkpoint")
    built = check_backbone(backbone, task=task, examples=EXAMPLES[task], checkpoint=checkpoint, arch=arch, options=options, methods=HOST.methods.names(), bad_checkpoint=str(garbage))
    if name == "item-table":  # a lookup table: no blocks and nothing for LoRA; it is new, so it all trains under freeze
        assert set(built.new_parameters) == {n for n, _ in built.model.named_parameters()}
        return
    assert built.blocks, "every built-in backbone names its blocks"
    from adapt.families import default_target_names

    assert default_target_names(built.families, HOST.methods.get("lora").default_families), "every built-in backbone has a family LoRA adapts by default"
