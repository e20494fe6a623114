"""QLoRA's quantised base (``method.options.base: 4bit | 8bit``): the frozen ``nn.Linear``
layers inside the model's blocks stored in 4-bit NF4 or 8-bit by bitsandbytes, so
training holds about an eighth (4-bit, plus a scale per block of 64) or a quarter (8-bit)
of their fp32 bytes. The
LoRA factors, the embeddings, the output layer and any task head stay in full precision,
as in QLoRA (Dettmers et al., 2023).

The merge folds the update into the *dequantised* weights: those are the weights the
adapter was trained against. With a 4-bit base (weights dequantised, products in fp32)
the merged fp32 model computes what the adapted model computes, and the merge gate checks
it as for any LoRA. An 8-bit base (LLM.int8) also rounds every *activation* to 8 bits in
each product, which the merged fp32 model does not: that merge is approximate by design,
promises at most :data:`INT8_TOLERANCE` (in ``merge.tolerance``'s units) and the report
says so; the test metrics of both models stand side by side. What the quantised base costs is the
rounding of the base itself, measured when it is quantised (``rounding``: each layer's
relative error ||W - deq(q(W))|| / ||W||, largest and mean) and reported, and then the
model as trained is what the test metrics and the export gates judge. PEFT's own 4-bit
merge re-quantises W + BA, a second rounding it warns of (peft#2321); adapt does not.

bitsandbytes is an optional dependency (``pip install 'adapt-edge[qlora]'``); 4-bit and
8-bit work on CUDA and, since bitsandbytes 0.46, on the CPU.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, cast

import torch
from torch import nn

from adapt.errors import ConfigError

Base = Literal["full", "4bit", "8bit"]
#: What an 8-bit base's merge promises: LLM.int8's activation rounding (a step of 1/127 of each
#: row's largest activation, in every product) is gone from the merged model. Measured 0.65% of
#: max(1, largest logit) on a tiny random Llama (tests/plugins/test_qlora.py); bound at 5%.
INT8_TOLERANCE = 5e-2


def _bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError:  # also raised where its native library does not load
        raise ConfigError(
            "method.options.base: 4bit / 8bit needs bitsandbytes, which is not installed (or does not load here)",
            hint="pip install 'adapt-edge[qlora]' (bitsandbytes >= 0.46 also runs on the CPU), or set "
            "method.options.base: full",
        ) from None
    return bitsandbytes


def _is_quantised(module: nn.Module) -> bool:
    bnb = _bitsandbytes()
    return isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def _quantised(linear: nn.Linear, kind: Base) -> nn.Module:
    """A bitsandbytes layer holding ``linear``'s frozen weight in ``kind`` (on its device)."""
    bnb = _bitsandbytes()
    weight, device = linear.weight.data, linear.weight.device
    bias = linear.bias is not None
    if kind == "4bit":
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=bias, compute_dtype=torch.float32, quant_type="nf4"
        )
        layer.weight = bnb.nn.Params4bit(weight.float().cpu(), requires_grad=False, quant_type="nf4")
        # bitsandbytes repacks the weight for a bf16 kernel at the first no-grad call on CPUs with AVX-512 BF16:
        # a second format and bf16 arithmetic on those CPUs only. Off: every CPU computes the same fp32 products,
        # which the merge's fold (into the dequantised weight) reproduces.
        layer.support_avx512bf16_for_cpu = False
    else:
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False, threshold=0.0
        )
        layer.weight = bnb.nn.Int8Params(weight.float().cpu(), requires_grad=False, has_fp16_weights=False)
    if bias:
        layer.bias = nn.Parameter(linear.bias.data.float().cpu(), requires_grad=False)
    return layer.to(device)  # bitsandbytes quantises on the move to a device


def dequantised_weight(layer: Any) -> torch.Tensor:
    """The fp32 weight a bitsandbytes layer computes with."""
    bnb = _bitsandbytes()
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    scale = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    return bnb.functional.int8_vectorwise_dequant(layer.weight.data, scale).float()


def quantise(model: nn.Module, kind: Base, blocks: Sequence[str], keep: Sequence[str]) -> dict[str, Any]:
    """Replace every ``nn.Linear`` inside ``blocks`` (a LoRA layer's base included) by its
    ``kind`` form, except modules under ``keep`` (the task head). Returns what the report says."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and any(name == b or name.startswith(b + ".") for b in blocks)
        and not any(name == k or name.startswith(k + ".") for k in keep)
    ]
    if not targets:
        raise ConfigError(
            f"method.options.base: {kind}: the model has no nn.Linear layer inside its blocks to quantise",
            hint="a quantised base is for transformer models; set method.options.base: full",
        )
    errors, before, after = [], 0, 0
    for name, linear in targets:
        assert isinstance(linear, nn.Linear)
        layer = _quantised(linear, kind)
        with torch.no_grad():
            error = (dequantised_weight(layer) - linear.weight.float()).norm() / linear.weight.float().norm()
        errors.append(float(error))
        before += linear.weight.numel() * linear.weight.element_size()
        packed = cast(torch.Tensor, layer.weight).data
        after += packed.numel() * packed.element_size()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, layer)
    return {
        "base": kind,
        "layers": len(targets),
        "bytes_before": before,
        "bytes_after": after,
        "rounding": {"max": round(max(errors), 6), "mean": round(sum(errors) / len(errors), 6)},
    }


def dequantise(model: nn.Module) -> int:
    """Replace every bitsandbytes layer of ``model`` by an fp32 ``nn.Linear`` with its dequantised
    weight (the merge folds into these); returns how many."""
    found = [(name, module) for name, module in model.named_modules() if _is_quantised(module)]
    for name, layer in found:
        weight = dequantised_weight(layer)
        bias = layer.bias if isinstance(layer.bias, torch.Tensor) else None
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias.float())
        linear.requires_grad_(False)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, linear)
    return len(found)


def has_quantised(model: nn.Module) -> bool:
    """Whether ``model`` holds bitsandbytes layers (without importing bitsandbytes when it has none)."""
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())
