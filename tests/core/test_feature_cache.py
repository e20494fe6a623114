"""Linear probes train on cached features (adapt.feature_cache, ``train.cache_features``):
the same maths as the uncached loop under the probe rule (the frozen part in eval mode),
and never used where it would not reproduce the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from adapt import feature_cache
from adapt.config import TrainConfig
from adapt.engine import Trainer
from adapt.host import make_host
from adapt.plan import validate_options
from tests.tiny import bert_checkpoint

SENTENCES = ["markets rally on strong earnings", "the striker scored twice", "shares fell after the report", "a late goal won the cup"]
HOST = make_host(autoload=False)


def probe_setup(folder: Path, method_name: str = "freeze", raw: dict | None = None):
    """A tiny BERT (dropout 0.1, so eval mode matters) with only its classifier trainable."""
    backbone, method = HOST.backbones.get("bert"), HOST.methods.get(method_name)
    checkpoint = folder.parent / "bert"
    if not checkpoint.exists():
        torch.manual_seed(0)
        bert_checkpoint(checkpoint, dropout=0.1)
    torch.manual_seed(0)
    built = backbone.build("text-classification", 2, checkpoint=str(checkpoint), arch=None, options=validate_options(backbone, "b", {}, "b"))
    method.apply(built, validate_options(method, "m", raw or {}, "m"), backbone.default_targets(method_name))
    collate = backbone.collator(built, validate_options(backbone, "b", {}, "b"))
    examples = [{"text": SENTENCES[i % 4] + " and" * (i % 5), "label": i % 2} for i in range(40)]
    return built, method, collate, examples


def train(folder: Path, **settings) -> tuple[Trainer, object]:
    built, method, collate, examples = probe_setup(folder)
    config = TrainConfig(**{"epochs": 3, "batch_size": 8, "lr": 5e-2, "device": "cpu", "checkpoint_every": 0, **settings})
    trainer = Trainer(built=built, method=method, task=HOST.tasks.get("text-classification"), collate=collate, train=examples[:32], val=examples[32:], label_names=["a", "b"], config=config, run_dir=folder)
    return trainer, trainer.fit()


def test_a_cached_probe_trains_exactly_like_the_uncached_one(tmp_path):
    cached, with_cache = train(tmp_path / "cached")
    plain, without = train(tmp_path / "plain", cache_features=False)
    assert cached.cache is not None and plain.cache is None
    assert with_cache.fast_path["feature_cache"] == {"head": "model.classifier", "train_examples": 32, "val_examples": 8, "seconds": pytest.approx(cached.cache.seconds, abs=0.01)}
    assert without.fast_path["feature_cache"] == {"head": "model.classifier", "used": False}
    losses = [[row["train_loss"] for row in result.history] for result in (with_cache, without)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0][-1] < losses[0][0]
    vals = [[row["val_loss"] for row in result.history] for result in (with_cache, without)]
    assert vals[0] == pytest.approx(vals[1], rel=1e-5)
    for name, weight in cached.built.model.model.classifier.state_dict().items():
        torch.testing.assert_close(weight, plain.built.model.model.classifier.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_only_a_small_head_holding_every_trainable_parameter_is_a_probe(tmp_path):
    built, *_ = probe_setup(tmp_path / "freeze")
    assert feature_cache.probe_head(built.model, built.head)[0] == "model.classifier"
    lora, *_ = probe_setup(tmp_path / "lora", "lora", {"r": 2})
    assert feature_cache.probe_head(lora.model, lora.head) is None  # LoRA trains inside every layer
    deeper, *_ = probe_setup(tmp_path / "deeper", "freeze", {"last_blocks": 1})
    assert feature_cache.probe_head(deeper.model, deeper.head) is None


def test_lora_in_every_encoder_layer_of_an_embedding_model_is_not_a_probe(tmp_path):
    """The #28 case: LoRA on every layer of a pooled encoder (no classifier) trains only
    inside ``model.encoder``, under half the weights (the embedding table is the rest), so a
    guess from parameter shares took it for a probe and ran the embeddings in eval mode.
    A probe is only what trains the backbone's declared head."""
    from adapt.plugins.transformers.hf_text import TextOptions, TransformersTextBackbone
    from adapt.plugins.transformers.testing import tiny_text_checkpoint
    from adapt.testing import make_test_host

    checkpoint = tiny_text_checkpoint(tmp_path / "bert", words=[f"w{i}" for i in range(3000)])  # a large table, as MiniLM's
    built = TransformersTextBackbone().build("text-embedding", 0, checkpoint=str(checkpoint), arch=None, options=TextOptions(max_length=16))
    lora = make_test_host().methods.get("lora")
    lora.apply(built, lora.options_schema(r=2, targets="all-linear"), [])
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    encoder = sum(p.numel() for n, p in built.model.named_parameters() if n.startswith("model.encoder."))
    assert trainable and all(n.startswith("model.encoder.") for n in trainable)
    assert encoder / sum(p.numel() for p in built.model.parameters()) <= feature_cache.MAX_HEAD_SHARE  # what fooled the share rule
    assert feature_cache.probe_head(built.model, built.head) is None


def test_a_head_whose_output_is_changed_afterwards_is_not_cached():
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(4, 16), nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.head(torch.relu(self.body(x)))

    model = Doubled()
    model.body.requires_grad_(False)
    examples = [{"x": torch.randn(4), "labels": torch.tensor(i % 2)} for i in range(6)]

    def collate(items):
        return {"x": torch.stack([e["x"] for e in items]), "labels": torch.stack([e["labels"] for e in items])}

    assert feature_cache.probe_head(model, ("head",))[0] == "head"
    why = feature_cache.build(model, "head", {"train": examples, "val": []}, collate, batch_size=4, device=torch.device("cpu"), dtype=None)
    assert why == "the model's output is not the head's output (something runs after the head)"


def test_a_probe_with_caching_off_still_runs_the_frozen_part_in_eval_mode(tmp_path):
    trainer, _ = train(tmp_path / "plain", cache_features=False, epochs=1)
    model = trainer.built.model
    feature_cache.set_probe_modes(model, trainer.probe[1])
    dropouts = [m for name, m in model.named_modules() if isinstance(m, nn.Dropout) and not name.startswith("model.classifier")]
    assert dropouts and not any(m.training for m in dropouts) and model.model.classifier.training
