"""The cached decoder with ONNX Runtime's fused operators: each layer's attention as one
``com.microsoft`` GroupQueryAttention node (rotary, cache append and grouped-query
attention inside, the query, key and value projections packed into one MatMul) and the
MLP's gate and up projections packed into one MatMul.

Why: traced as transformers writes it, a Llama-shape layer is about 200 ONNX nodes
(shape arithmetic for every ``view``, rotary's halves, ``repeat_kv``'s expand, the cache's
concat, the causal mask); at batch 1 a step of generation is mostly their overhead, not the
matrix products. Fused, a layer is about a dozen nodes, onnxruntime-genai's layout
(docs/benchmarks.md has the tokens/s).

Only where it is exact: :func:`why_not_fused` names what a model has that the operator
does not do (sliding windows, soft-capping, per-head norms, a rotary embedding that
depends on the sequence length or turns part of each head); such a model exports unfused,
as before. The fused graph gives the unfused one's outputs
(adapt.plugins.transformers.cached_decoder) from the same inputs less ``position_ids``:
GroupQueryAttention counts positions from the attention mask (right padding, which the
collator makes), so the loop in predict.py drives either.
"""

from __future__ import annotations

import contextvars
from typing import Any, NamedTuple

import torch
from torch import nn

from adapt.plugins.transformers.cached_decoder import CausalLMWithCache

#: rotary embeddings whose angles depend only on the position (a table serves every length)
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


class Step(NamedTuple):
    """What every layer's GroupQueryAttention reads besides its own weights: the index of
    each row's last real token, the total length, the rotary tables and the cache (key and
    value per layer); each layer puts its extended cache into ``present``."""

    seqlens_k: torch.Tensor
    total: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    past: tuple[torch.Tensor, ...]
    present: dict[int, tuple[torch.Tensor, torch.Tensor]]


_STEP: contextvars.ContextVar[Step] = contextvars.ContextVar("adapt_fused_step")


