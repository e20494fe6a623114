"""Thin nn.Module wrappers that give every backbone the same calling convention:
``model(**inputs)`` returns the logits tensor, with inputs named as in the
exported graph. Imported only where a model is built (this module imports torch).
"""

from __future__ import annotations

import torch
from torch import nn


class LogitsOnly(nn.Module):
    """A transformers model whose forward returns the logits tensor alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(input_ids=input_ids, **kwargs).logits


class PixelClassifier(nn.Module):
    """An image model (timm's take ``x``) whose forward takes ``pixel_values`` by name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)
