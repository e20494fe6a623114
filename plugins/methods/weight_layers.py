"""What the reparametrising methods (``loha``, ``lokr``, ``vera``, ``oft``) share: a frozen
layer whose weight is replaced by a function of it and a few trained tensors, run through
the layer's own forward and folded by writing that weight (private to those plugins;
kept apart so that importing a plugin does not import torch).

Every layer kind is seen as one matrix ``W`` of shape ``(out, fan_in)``:

    nn.Linear            W as stored                           fan_in = in
    transformers Conv1D  W stored (in, out), used transposed   fan_in = in
    nn.Conv2d (g groups) W (out, in/g, kh, kw) flattened        fan_in = in/g * kh * kw

A grouped or depthwise convolution's weight *is* that matrix (each row holds one output
channel's kernel over its own group's inputs), so any ``W'`` of that shape is a grouped
weight again: every method defined on the matrix folds exactly on every convolution,
depthwise included, with no per-group bookkeeping. This is PEFT's layout for LoHa, LoKr
and OFT on convolutions, so their factors move between adapt and PEFT unchanged.

A layer computes ``W'`` (``adapted_matrix``) and runs the base layer's own forward with it
(``torch.func.functional_call``: timm's ``Conv2dSame`` keeps its padding). The fold writes
``W'``, computed in float64, into the base layer: the merged layer is the original type.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from transformers.pytorch_utils import Conv1D

#: The layer kinds these methods adapt (subclasses included).
MATRIX_KINDS = (nn.Linear, Conv1D, nn.Conv2d)


def matrix_shape(base: nn.Module) -> tuple[int, int]:
    """``(out, fan_in)`` of a layer's weight seen as a matrix."""
    weight = base.weight
    assert isinstance(weight, torch.Tensor)
    if isinstance(base, Conv1D):
        return int(weight.shape[1]), int(weight.shape[0])
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        return int(weight.shape[0]), int(weight[0].numel())
    raise TypeError(f"this method adapts nn.Linear, transformers' Conv1D and nn.Conv2d, not {type(base).__name__}")


class MatrixLayer(nn.Module):
    """A frozen layer run with ``adapted_matrix(W)`` for its weight (subclasses give it)."""

    base_layer: Any

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base_layer = base
        self.transposed = isinstance(base, Conv1D)
        self.out_features, self.fan_in = matrix_shape(base)

    @property
    def base_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def adapted_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """``W'`` from ``W`` (out, fan_in), in ``W``'s dtype."""
        raise NotImplementedError

    def adapted_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``W'`` in the base layer's own layout."""
        weight = self.base_weight.to(dtype or self.base_weight.dtype)
        matrix = weight.T if self.transposed else weight.reshape(self.out_features, self.fan_in)
        adapted = self.adapted_matrix(matrix)
        return adapted.T if self.transposed else adapted.reshape(weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base_layer, {"weight": self.adapted_weight()}, (x,))

    def folded(self) -> nn.Module:
        """The base layer, fp32, holding ``W'`` (computed in float64, rounded once)."""
        base = self.base_layer.float()
        with torch.no_grad():
            base.weight.copy_(self.adapted_weight(torch.float64))
        return base


class DeltaLayer(MatrixLayer):
    """``W' = W + delta``: the additive methods (LoHa, LoKr, VeRA); ``delta`` (out, fan_in)."""

    def delta(self, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def adapted_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta(weight.dtype)


def cast(*tensors: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    return [t.to(dtype) for t in tensors]
