"""The training fast path keeps the maths: every switch trains to the same losses,
and the model comes back to the form the backbone built (eager attention, NCHW)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapt import engine, fast_path
from adapt.plugins.transformers import cls_last_layer
from adapt.config import FastConfig, TrainConfig
from adapt.engine import Trainer, TrainingError
from adapt.host import make_host
from adapt.plan import validate_options
from adapt.plugins.methods.lora_layers import LoRAConv2d
from tests.tiny import bert_checkpoint

SENTENCES = ["the team won the match", "shares fell on the market", "guitar music plays in paris", "obama visited london"]


def text_setup(tmp_path: Path):
    """A tiny BERT + LoRA, the same weights every time (dropout off, so that the
    attention kernels, not their random streams, are compared)."""
    host = make_host(autoload=False)
    backbone, method = host.backbones.get("bert"), host.methods.get("lora")
    folder = tmp_path.parent / "bert"
    if not folder.exists():
        torch.manual_seed(0)
        bert_checkpoint(folder, dropout=0.0)
    torch.manual_seed(0)
    built = backbone.build("text-classification", 2, checkpoint=str(folder), arch=None, options=validate_options(backbone, "b", {}, "b"))
    torch.manual_seed(0)
    method.apply(built, validate_options(method, "m", {"r": 2, "alpha": 4}, "m"), backbone.default_targets("lora"))
    collate = backbone.collator(built, validate_options(backbone, "b", {}, "b"))
    examples = [{"text": SENTENCES[i % 4] + " and" * (i % 5), "label": i % 2} for i in range(24)]
    return host, built, method, collate, examples


def train(tmp_path: Path, name: str, **settings) -> tuple[list[float], Trainer]:
    host, built, method, collate, examples = text_setup(tmp_path / name)
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, device="cpu", checkpoint_every=0, **settings)
    trainer = Trainer(built=built, method=method, task=host.tasks.get("text-classification"), collate=collate, train=examples, val=[], label_names=["a", "b"], config=config, run_dir=tmp_path / name)
    result = trainer.fit()
    return [row["train_loss"] for row in result.history], trainer


def test_sdpa_attention_trains_like_eager_and_is_switched_back(tmp_path):
    eager, _ = train(tmp_path, "eager", fast={"attention": "eager"})
    sdpa, trainer = train(tmp_path, "sdpa")
    assert sdpa == pytest.approx(eager, rel=1e-5)
    assert trainer.built.model.model.config._attn_implementation == "eager"  # the export sees eager attention


def test_loader_workers_give_the_same_losses(tmp_path):
    inline, _ = train(tmp_path, "inline")
    workers, _ = train(tmp_path, "workers", workers=2)
    assert workers == inline


def test_cls_only_last_layer_trains_like_the_full_layer_and_is_switched_back(tmp_path):
    full, _ = train(tmp_path, "full", fast={"cls_last_layer": False})
    cls_only, trainer = train(tmp_path, "cls")  # auto: on a CPU
    assert cls_only == pytest.approx(full, rel=1e-5)
    assert "forward" not in cls_last_layer.last_layer(trainer.built.model.model).__dict__  # merge and export see the full layer
    fast = fast_path.prepare(trainer.built.model, FastConfig(), torch.device("cpu"), trainer.built.switches)
    assert "last layer on [CLS] only" in fast.describe() and fast.as_dict()["cls_last_layer"]
    fast.restore()


def test_pinned_batches_train_the_same_and_stay_off_without_cuda(tmp_path, monkeypatch):
    """Pinning needs a CUDA driver, which this machine lacks: the driver is faked
    (``fast_path._can_pin`` and ``Tensor.pin_memory``) to check that every
    collated batch goes through ``pin_memory`` and that training is unchanged."""
    assert not fast_path.prepare(torch.nn.Linear(2, 2), FastConfig(), torch.device("cpu")).pin_memory  # auto: CUDA only
    plain, _ = train(tmp_path, "plain")
    pinned_batches = []

    def fake_pin(tensor: torch.Tensor) -> torch.Tensor:
        pinned_batches.append(tensor.shape)
        return tensor.clone()

    monkeypatch.setattr(fast_path, "_can_pin", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    pinned, trainer = train(tmp_path, "pinned", fast={"pin_memory": True})
    assert pinned == plain
    assert len(pinned_batches) == 2 * 3 * 4  # 2 epochs x 3 batches x (input_ids, attention_mask, token_type_ids, labels)
    assert "pinned batches" in fast_path.prepare(torch.nn.Linear(2, 2), FastConfig(), torch.device("cuda")).describe()  # auto on CUDA


def test_prepare_and_restore_on_a_cnn(host_with_tiny):
    backbone = host_with_tiny.backbones.get("tiny-cnn")
    built = backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    fast = fast_path.prepare(built.model, FastConfig(), torch.device("cpu"))
    assert fast.channels_last and fast.attention is None and fast.compile is None  # compile: auto is CUDA only
    assert built.model.stem.weight.is_contiguous(memory_format=torch.channels_last)
    fast.restore()
    assert built.model.stem.weight.is_contiguous()
    assert fast_path.prepare(built.model, FastConfig(channels_last=False, compile=True), torch.device("cpu")).describe() == "torch.compile (default)"


def test_compiled_training_matches_eager_on_cpu(host_with_tiny, tmp_path):
    """torch.compile (inductor, forward and backward) through LoRA's convolution branch."""
    host = host_with_tiny
    backbone, method = host.backbones.get("tiny-cnn"), host.methods.get("lora")
    generator = torch.Generator().manual_seed(0)
    examples = [{"image": torch.randint(0, 255, (8, 8), generator=generator), "label": i % 10} for i in range(64)]
    losses = {}
    for compile_ in (False, True):
        built = backbone.build("image-classification", 10, checkpoint=None, arch=None, options=None)
        torch.manual_seed(0)
        method.apply(built, validate_options(method, "m", {"r": 2, "alpha": 4, "targets": ["blocks.1.0"]}, "m"), [])
        config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, device="cpu", checkpoint_every=0, fast={"compile": compile_})
        trainer = Trainer(built=built, method=method, task=host.tasks.get("image-classification"), collate=backbone.collator(built, None), train=examples, val=[], label_names=[str(i) for i in range(10)], config=config, run_dir=tmp_path / str(compile_))
        losses[compile_] = trainer.fit().history[0]["train_loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_lora_conv_branch_equals_the_merged_kernel(groups):
    """The two ways LoRAConv2d trains (low-rank branch, merged kernel) give the same outputs and gradients."""
    torch.manual_seed(0)
    layer = LoRAConv2d(torch.nn.Conv2d(8, 16, 3, padding=1, stride=2, groups=groups, bias=True), r=3, alpha=6).double()
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)  # float64: the two forms differ only by rounding
    results = []
    for branch in (True, False):
        layer.zero_grad()
        layer._branch_is_cheaper = lambda b=branch: b  # noqa: B023 - pick the form
        out = layer.train()(x)
        out.square().sum().backward()
        results.append((out.detach(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone()))
    for branch_value, merged_value in zip(*results):
        torch.testing.assert_close(branch_value, merged_value, rtol=1e-10, atol=1e-10)


def test_branch_is_chosen_where_it_is_cheaper():
    pointwise = LoRAConv2d(torch.nn.Conv2d(64, 64, 1), r=8, alpha=16)
    depthwise = LoRAConv2d(torch.nn.Conv2d(64, 64, 3, groups=64), r=8, alpha=16)
    assert pointwise._branch_is_cheaper() and not depthwise._branch_is_cheaper()


def test_deferred_loss_check_still_names_the_batch_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    """On a GPU the loss is read back every few steps; a NaN found late still stops the
    run before any checkpoint holds it (simulated on the CPU by reading every 4 steps)."""
    monkeypatch.setattr(engine, "sync_interval", lambda device: 4)
    host, built, method, collate, examples = text_setup(tmp_path)
    config = TrainConfig(epochs=1, batch_size=2, lr=1e-2, device="cpu", checkpoint_every=4)
    poisoned = {"n": 0}
    real_loss = host.tasks.get("text-classification").loss

    class PoisonAtSix:
        def __getattr__(self, name):
            return getattr(host.tasks.get("text-classification"), name)

        def loss(self, logits, labels):
            poisoned["n"] += 1
            value = real_loss(logits, labels)
            return value * float("nan") if poisoned["n"] == 6 else value

    trainer = Trainer(built=built, method=method, task=PoisonAtSix(), collate=collate, train=examples, val=[], label_names=["a", "b"], config=config, run_dir=tmp_path / "run")
    with pytest.raises(TrainingError, match="became nan at epoch 1, batch 6"):
        trainer.fit()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["step"] == 4  # the checkpoint at step 6 was never written
    assert all(torch.isfinite(t).all() for t in saved["trainable"].values())
