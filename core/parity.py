"""How closely one form of the model reproduces another on the same inputs."""

from __future__ import annotations

from typing import Any, Sequence

from adapt.interfaces import Parity


def _flat(predictions: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for p in predictions:
        out.extend(p if isinstance(p, list) else [p])
    return out


def compare(reference_logits: Sequence[Any], logits: Sequence[Any], reference_predictions: Sequence[Any], predictions: Sequence[Any]) -> Parity:
    """Max abs difference of logits (batch by batch) and the share of equal predicted labels."""
    diff = 0.0
    for a, b in zip(reference_logits, logits):
        diff = max(diff, float((a.float() - b.float()).abs().max())) if a.numel() else diff
    ref, got = _flat(reference_predictions), _flat(predictions)
    agreement = sum(1 for x, y in zip(ref, got) if x == y) / len(ref) if ref else 1.0
    return Parity(max_abs_diff=diff, label_agreement=agreement, examples=len(reference_predictions))
