"""Helpers a task plugin may use (the built-in tasks do): a cross-entropy that skips the
positions marked :data:`adapt.interfaces.IGNORE_INDEX`, and an example described briefly
for an error message. Imports nothing heavy until called."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from adapt.interfaces import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

#: The most characters :func:`describe_example` shows.
SHORT = 120


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last axis of ``logits`` (any leading shape), in fp32, skipping
    labels equal to IGNORE_INDEX (padding, later sub-words, a prompt)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def describe_example(example: Mapping[str, Any]) -> str:
    """An example as a message shows it: its fields (an image's pixels left out), cut to :data:`SHORT` characters."""
    text = repr({k: v for k, v in example.items() if k != "image"})
    return text if len(text) < SHORT else text[: SHORT - 3] + "..."
