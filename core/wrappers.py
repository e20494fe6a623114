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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        states = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.projection(pooled) if self.projection is not None else pooled


class PixelClassifier(nn.Module):
    """An image model (timm's take ``x``) whose forward takes ``pixel_values`` by name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


class CausalLMWithCache(nn.Module):
    """A transformers causal LM whose forward returns the logits alone, or, given the
    key/value cache of earlier tokens (``past``: key and value per layer, each
    (batch, heads, past_length, head_dim)), the logits and the cache extended by the
    new tokens. Exported with a cache, one graph serves both the prompt (past length 0)
    and each further token (a one-token input), so a token costs one step, not the prefix.
    The cache comes positionally (as the ONNX exporter passes it) or by its graph names
    (``past_key_values.0.key=...``, as ``model(**example_inputs)`` passes it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *past: torch.Tensor, **named_past: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        past = past or tuple(named_past.values())
        if not past:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits
        from transformers import DynamicCache

        from adapt.causal_lm import cache_argument, cache_of

        cache = DynamicCache(config=getattr(self.model, "config", None))
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **{cache_argument(self.model): cache})
        present = [t for layer in cache_of(out).layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)
