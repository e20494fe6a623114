"""Linear probes compute the frozen backbone once (``train.cache_features``).

A run is a *probe* when every trainable parameter belongs to the task head its backbone
declared (``BuiltModel.head``) and sits in one small module at the end of the model
(``method: freeze`` with only the head trained: the classifier of a transformers or timm
model). Then nothing before the head changes while training, so
the head's input for each example can be computed once and the head trained on it.

The rule that makes cached and uncached training the same maths: in a probe, the frozen
part always runs in eval mode (dropout off, BatchNorm statistics fixed), with or without
the cache; only the head is in train mode. The cache is used only when it provably
reproduces the model: the head is called once per forward with one tensor, every
example's feature has the same shape, no augmentation changes the inputs, and on every
batch the head applied to the captured feature gives the model's own output (a cheap
check: the head is small).
Otherwise training runs uncached, and the reason is said.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

#: A head holding more than this share of the model's parameters is not worth caching for.
MAX_HEAD_SHARE = 0.5


@dataclass
class FeatureCache:
    """The head and each split's cached examples ({"features", "labels"})."""

    head: nn.Module
    head_name: str
    train: list[dict[str, torch.Tensor]] = field(default_factory=list)
    val: list[dict[str, torch.Tensor]] = field(default_factory=list)
    seconds: float = 0.0
    #: the head as the loop calls a model, for training and validation alike
    runner: HeadOnly = field(init=False)

    def __post_init__(self) -> None:
        self.runner = HeadOnly(self.head)

    def split(self, name: str) -> list[dict[str, torch.Tensor]]:
        """The cached examples of ``name`` (train or val)."""
        return {"train": self.train, "val": self.val}[name]

    def describe(self) -> dict[str, Any]:
        return {
            "head": self.head_name,
            "train_examples": len(self.train),
            "val_examples": len(self.val),
            "seconds": round(self.seconds, 2),
        }


class HeadOnly(nn.Module):
    """The head as the training loop calls a model: ``runner(**batch) -> logits``."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def collate(examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        "features": torch.stack([e["features"] for e in examples]),
        "labels": torch.stack([e["labels"] for e in examples]),
    }


def probe_head(model: nn.Module, head: Sequence[str] = ()) -> tuple[str, nn.Module] | None:
    """The smallest module holding every trainable parameter, when it is a small part
    at the model's end and every trainable parameter belongs to the task head the
    backbone declared (``BuiltModel.head``): a probe is what the method made of the
    model (only the head trains), not a guess from where the trainable weights sit
    (LoRA in every encoder layer of an embedding model is not a probe, although the
    encoder is under half the weights). None when the model is not a probe."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names or not head or not all(any(n.startswith(h + ".") for h in head) for n in names):
        return None
    prefix = os.path.commonprefix([n.split(".")[:-1] for n in names])
    if not prefix:
        return None
    name = ".".join(prefix)
    module = model.get_submodule(name)
    share = sum(p.numel() for p in module.parameters()) / max(1, sum(p.numel() for p in model.parameters()))
    return (name, module) if share <= MAX_HEAD_SHARE else None


def set_probe_modes(model: nn.Module, head: nn.Module) -> None:
    """The probe rule: the frozen part in eval mode, the head in train mode."""
    model.eval()
    head.train()


def build(
    model: nn.Module,
    head_name: str,
    splits: dict[str, Sequence[Any]],
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
) -> FeatureCache | str:
    """Each split's head inputs, computed in eval mode without gradients; or why not."""
    head = model.get_submodule(head_name)
    cache, started = FeatureCache(head, head_name), time.perf_counter()
    captured: list[Any] = []
    shape: tuple[int, ...] | None = None
    hook = head.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append((args, kwargs)), with_kwargs=True
    )
    was_training = model.training
    model.eval()
    try:
        for split, examples in splits.items():
            for start in range(0, len(examples), batch_size):
                batch = {k: v.to(device) for k, v in collate_fn(list(examples[start : start + batch_size])).items()}
                labels = batch.pop("labels")
                captured.clear()
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    output = model(**batch)
                    problem = _uncacheable(captured, head, output)
                if problem:
                    return problem
                features = captured[0][0][0].float()
                shape = shape or tuple(features.shape[1:])
                if tuple(features.shape[1:]) != shape:
                    return (
                        f"the head's input differs in shape between batches ({shape} and {tuple(features.shape[1:])})"
                    )
                # held on the CPU like any batch, so the loop pins and moves them as usual
                cache.split(split).extend(
                    {"features": f, "labels": y} for f, y in zip(features.detach().cpu(), labels.cpu())
                )
    finally:
        hook.remove()
        model.train(was_training)
    cache.seconds = time.perf_counter() - started
    return cache


def _uncacheable(captured: list[Any], head: nn.Module, output: Any) -> str:
    """Why this batch's capture cannot stand in for the model ('' when it can)."""
    if len(captured) != 1:
        return f"the head ran {len(captured)} times in one forward"
    args, kwargs = captured[0]
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return "the head takes more than one tensor"
    if not isinstance(output, torch.Tensor):
        return "the model's output is not one tensor"
    again = head(args[0])
    if (
        not isinstance(again, torch.Tensor)
        or again.shape != output.shape
        or not torch.allclose(again.float(), output.float(), rtol=1e-5, atol=1e-6)
    ):
        return "the model's output is not the head's output (something runs after the head)"
    return ""
