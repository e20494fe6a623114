"""Is a quantised file's drop on the validation split real, or noise?

A gate that compares two scores on a small split decides by chance: on 116 queries
one query moves recall@10 by 0.009, so a budget of 0.01 is one query. Both files
are scored on the same examples, so the drop is judged *paired*: the per-example
differences (reference minus candidate) are resampled with replacement
(:data:`RESAMPLES` times, a fixed seed) and the 2.5th and 97.5th percentiles of
their mean bound the drop. The verdict:

* ``passed``: the drop is within the budget;
* ``rejected``: the drop is beyond the budget, and so is the whole interval (more
  than noise can explain);
* ``undecided``: the drop is beyond the budget but the interval reaches back inside
  it: the split is too small to tell. The file is not recommended (the gate stays
  conservative), and the report says so instead of calling it a loss.

Any non-finite score fails.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

#: Bootstrap resamples of the per-example differences.
RESAMPLES = 2000
#: Resamples drawn at once (bounds the memory to this many times the split's size).
CHUNK = 200


def paired_drop(reference: Sequence[float], candidate: Sequence[float], budget: float, seed: int = 0) -> dict[str, Any]:
    """The candidate's drop against the reference on the same examples, its 95% paired
    bootstrap interval, and the verdict against ``budget`` (see the module's docstring)."""
    import numpy as np

    ref, cand = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or not len(ref):
        raise ValueError(f"paired scores need the same examples: {ref.shape} and {cand.shape}")
    count = len(ref)
    if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
        return {
            "val_drop": math.nan,
            "drop_interval": None,
            "examples": count,
            "verdict": "rejected",
            "why": "a score is not finite (NaN or Inf)",
        }
    diff = ref - cand
    drop = float(diff.mean())
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [diff[rng.integers(0, count, (CHUNK, count))].mean(axis=1) for _ in range(RESAMPLES // CHUNK)]
    )
    low, high = (float(v) for v in np.quantile(means, [0.025, 0.975]))
    found: dict[str, Any] = {"val_drop": drop, "drop_interval": [low, high], "examples": count}
    if drop <= budget:
        wide = f"; the split cannot rule out a drop up to {high:.4g} ({count} examples)" if high > budget else ""
        return {**found, "verdict": "passed", "why": f"the drop {drop:.4g} is within the budget {budget:.4g}{wide}"}
    if low > budget:
        return {
            **found,
            "verdict": "rejected",
            "why": (
                f"the drop {drop:.4g} is beyond the budget {budget:.4g}, "
                f"and so is its 95% interval [{low:.4g}, {high:.4g}]"
            ),
        }
    return {
        **found,
        "verdict": "undecided",
        "why": (
            f"the split is too small to decide: the drop {drop:.4g} is beyond the budget {budget:.4g}, "
            f"but its 95% interval [{low:.4g}, {high:.4g}] over {count} examples reaches back inside it; "
            "a larger validation split (data.split.val) would decide"
        ),
    }
