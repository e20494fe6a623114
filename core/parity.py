"""How closely one form of the model reproduces another, and the gate it must pass.

A check that only records a number is not a check: :func:`verdict` turns a
:class:`~adapt.interfaces.Parity` into pass or fail, and NaN or Inf anywhere is
a failure, never a difference of zero.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from adapt.interfaces import Parity


def _flat(predictions: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for p in predictions:
        out.extend(p if isinstance(p, list) else [p])
    return out


def compare(
    reference_logits: Sequence[Any],
    logits: Sequence[Any],
    reference_predictions: Sequence[Any],
    predictions: Sequence[Any],
    agreement: Callable[[Sequence[Any], Sequence[Any]], float | None] | None = None,
    agreement_name: str = "agreement",
) -> Parity:
    """Max abs difference of logits (batch by batch), the share of equal predicted
    labels (or the task's own ``agreement(reference, candidate)`` where it has one:
    object-detection matches boxes), the reference's largest logit, and which side
    holds NaN or Inf (if any): then the difference is NaN. ``agreement_of`` says which of
    the two the share is (the task's ``agreement_name``), so a report never calls a cosine
    or a box match a label agreement."""
    import torch

    diff, scale, bad_reference, bad_candidate = 0.0, 0.0, False, False
    for a, b in zip(reference_logits, logits):
        a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
        if not a.numel():
            continue
        a_finite, b_finite = bool(torch.isfinite(a).all()), bool(torch.isfinite(b).all())
        bad_reference, bad_candidate = bad_reference or not a_finite, bad_candidate or not b_finite
        if a_finite and b_finite:
            diff = max(diff, float((a - b).abs().max()))
            scale = max(scale, float(a.abs().max()))
    nonfinite = {(True, True): "both", (True, False): "reference", (False, True): "candidate"}.get(
        (bad_reference, bad_candidate), ""
    )
    found = agreement(reference_predictions, predictions) if agreement is not None else None  # None: the task has none
    measured = "labels" if found is None else agreement_name
    if found is not None:
        share = float(found)
    else:
        ref, got = _flat(reference_predictions), _flat(predictions)
        share = sum(1 for x, y in zip(ref, got) if x == y) / len(ref) if ref else 1.0
    return Parity(
        max_abs_diff=math.nan if nonfinite else diff,
        label_agreement=share,
        examples=len(reference_predictions),
        scale=scale,
        nonfinite=nonfinite,
        agreement_of=measured,
    )


def verdict(parity: Parity, bound: float | None, *, reference: str, candidate: str) -> str:
    """Why ``candidate`` fails its check against ``reference``, or ``""`` when it passes.
    ``bound``: the largest max abs difference allowed; None for a form that need not
    be exact (int8), which must still hold finite values only."""
    if parity.nonfinite:
        who = {"reference": reference, "candidate": candidate, "both": f"{reference} and of {candidate}"}[
            parity.nonfinite
        ]
        return f"the logits of {who} hold NaN or Inf"
    if bound is not None and not parity.max_abs_diff <= bound:
        return f"max abs difference of the logits {parity.max_abs_diff:.3g} > {bound:.3g} allowed"
    return ""


def report_entry(parity: Parity, bound: float | None, verified: bool) -> dict[str, Any]:
    """The ``report.json`` entry of one form's parity (NaN written as null)."""
    return {
        "max_abs_diff": None if math.isnan(parity.max_abs_diff) else parity.max_abs_diff,
        "label_agreement": parity.label_agreement,
        "agreement_of": parity.agreement_of,
        "examples": parity.examples,
        "bound": bound,
        "verified": verified,
    }
