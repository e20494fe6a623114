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

Initialisations (``init``; per group for a grouped convolution, on its block of ``W``):

    kaiming   A He-uniform, B zero (PEFT's default)
    gaussian  A ~ N(0, 1/r^2), B zero (PEFT's "gaussian")
    pissa     W = U S V^T:  B = U_r sqrt(S_r / s),  A = sqrt(S_r / s) V_r^T    (Meng et al. 2024)
    olora     W = Q R:      B = Q_r,  A = R_r                                  (Buyukakyuz 2024)

The principal ones (pissa, olora) start ``s B A`` on ``W``'s leading directions and leave
the residual ``W - s B0 A0`` in the frozen weight, so the adapted model starts equal to
the base; ``B0, A0`` (``lora_B0``, ``lora_A0``) are kept so that the update against the
*original* ``W`` is ``s (B A - B0 A0)``: a rank-2r LoRA ``[B, -B0] [A; A0]``, the form
PEFT converts PiSSA and OLoRA adapters to. Components past a block's rank (a depthwise
kernel has rank 1) start as ``kaiming`` does.
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
    (``product``, ``out_axis``, ``dora`` and ``lora_magnitude_vector`` are each layer's)."""

    base_layer: Any
    dora: bool
    out_axis: int
    lora_magnitude_vector: torch.Tensor
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    #: a principal initialisation's start (``initialise``)
    lora_A0: torch.Tensor
    lora_B0: torch.Tensor
    r: int
    scaling: float
    init: str = "kaiming"
    #: LoRA+: B's learning rate over train.lr (set by the lora method)
    lr_ratio: float = 1.0

    def product(self, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``s B A`` in the base weight's own layout."""
        raise NotImplementedError

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.product(self.lora_A, self.lora_B, dtype or self.lora_A.dtype)

    def initial_delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``s B0 A0``, the start a principal initialisation moved out of the base weight."""
        return self.product(self.lora_A0, self.lora_B0, dtype)

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

    def product(self, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        delta = (b.to(dtype) @ a.to(dtype)) * self.scaling
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

    def product(self, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        delta = torch.bmm(b.to(dtype), a.to(dtype))  # (g, out/g, in/g*kh*kw)
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


def _blocks(layer: LoRALinear | LoRAConv2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The base weight as (groups, rows, fan_in) and views of A (groups, r, fan_in) and B
    (groups, rows, r): one block per group (a Linear is one group)."""
    if isinstance(layer, LoRAConv2d):
        groups = layer.base_layer.groups
        weight = layer.base_weight.reshape(groups, layer.base_layer.out_channels // groups, -1)
        return weight, layer.lora_A.data, layer.lora_B.data
    weight = layer.base_weight.T if layer.fan_in_fan_out else layer.base_weight
    return weight.unsqueeze(0), layer.lora_A.data.unsqueeze(0), layer.lora_B.data.unsqueeze(0)


def _principal(weight: torch.Tensor, r: int, scaling: float, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` over each block's leading ``k <= r`` directions, for a batch of blocks
    (groups, rows, fan_in) at once (PEFT's pissa_init / olora_init, per block)."""
    if init == "pissa":
        u, singular, vh = torch.linalg.svd(weight, full_matrices=False)
        root = torch.sqrt(singular[:, :r] / scaling)
        return u[:, :, :r] * root[:, None, :], root[:, :, None] * vh[:, :r]
    q, upper = torch.linalg.qr(weight)
    return q[:, :, :r], upper[:, :r]


def initialise(layer: LoRALinear | LoRAConv2d, init: str) -> None:
    """Set A and B as ``init`` says (the module docstring); for pissa and olora also move
    ``s B0 A0`` out of the frozen weight, so the adapted layer starts equal to the base."""
    layer.init = init
    if init == "kaiming":
        return
    if init == "gaussian":
        with torch.no_grad():
            nn.init.normal_(layer.lora_A, std=1 / layer.r)
        return
    weight, a, b = _blocks(layer)
    with torch.no_grad():
        b_init, a_init = _principal(weight.float(), layer.r, layer.scaling, init)
        k = a_init.shape[1]
        a[:, :k], b[:] = a_init.to(a.dtype), 0.0
        b[:, :, :k] = b_init.to(b.dtype)
        layer.register_buffer("lora_A0", layer.lora_A.detach().clone(), persistent=False)
        layer.register_buffer("lora_B0", layer.lora_B.detach().clone(), persistent=False)
        layer.base_weight.sub_(layer.initial_delta().to(layer.base_weight.dtype))


#: The layer types LoRA can adapt (subclasses included) and the LoRA layer for each.
LORA_LAYERS: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: LoRALinear, Conv1D: LoRAConv1D, nn.Conv2d: LoRAConv2d}


def wrap(
    module: nn.Module, r: int, alpha: float, dropout: float, rslora: bool, dora: bool = False, init: str = "kaiming"
) -> LoRALinear | LoRAConv2d:
    for kind, layer in LORA_LAYERS.items():
        if isinstance(module, kind):
            wrapped = layer(module, r, alpha, dropout, rslora, dora)
            assert isinstance(wrapped, (LoRALinear, LoRAConv2d))
            initialise(wrapped, init)
            return wrapped
    raise TypeError(f"LoRA supports nn.Linear, transformers' Conv1D and nn.Conv2d, not {type(module).__name__}")


def fold(layer: LoRALinear | LoRAConv2d) -> nn.Module:
    """The base layer with the update folded into its weight, in fp32."""
    base = layer.base_layer.float()
    weight = base.weight
    assert isinstance(weight, torch.Tensor)
    with torch.no_grad():
        weight.copy_(layer.folded_weight())  # one rounding, at the end
    return base
