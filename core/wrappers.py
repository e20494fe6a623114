"""Thin nn.Module wrappers that give every backbone the same calling convention:
``model(**inputs)`` returns the logits tensor, with inputs named as in the
exported graph. Imported only where a model is built (this module imports torch).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class LogitsOnly(nn.Module):
    """A transformers model whose forward returns the logits tensor alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(input_ids=input_ids, **kwargs).logits


class PooledEncoder(nn.Module):
    """A transformers encoder (``AutoModel``) as a sentence embedder: its last hidden
    states pooled (``mean`` over the tokens that are not padding, as sentence-transformers
    checkpoints such as all-MiniLM-L6-v2 are trained; or ``cls``, the first token), then,
    with ``dim`` > 0, a new linear projection to ``dim``."""

    def __init__(self, model: nn.Module, pooling: str = "mean", dim: int = 0) -> None:
        super().__init__()
        self.model, self.pooling = model, pooling
        hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0))
        self.projection = nn.Linear(hidden, dim) if dim else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        states = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = (
                (attention_mask if attention_mask is not None else torch.ones_like(input_ids))
                .unsqueeze(-1)
                .to(states.dtype)
            )
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.projection(pooled) if self.projection is not None else pooled


class PixelClassifier(nn.Module):
    """An image model (timm's take ``x``) whose forward takes ``pixel_values`` by name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def wrap_built(built: Any, wrapper: nn.Module, new: Sequence[str] = (), head: Sequence[str] | None = None) -> Any:
    """``built`` with its model inside ``wrapper`` (as ``wrapper.model``), for a task's
    ``wrap_model``: every module name it records gains the ``model.`` prefix, ``new`` (the
    wrapper's own parameters: identity centres, a detection head) join the parameters that
    train under every method, and ``head`` (the wrapper's own modules) replaces the head."""
    from dataclasses import replace

    def inside(names: Sequence[str]) -> tuple[str, ...]:
        return tuple(f"model.{n}" for n in names)

    own = dict(wrapper.named_parameters())
    return replace(
        built,
        model=wrapper,
        head=inside(built.head) if head is None else tuple(head),
        new_parameters=inside(built.new_parameters) + tuple(n for n in new if n in own),
        blocks=inside(built.blocks),
        families={family: list(inside(names)) for family, names in built.families.items()},
    )
