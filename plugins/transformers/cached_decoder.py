"""A transformers causal LM as one graph for prompt and steps: the logits, or the logits
and the key/value cache extended (exported as the KV-cache decoder). Imports torch, so it
is imported where a decoder is built, not when the plugin registers."""

from __future__ import annotations


import torch
from torch import nn

from adapt.plugins.transformers.causal_lm import cache_argument, cache_of


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

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *past: torch.Tensor,
        **named_past: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        past = past or tuple(named_past.values())
        if not past:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits
        from transformers import DynamicCache

        cache = DynamicCache(config=getattr(self.model, "config", None))
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{cache_argument(self.model): cache},
        )
        present = [t for layer in cache_of(out).layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)
