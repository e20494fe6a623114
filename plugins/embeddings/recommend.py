"""Two-tower recommendation, the parts that do not depend on a backbone.

The item tower is an embedding model (a text backbone over the item's text); the user
tower pools a user's history: the L2-normalised mean of the vectors of the last items
the user interacted with. A user's recommendations are the catalogue's items ranked by
cosine to that vector, the items of the pooled history left out.

* :func:`rank_of_targets` ranks each query's held-out item among the catalogue (ties
  broken by catalogue order, so a constant score earns nothing) and
  :func:`rank_metrics` (adapt.plugins.embeddings.metrics) turns ranks into ``recall@k``, ``mrr`` and ``ndcg@10``: the
  same
  code scores the model and the popularity baseline (:func:`popularity_scores`).
* :class:`UserTower` is the user tower as a graph over the exported item index, so a
  device needs only onnxruntime and numpy: ``history`` (rows of the index, -1 padding)
  in, the user's vector and a score per item (seen items at -inf) out.
"""

from __future__ import annotations

import io
import warnings
from typing import Iterable, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


#: The file beside the item index that holds the user tower.
USER_TOWER = "user_tower.onnx"


def rank_of_targets(scores: np.ndarray, seen: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """The 1-based rank of each row's target column among ``scores`` (queries x items),
    its ``seen`` columns left out; a score tied with the target's counts as ahead when
    its column comes first. A target outside the columns (-1) ranks last."""
    scores = np.array(scores, dtype=np.float64)  # a copy: seen items are masked in it
    ranks = np.empty(len(targets))
    columns = np.arange(scores.shape[1])
    for row, (history, target) in enumerate(zip(seen, targets)):
        line = scores[row]
        line[[c for c in history if c >= 0 and c != target]] = -np.inf
        if target < 0:
            ranks[row] = scores.shape[1] + 1
            continue
        ahead = (line > line[target]) | ((line == line[target]) & (columns < target))
        ranks[row] = int(ahead.sum()) + 1
    return ranks


def user_vectors(items: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """Each history's pooled vector: the normalised mean of its rows of ``items``."""
    pooled = np.stack([items[list(h)].mean(axis=0) if len(h) else np.zeros(items.shape[1]) for h in histories])
    return pooled / (np.linalg.norm(pooled, axis=1, keepdims=True) + 1e-12)


def popularity_scores(interactions: Iterable[tuple[str, int]], items: int) -> np.ndarray:
    """How many distinct users interacted with each item (``interactions``: (user, item) pairs)."""
    counts = np.zeros(items)
    for _, item in set(interactions):
        if 0 <= item < items:
            counts[item] += 1
    return counts


def export_user_tower(index: np.ndarray) -> bytes:
    """:class:`UserTower` over ``index`` (items x dim) as ONNX bytes (dynamic batch and history)."""
    tower = UserTower(torch.from_numpy(np.asarray(index, dtype=np.float32)))
    history = torch.tensor([[0, -1]], dtype=torch.int64)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: the graph is plain ops
        torch.onnx.export(
            tower,
            (history,),
            buffer,  # type: ignore[arg-type]  # a file-like object is accepted
            input_names=["history"],
            output_names=["user", "scores"],
            dynamic_axes={"history": {0: "batch", 1: "items"}, "user": {0: "batch"}, "scores": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


class UserTower(nn.Module):
    """``history`` (batch x N rows of ``index``, -1 padding) -> the pooled, normalised
    user vector and its cosine to every item, the history's own items at -inf."""

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index)

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = cast(torch.Tensor, self.index)
        valid = (history >= 0).to(index.dtype)
        rows = index[history.clamp(min=0)] * valid[..., None]
        user = F.normalize(rows.sum(dim=1), dim=-1)
        scores = user @ index.T
        seen = torch.zeros_like(scores).scatter_add(1, history.clamp(min=0), valid)
        return user, scores.masked_fill(seen > 0, float("-inf"))
