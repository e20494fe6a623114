"""Train the last encoder layer of a BERT-family classifier on the [CLS] position only.

A sequence classifier's head (BERT's pooler, RoBERTa's classification head) reads
one position of the last layer's output, the first. In the last layer, every other
position's query, attention row, output projection and feed-forward block is
computed and then thrown away, and backpropagated as zeros. This computes them for
[CLS] alone: keys and values still come from every position, so the logits and
every gradient are those of the full layer (to float rounding). It saves about
10/12 of one layer's multiply-adds: by that count some 7% of a BERT-base step and
14% of a 6-layer MiniLM's (measured: docs/benchmarks.md).

The switch is an instance-level ``forward`` on the last layer (no module is
replaced, so parameter names and checkpoints are unchanged), and it only stays on
when a self-check passes: the whole model's logits on a small padded batch, with and
without it, must agree. Another architecture, head or transformers version that
does not fit fails the check and trains the full layer instead.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

#: Models whose layers have BERT's structure (attention.self.query/key/value,
#: attention.output, intermediate, output) and whose classifier reads position 0.
MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")


def last_layer(top: nn.Module) -> nn.Module | None:
    """The layer to switch, or None when ``top`` is not a BERT-family sequence classifier."""
    if getattr(top.config, "model_type", None) not in MODEL_TYPES or not type(top).__name__.endswith(
        "ForSequenceClassification"
    ):
        return None
    layers = getattr(getattr(getattr(top, "base_model", None), "encoder", None), "layer", None)
    if not layers or getattr(top.config, "is_decoder", False) or getattr(top.config, "add_cross_attention", False):
        return None
    layer = layers[-1]
    return layer if all(hasattr(layer, name) for name in ("attention", "intermediate", "output")) else None


def _cls_only_forward(
    layer: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args: object, **kwargs: object
) -> torch.Tensor:
    """The layer's output at position 0 only, shape (batch, 1, hidden). ``layer`` is a
    transformers BertLayer-shaped module (typed Any: its parts are found by name)."""
    self_attention = layer.attention.self
    batch, length, _ = hidden_states.shape
    heads, size = self_attention.num_attention_heads, self_attention.attention_head_size
    cls = hidden_states[:, :1]
    query = self_attention.query(cls).view(batch, 1, heads, size).transpose(1, 2)
    key = self_attention.key(hidden_states).view(batch, length, heads, size).transpose(1, 2)
    value = self_attention.value(hidden_states).view(batch, length, heads, size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[..., :1, :]  # the [CLS] query's row
    dropout = self_attention.dropout.p if layer.training else 0.0
    context = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=self_attention.scaling
    )
    attended = layer.attention.output(context.transpose(1, 2).reshape(batch, 1, heads * size), cls)
    return layer.output(layer.intermediate(attended), attended)


def switch_on(top: Any) -> tuple[Callable[[], None] | None, str]:
    """Switch ``top``'s last layer to [CLS]-only; return (undo, note), undo None when it stays off."""
    layer = last_layer(top)
    if layer is None:
        return None, ""
    device = next(top.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(int(top.config.vocab_size), 1000), (2, 12), generator=generator).to(device)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # one padded example, so the mask path is checked too

    def undo() -> None:
        layer.__dict__.pop("forward", None)  # the class's own forward again

    was_training = top.training
    top.eval()
    try:
        with torch.no_grad():
            full = top(input_ids=ids, attention_mask=mask).logits
            layer.forward = types.MethodType(_cls_only_forward, layer)
            cls_only = top(input_ids=ids, attention_mask=mask).logits
        agrees = cls_only.shape == full.shape and torch.allclose(cls_only, full, rtol=1e-3, atol=1e-4)
        note = "" if agrees else f"max difference {float((cls_only.float() - full.float()).abs().max()):.2e}"
    except Exception as exc:  # noqa: BLE001 - any misfit means: train the full layer
        agrees, note = False, f"{type(exc).__name__}: {exc}"
    finally:
        top.train(was_training)
    if not agrees:
        undo()
        return None, f"[CLS]-only last layer off: its self-check failed ({note})"
    return undo, ""
