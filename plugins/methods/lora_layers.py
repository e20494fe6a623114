"""LoRA layers and their exact fold into the base weight (private to the ``lora`` plugin;
kept apart so that importing the plugin does not import torch).

A LoRA layer keeps the pretrained weight ``W`` frozen and learns a low-rank update::

    y = W x + b + s * B A x          s = alpha / r   (rsLoRA: alpha / sqrt(r))

with ``A`` (r x in) random and ``B`` (out x r) zero at the start, so the adapted
model starts equal to the base. Merging replaces ``W`` by ``W + s * B A``: the
merged layer is the original layer type with the same shapes.

Convolutions use the same update on the flattened kernel. A grouped convolution
(depthwise included) with ``g`` groups stores its weight as ``g`` blocks of
shape (out/g, in/g * kh * kw); LoRA learns one rank-``r`` pair per block::

    delta W_j = B_j A_j     B_j: (out/g x r), A_j: (r x in/g * kh * kw)

which is exactly a grouped weight again (block-diagonal in the dense view), so
it folds for any ``r``: nothing requires ``r`` to be divisible by ``g``. The
forward pass computes ``delta W`` (a kernel-sized tensor, cheap) and runs a
single convolution with ``W + s * delta W``, the same operation as the merged layer.
Training runs the same update as a separate low-rank branch where that is cheaper
(ordinary convolutions; see ``LoRAConv2d._branch_is_cheaper``).

DoRA (weight-decomposed LoRA, Liu et al. 2024; ``dora=True``) learns a magnitude ``m``
per output channel besides the direction's low-rank update::

    W' = m * (W + s B A) / ||W + s B A||        (the norm per output channel: a row of
                                                  a Linear's W, a kernel of a conv's)

with ``m`` starting at ``||W||``, so the adapted model starts equal to the base. While
training the norm is a constant (detached, the paper's section 4.3, as PEFT does), which
changes the gradients, not the values; the fold writes ``W'`` itself, exactly, for every
layer LoRA adapts, grouped and depthwise convolutions included (their kernels are
per-channel already). ``m`` is stored as PEFT stores it: ``lora_magnitude_vector``, shape
(out,) for a Linear or Conv1D, (1, out, 1, 1) for a conv.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from transformers.pytorch_utils import Conv1D


def scaling(r: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def channel_norms(weight: torch.Tensor, out_axis: int) -> torch.Tensor:
    """The L2 norm of each output channel's weights, keeping the weight's rank."""
    return torch.linalg.vector_norm(weight, dim=[d for d in range(weight.dim()) if d != out_axis], keepdim=True)


class _Folds(nn.Module):
    """What LoRA's layers share: the base weight, DoRA's scale and the folded weight
    (``delta_weight``, ``out_axis``, ``dora`` and ``lora_magnitude_vector`` are each layer's)."""

    base_layer: Any
    dora: bool
    out_axis: int
    lora_magnitude_vector: torch.Tensor

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def base_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def magnitude_scale(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """DoRA's ``m / ||W + s B A||`` per output channel, shaped to multiply the base weight."""
        weight = self.base_weight.to(dtype or self.base_weight.dtype)
        norms = channel_norms(weight + self.delta_weight(weight.dtype), self.out_axis)
        magnitude = self.lora_magnitude_vector.to(weight.dtype)
        return magnitude.reshape(norms.shape) / norms

    def folded_weight(self) -> torch.Tensor:
        """The merged weight in float64 (one rounding, when it is stored)."""
        weight = self.base_weight.double() + self.delta_weight(torch.float64)
        return weight * self.magnitude_scale(torch.float64) if self.dora else weight


class LoRALinear(_Folds):
    """``base_layer(x) + s * B A dropout(x)`` around a frozen ``nn.Linear`` (with ``dora``:
    that output less the bias, scaled per output channel by ``m / ||W + s B A||``, plus the bias)."""

    #: The base weight is stored (in, out), as in transformers' Conv1D (PEFT: fan_in_fan_out).
    fan_in_fan_out = False

    def __init__(
        self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False, dora: bool = False
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.r, self.alpha, self.rslora, self.dropout, self.dora = r, alpha, rslora, dropout, dora
        self.scaling = scaling(r, alpha, rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        assert isinstance(weight, torch.Tensor)
        out_features, in_features = weight.shape[::-1] if self.fan_in_fan_out else weight.shape
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT
        if dora:
            self.lora_magnitude_vector = nn.Parameter(channel_norms(weight.detach(), self.out_axis).flatten())

    @property
    def out_axis(self) -> int:  # type: ignore[override]
        return 1 if self.fan_in_fan_out else 0

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The update in the base weight's own layout."""
        a, b = self.lora_A.to(dtype or self.lora_A.dtype), self.lora_B.to(dtype or self.lora_B.dtype)
        delta = (b @ a) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling
        if not self.dora:
            return self.base_layer(x) + update
        weight = self.base_weight
        with torch.no_grad():  # the norm is a constant while training (DoRA's section 4.3)
            norms = channel_norms(weight + self.delta_weight(weight.dtype), self.out_axis).flatten()
        out = self.lora_magnitude_vector / norms * (F.linear(x, weight.T if self.fan_in_fan_out else weight) + update)
        bias = self.base_layer.bias
        return out + bias if bias is not None else out


class LoRAConv1D(LoRALinear):
    """LoRA around transformers' ``Conv1D`` (GPT-2's projections: ``x W + b`` with ``W``
    stored (in, out)). The factors have LoRALinear's (and PEFT's) shapes; the update
    folds into the weight transposed."""

    fan_in_fan_out = True


class LoRAConv2d(_Folds):
    """A frozen ``nn.Conv2d`` (any groups) plus a per-group low-rank kernel update (with
    ``dora``: the kernel scaled per output channel by ``m / ||W + s B A||``)."""

    out_axis = 0

    def __init__(
        self, base: nn.Conv2d, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False, dora: bool = False
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.r, self.alpha, self.rslora, self.dropout, self.dora = r, alpha, rslora, dropout, dora
        self.scaling = scaling(r, alpha, rslora)
        g = base.groups
        out_per_group = base.out_channels // g
        fan_in = (base.in_channels // g) * base.kernel_size[0] * base.kernel_size[1]
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(g, r, fan_in, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(g, out_per_group, r, dtype=weight.dtype, device=weight.device))
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) per block, as for a conv of this fan-in
        nn.init.uniform_(self.lora_A, -bound, bound)
        if dora:  # PEFT's shape: (1, out, 1, 1)
            self.lora_magnitude_vector = nn.Parameter(channel_norms(weight.detach(), 0).transpose(0, 1))

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        a, b = self.lora_A.to(dtype or self.lora_A.dtype), self.lora_B.to(dtype or self.lora_B.dtype)
        delta = torch.bmm(b, a)  # (g, out/g, in/g*kh*kw)
        return delta.reshape(self.base_layer.weight.shape) * self.scaling

    def _branch_is_cheaper(self) -> bool:
        """Training through ``B(A(x))`` (as PEFT does) costs ~3 r (in k^2 + out) per output
        pixel; training through the merged kernel costs a full-size kernel gradient,
        out (in/g) k^2. The branch wins for ordinary convolutions, the merged kernel for
        depthwise ones, whose kernel gradient is tiny."""
        base = self.base_layer
        k2 = base.kernel_size[0] * base.kernel_size[1]
        return (
            3 * self.r * (base.in_channels * k2 + base.out_channels)
            < base.out_channels * (base.in_channels // base.groups) * k2
        )

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        """``s * B A x`` as two convolutions: A is a grouped k x k convolution to ``g r``
        channels run through the base layer's own forward (its stride, padding and any
        padding of its own), B a grouped 1 x 1 convolution back to ``out`` channels."""
        base, g = self.base_layer, self.base_layer.groups
        a = self.lora_A.reshape(g * self.r, base.in_channels // g, *base.kernel_size).to(base.weight.dtype)
        params = {"weight": a}
        if base.bias is not None:
            params["bias"] = torch.zeros(g * self.r, dtype=base.weight.dtype, device=base.weight.device)
        hidden = functional_call(base, params, (x,))
        b = self.lora_B.reshape(base.out_channels, self.r, 1, 1).to(hidden.dtype)
        return F.conv2d(hidden, b, groups=g) * self.scaling

    def _dora_scale(self) -> torch.Tensor:
        """``m / ||W + s B A||`` as (out, 1, 1, 1), the norm a constant while training."""
        base = self.base_layer
        with torch.no_grad():
            norms = channel_norms(base.weight + self.delta_weight().to(base.weight.dtype), 0)
        return self.lora_magnitude_vector.reshape(norms.shape) / norms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # functional_call runs the base layer's own forward with another weight, so
        # subclasses with their own padding (timm's Conv2dSame) keep working; a conv is
        # linear in its kernel, so DoRA's per-channel scale goes on the kernel
        base = self.base_layer
        scale = self._dora_scale() if self.dora else None
        if self.training and torch.is_grad_enabled() and (self.dropout > 0 or self._branch_is_cheaper()):
            # dropout acts on the LoRA branch's input only, so then the branch must run on its own
            dropped = F.dropout(x, self.dropout, True) if self.dropout > 0 else x
            if scale is None:
                return base(x) + self._branch(dropped)
            scaled = functional_call(base, {"weight": base.weight * scale}, (x,))
            return scaled + self._branch(dropped) * scale.reshape(1, -1, 1, 1)
        weight = base.weight + self.delta_weight().to(base.weight.dtype)
        return functional_call(base, {"weight": weight * scale if scale is not None else weight}, (x,))


#: The layer types LoRA can adapt (subclasses included) and the LoRA layer for each.
LORA_LAYERS: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: LoRALinear, Conv1D: LoRAConv1D, nn.Conv2d: LoRAConv2d}


def wrap(module: nn.Module, r: int, alpha: float, dropout: float, rslora: bool, dora: bool = False) -> nn.Module:
    for kind, layer in LORA_LAYERS.items():
        if isinstance(module, kind):
            return layer(module, r, alpha, dropout, rslora, dora)
    raise TypeError(f"LoRA supports nn.Linear, transformers' Conv1D and nn.Conv2d, not {type(module).__name__}")


def fold(layer: LoRALinear | LoRAConv2d) -> nn.Module:
    """The base layer with the update folded into its weight, in fp32."""
    base = layer.base_layer.float()
    weight = base.weight
    assert isinstance(weight, torch.Tensor)
    with torch.no_grad():
        weight.copy_(layer.folded_weight())  # one rounding, at the end
    return base