class GroupQueryAttention(torch.autograd.Function):
    """ONNX Runtime's ``com.microsoft::GroupQueryAttention`` with packed QKV and rotary
    (``do_rotary=1``, halves not interleaved, as transformers' ``rotate_half``). The
    forward is the same arithmetic in PyTorch, so the fused module runs (and is tested)
    without ONNX Runtime; the exporter writes the one node of :meth:`symbolic`."""

    @staticmethod
    def forward(
        ctx: Any,
        qkv: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        seqlens_k: torch.Tensor,
        total: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        heads: int,
        kv_heads: int,
        head_dim: int,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = qkv.shape
        dim = head_dim
        split = qkv.view(batch, length, heads + 2 * kv_heads, dim).transpose(1, 2)
        query, key, value = split.split([heads, kv_heads, kv_heads], dim=1)
        start = past_key.shape[2]
        angles = torch.arange(start, start + length)
        query, key = _rotate(query, cos[angles], sin[angles]), _rotate(key, cos[angles], sin[angles])
        key, value = torch.cat([past_key, key], 2), torch.cat([past_value, value], 2)
        seen = torch.arange(key.shape[2])
        causal = seen[None, :] <= angles[:, None]
        real = seen[None, :] <= seqlens_k[:, None].long()  # right padding: keys past a row's end are not seen
        mask = causal[None, None] & real[:, None, None]
        groups = heads // kv_heads
        out = nn.functional.scaled_dot_product_attention(
            query,
            key.repeat_interleave(groups, 1),
            value.repeat_interleave(groups, 1),
            attn_mask=mask,
            scale=scale,
        )
        return out.transpose(1, 2).reshape(batch, length, heads * dim), key, value

    @staticmethod
    def symbolic(
        g: Any,
        qkv: Any,
        past_key: Any,
        past_value: Any,
        seqlens_k: Any,
        total: Any,
        cos: Any,
        sin: Any,
        heads: int,
        kv_heads: int,
        head_dim: int,
        scale: float,
    ) -> Any:
        absent = g.op("prim::Constant")
        absent.setType(torch._C.OptionalType.ofTensor())  # packed QKV: no separate key and value inputs
        out, key, value = g.op(
            "com.microsoft::GroupQueryAttention",
            qkv,
            absent,
            absent,
            past_key,
            past_value,
            seqlens_k,
            total,
            cos,
            sin,
            num_heads_i=heads,
            kv_num_heads_i=kv_heads,
            scale_f=scale,
            do_rotary_i=1,
            rotary_interleaved_i=0,
            outputs=3,
        )
        # the exporter cannot infer a contrib operator's outputs: their types, and the sizes that are fixed
        out.setType(qkv.type().with_sizes([None, None, heads * head_dim]))
        key.setType(past_key.type().with_sizes([None, kv_heads, None, head_dim]))
        value.setType(past_value.type().with_sizes([None, kv_heads, None, head_dim]))
        return out, key, value


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with halves (transformers' ``rotate_half``); tables (length, dim/2)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def _packed(layers: list[nn.Linear]) -> nn.Linear:
    """One Linear computing ``layers`` side by side (their outputs concatenated). The
    layers' own weights become views into the packed ones (the same values), so the
    packed copy costs no memory: a 0.6B decoder's export would otherwise hold a second
    gigabyte of MLP weights while it traces."""
    bias = layers[0].bias is not None
    out = nn.Linear(layers[0].in_features, sum(layer.out_features for layer in layers), bias=bias)
    with torch.no_grad():
        for kind in ("weight", "bias") if bias else ("weight",):
            packed = torch.cat([getattr(layer, kind).detach() for layer in layers])
            getattr(out, kind).data = packed
            start = 0
            for layer in layers:
                getattr(layer, kind).data = packed[start : start + layer.out_features]
                start += layer.out_features
    return out


class FusedAttention(nn.Module):
    """A transformers attention module as one GroupQueryAttention: called as the layer
    calls its ``self_attn``, it reads and replaces its layer's entry of the cache."""

    qkv: nn.Linear
    o_proj: nn.Module

    def __init__(self, attention: Any, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.qkv = _packed([attention.q_proj, attention.k_proj, attention.v_proj])
        self.o_proj = attention.o_proj
        self.layer_idx, self.heads, self.kv_heads = int(attention.layer_idx), heads, kv_heads
        self.head_dim, self.scale = int(attention.head_dim), float(attention.scaling)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        step = _STEP.get()
        index = self.layer_idx
        out, key, value = GroupQueryAttention.apply(
            self.qkv(hidden_states),
            step.past[2 * index],
            step.past[2 * index + 1],
            step.seqlens_k,
            step.total,
            step.cos,
            step.sin,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.scale,
        )
        step.present[index] = (key, value)
        return self.o_proj(out), None


class FusedMLP(nn.Module):
    """A gated MLP (``down(act(gate(x)) * up(x))``) with gate and up in one MatMul."""

    gate_up: nn.Linear
    down_proj: nn.Module
    act_fn: nn.Module

    def __init__(self, mlp: Any) -> None:
        super().__init__()
        self.gate_up = _packed([mlp.gate_proj, mlp.up_proj])
        self.down_proj, self.act_fn = mlp.down_proj, mlp.act_fn
        self.sizes = [mlp.gate_proj.out_features, mlp.up_proj.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.sizes, dim=-1)  # sizes as constants: one Split node
        return self.down_proj(self.act_fn(gate) * up)


class FusedCausalLM(CausalLMWithCache):
    """:class:`CausalLMWithCache` over a copy of the model whose attention and MLPs are
    fused; the rotary tables (one pair for all layers) are its buffers."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, model: nn.Module, cos: torch.Tensor, sin: torch.Tensor) -> None:
        super().__init__(model)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *past: torch.Tensor,
        **named_past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        past = past or tuple(named_past.values()) or self._empty_cache(input_ids)
        seqlens_k = (attention_mask.sum(1) - 1).to(torch.int32)
        total = torch.ones_like(attention_mask[0]).sum().to(torch.int32)
        present: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        token = _STEP.set(Step(seqlens_k, total, self.cos, self.sin, tuple(past), present))
        try:  # the layers read the cache from the step, not from a transformers Cache (which would copy it)
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits
        finally:
            _STEP.reset(token)
        return (logits, *(t for layer in sorted(present) for t in present[layer]))

    def _empty_cache(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from adapt.plugins.transformers.causal_lm import cache_shapes

        batch = input_ids.shape[0]
        return tuple(torch.zeros(batch, heads, 0, dim) for heads, dim in cache_shapes(self.model))


def _layers(inner: nn.Module) -> list[nn.Module]:
    decoder = getattr(inner, "model", None)
    return list(getattr(decoder, "layers", []) or [])


def why_not_fused(inner: nn.Module) -> str | None:
    """Why ``inner`` (a transformers causal LM) cannot export with the fused operators
    exactly, or None when it can."""
    config = inner.config
    layers = _layers(inner)
    rotary = getattr(getattr(inner, "model", None), "rotary_emb", None)
    if not layers or rotary is None:
        return "not a decoder with rotary embeddings and a `model.layers` list"
    if getattr(rotary, "rope_type", "default") not in STATIC_ROPE:
        return f"its rotary embedding ({rotary.rope_type}) depends on the sequence length"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "it attends within a sliding window"
    if getattr(config, "attn_logit_softcapping", None) or not getattr(config, "is_causal", True):
        return "its attention soft-caps or is not causal"
    for layer in layers:
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        parts = [getattr(attention, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if not all(isinstance(p, nn.Linear) for p in parts) or getattr(attention, "layer_idx", None) is None:
            return "its attention is not four Linear projections"
        if any(hasattr(attention, n) for n in ("q_norm", "k_norm", "sinks")):
            return "its attention normalises or sinks per head"
        width = int(getattr(attention, "head_dim", 0))
        if width % 16:
            return f"its heads are {width} wide; ONNX Runtime's GroupQueryAttention takes multiples of 16"
        if not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")):
            return "its MLP is not three Linear projections (gate, up and down)"
    return None


def rotary_tables(inner: Any, positions: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The model's own rotary cosines and sines for positions 0..positions-1, as
    (positions, head_dim/2) tables; None where its halves differ (an interleaved layout)."""
    rotary = inner.model.rotary_emb
    sample = torch.zeros(1, 1, 1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(sample, torch.arange(positions)[None])
    cos, sin = cos[0].float(), sin[0].float()
    half = cos.shape[-1] // 2
    if not (torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])):
        return None
    return cos[:, :half].contiguous(), sin[:, :half].contiguous()


#: the most positions a rotary table holds (at head_dim 128, 64 MB for the pair)
MAX_TABLE = 131_072


def fusable(inner: Any) -> bool:
    """Whether ``inner`` exports fused (exactly): the one test the export form, the
    generation spec in preprocess.json (``kv_cache: shared``) and the export gate share."""
    from adapt.plugins.transformers.causal_lm import positions

    if why_not_fused(inner) is not None or not positions(inner):
        return False
    tables = rotary_tables(inner, 2)
    return tables is not None and 2 * tables[0].shape[-1] == int(inner.model.layers[0].self_attn.head_dim)


def fused(model: CausalLMWithCache) -> FusedCausalLM | None:
    """A fused copy of ``model`` for export (None where :func:`fusable` says no), with
    rotary tables for all the model's positions. The copy shares the weights it does not pack."""
    import copy

    from adapt.plugins.transformers.causal_lm import cache_shapes, positions

    inner: Any = model.model
    if not fusable(inner):
        return None
    tables = rotary_tables(inner, min(int(positions(inner) or 0), MAX_TABLE))
    if tables is None:
        return None
    cache_shapes(inner)  # kept on the model, so the copy knows them without running
    config = inner.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    copied = copy.copy(inner)  # a shallow copy: new module lists below, the same weight tensors
    copied._modules = dict(inner._modules)
    decoder = copy.copy(inner.model)
    decoder._modules = dict(inner.model._modules)
    decoder.layers = nn.ModuleList()
    for layer in inner.model.layers:
        twin = copy.copy(layer)
        twin._modules = dict(layer._modules)
        twin.self_attn = FusedAttention(layer.self_attn, heads, kv_heads)
        twin.mlp = FusedMLP(layer.mlp)
        decoder.layers.append(twin)
    copied.model = decoder
    return FusedCausalLM(copied, *tables).eval()
