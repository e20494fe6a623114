"""LoHa and LoKr layers (private to the ``loha`` and ``lokr`` plugins): two LyCORIS updates
of higher rank than LoRA's for the same parameter count, each an exact fold (``W' = W + s
delta`` written into the weight) on every layer ``weight_layers`` sees as a matrix ``(out,
fan_in)``, depthwise convolutions included. Parameter names and shapes are PEFT's.

LoHa (Hyeon-Woo et al. 2022, FedPara): a Hadamard (element-wise) product of two rank-``r``
products, so the update can reach rank ``r^2``::

    delta = s * (W1a W1b) * (W2a W2b)     W?a: (out x r), W?b: (r x fan_in), s = alpha / r

with ``W2b`` zero at the start (the others He-uniform, as PEFT), so training starts at the base.

LoKr (Yeh et al. 2024): a Kronecker product of a small factor and a (low-rank) one::

    delta = s * kron(W1, W2)    out = a*b, in = c*d (``factorization``, near square roots),
                                W1: (a x c), W2: (b x d * kh * kw), s = alpha / r

``W2`` is ``W2a W2b`` of rank ``r`` when ``r < max(b, d) / 2``, else full; ``W1`` likewise
with ``decompose_both``. ``W1`` is zero at the start. For a convolution the channels are
factored (``in`` is the group's input channels) and the kernel stays with ``W2``: kron of
(a x c) with (b x d*kh*kw), reshaped, is PEFT's 4-D kron (a*b, c*d, kh, kw) exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adapt.plugins.methods.weight_layers import DeltaLayer


def _he_uniform(*shape: int, like: torch.Tensor) -> nn.Parameter:
    tensor = torch.empty(shape, dtype=like.dtype, device=like.device)
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))  # as nn.Linear and PEFT
    return nn.Parameter(tensor)


def _zeros(*shape: int, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape, dtype=like.dtype, device=like.device))


class LoHaLayer(DeltaLayer):
    """LoHa's Hadamard product of two low-rank products around a frozen layer."""

    def __init__(self, base: nn.Module, r: int, alpha: float) -> None:
        super().__init__(base)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        weight = self.base_weight
        self.hada_w1_a = _he_uniform(self.out_features, r, like=weight)
        self.hada_w1_b = _he_uniform(r, self.fan_in, like=weight)
        self.hada_w2_a = _he_uniform(self.out_features, r, like=weight)
        self.hada_w2_b = _zeros(r, self.fan_in, like=weight)

    def delta(self, dtype: torch.dtype) -> torch.Tensor:
        w1a, w1b, w2a, w2b = (t.to(dtype) for t in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b))
        return (w1a @ w1b) * (w2a @ w2b) * self.scaling


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """``(m, n)``, ``m <= n``, ``m * n = dimension``: ``m`` = ``factor`` when it divides the
    dimension, else the pair nearest the square root with ``m`` at most ``factor`` (LyCORIS'
    and PEFT's rule, so adapters of the same options have the same shapes in both)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n  # fixed, as in PEFT
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    return (m, n) if m <= n else (n, m)


class LoKrLayer(DeltaLayer):
    """LoKr's Kronecker product of a small factor and a (low-rank) factor around a frozen layer."""

    def __init__(
        self, base: nn.Module, r: int, alpha: float, decompose_both: bool = False, decompose_factor: int = -1
    ) -> None:
        super().__init__(base)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.decompose_both, self.decompose_factor = decompose_both, decompose_factor
        weight = self.base_weight
        kernel = tuple(base.kernel_size) if isinstance(base, nn.Conv2d) else ()
        channels_in = self.fan_in // math.prod(kernel) if kernel else self.fan_in
        (a, b), (c, d) = (
            factorization(self.out_features, decompose_factor),
            factorization(channels_in, decompose_factor),
        )
        if decompose_both and r < max(a, c) / 2:
            self.lokr_w1_a, self.lokr_w1_b = _zeros(a, r, like=weight), _he_uniform(r, c, like=weight)
        else:
            self.lokr_w1 = _zeros(a, c, like=weight)
        if r < max(b, d) / 2:
            self.lokr_w2_a, self.lokr_w2_b = (
                _he_uniform(b, r, like=weight),
                _he_uniform(r, d * math.prod(kernel), like=weight),
            )
        else:  # PEFT's full factor keeps a conv's kernel axes
            self.lokr_w2 = _he_uniform(b, d, *kernel, like=weight)

    def _factor(self, which: str, dtype: torch.dtype) -> torch.Tensor:
        full = getattr(self, f"lokr_{which}", None)
        if full is not None:
            return full.to(dtype).reshape(full.shape[0], -1)
        return getattr(self, f"lokr_{which}_a").to(dtype) @ getattr(self, f"lokr_{which}_b").to(dtype)

    def delta(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.kron(self._factor("w1", dtype), self._factor("w2", dtype)) * self.scaling
