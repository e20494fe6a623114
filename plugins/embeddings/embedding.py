"""Embedding models: a backbone whose head projects to ``dim`` numbers, compared by cosine.

``EmbeddingModel`` wraps the backbone's model (built with ``dim`` outputs: its head is
the projection). Trained with a margin loss on identities (ArcFace, CosFace), it also
holds one learnt centre per identity, and its output row is ``[embedding (dim) |
cosine to each centre]``; without centres, the embedding alone. The centres are only
for training: the exported graph's ``embedding`` output is the L2-normalised first
``dim`` columns (``NormalisedEmbedding``), and an application compares those.

The losses (Deng et al., "ArcFace", 2019; Wang et al., "CosFace", 2018): with ``cos``
the cosine of an embedding to its identity's centre, the logit of the true identity
becomes ``s * cos(theta + m)`` (ArcFace) or ``s * (cos - m)`` (CosFace), every other
logit ``s * cos``, then cross-entropy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingModel(nn.Module):
    """``model`` (the backbone's, with a ``dim``-output head) and, for margin losses, the
    identity centres; forward returns ``[embedding | cosines to the centres]``."""

    def __init__(self, model: nn.Module, dim: int, identities: int = 0) -> None:
        super().__init__()
        self.model, self.dim = model, dim
        self.centres = nn.Parameter(torch.randn(identities, dim) * 0.01) if identities else None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        embedding = self.model(*args, **kwargs)
        if self.centres is None:
            return embedding
        cosines = F.normalize(embedding.float(), dim=-1) @ F.normalize(self.centres.float(), dim=-1).T
        return torch.cat([embedding, cosines.to(embedding.dtype)], dim=-1)


class NormalisedEmbedding(nn.Module):
    """The exported graph: the model's raw output (``logits``, for parity) and
    ``embedding``, its first ``dim`` columns (all, for None) L2-normalised."""

    def __init__(self, model: nn.Module, dim: int | None) -> None:
        super().__init__()
        self.model, self.dim = model, dim

    def forward(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.model(*args)
        return raw, F.normalize(raw[..., : self.dim], dim=-1)


def wrapped(built: Any, wrapper: nn.Module, new: Sequence[str] = ()) -> Any:
    """``built`` with its model inside ``wrapper`` (adapt.wrappers.wrap_built)."""
    from adapt.wrappers import wrap_built

    return wrap_built(built, wrapper, new)


def margin_loss(cosines: torch.Tensor, labels: torch.Tensor, kind: str, margin: float, scale: float) -> torch.Tensor:
    """ArcFace (``kind="arcface"``: the true class's angle grows by ``margin`` radians) or
    CosFace (its cosine shrinks by ``margin``), scaled by ``scale``, then cross-entropy."""
    known = labels >= 0  # an identity unseen in training (val, test) has no centre
    if not bool(known.any()):
        return cosines.sum() * 0.0
    cosines, labels = cosines[known].float().clamp(-1.0, 1.0), labels[known]
    true = cosines.gather(1, labels[:, None])
    if kind == "arcface":
        theta = torch.acos(true.clamp(-1 + 1e-7, 1 - 1e-7))
        # past pi - m the angle would wrap round: fall back to CosFace's penalty there (as insightface does)
        moved = torch.where(theta + margin < math.pi, torch.cos(theta + margin), true - margin * math.sin(margin))
    else:
        moved = true - margin
    logits = cosines.scatter(1, labels[:, None], moved) * scale
    return F.cross_entropy(logits, labels)


def info_nce(queries: torch.Tensor, documents: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multiple-negatives ranking: each query's own document against every other in the batch."""
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(documents.float(), dim=-1).T / temperature
    return F.cross_entropy(scores, torch.arange(len(queries), device=queries.device))
