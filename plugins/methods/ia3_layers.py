"""(IA)^3 layers and their exact fold (private to the ``ia3`` plugin; kept apart so that
importing the plugin does not import torch).

(IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
than In-Context Learning") learns one scale per channel and nothing else::

    y = l * (W x + b)        an output-scaled layer (keys, values; PEFT's default)
    y = W (l * x) + b        an input-scaled ("feed-forward") layer: the MLP's output
                             projection, whose input is the MLP's inner activation

with ``l`` starting at ones, so the adapted model starts equal to the base. Both fold
exactly: output scaling multiplies the rows of ``W`` and ``b``; input scaling multiplies
the columns of ``W`` (the bias is untouched). On a convolution the scale is per channel;
input scaling of a grouped or depthwise convolution multiplies each group's kernels by
the scales of that group's input channels (zero padding scales to zero, so the fold is
exact at the borders too). ``l`` has PEFT's shapes: (out, 1) or (1, in) for a Linear or
Conv1D, (1, channels, 1, 1) for a conv.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

#: The layer types (IA)^3 scales (subclasses included).
IA3_KINDS = (nn.Linear, Conv1D, nn.Conv2d)


def _features(base: nn.Module) -> tuple[int, int]:
    """``(in, out)`` channels of a layer (IA)^3 scales."""
    if isinstance(base, nn.Conv2d):
        return base.in_channels, base.out_channels
    if isinstance(base, Conv1D):
        return int(base.weight.shape[0]), int(base.weight.shape[1])
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    raise TypeError(f"(IA)^3 scales nn.Linear, transformers' Conv1D and nn.Conv2d, not {type(base).__name__}")


class IA3Layer(nn.Module):
    """A frozen layer whose output (or, ``feedforward``, input) channels are scaled by ``ia3_l``."""

    base_layer: Any

    def __init__(self, base: nn.Module, feedforward: bool) -> None:
        super().__init__()
        self.base_layer, self.feedforward = base, feedforward
        self.conv = isinstance(base, nn.Conv2d)
        inputs, outputs = _features(base)
        channels = inputs if feedforward else outputs
        shape = (1, channels, 1, 1) if self.conv else ((1, channels) if feedforward else (channels, 1))
        weight = base.weight
        assert isinstance(weight, torch.Tensor)
        self.ia3_l = nn.Parameter(torch.ones(shape, dtype=weight.dtype, device=weight.device))

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        """``l`` shaped to multiply activations with channels on axis 1 (conv) or last."""
        scale = self.ia3_l.flatten().to(like.dtype)
        return scale.reshape(1, -1, 1, 1) if self.conv else scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feedforward:
            return self.base_layer(x * self._scale(x))
        out = self.base_layer(x)
        return out * self._scale(out)

    def folded(self) -> nn.Module:
        """The base layer, fp32, with the scales in its weights (computed in float64)."""
        base = self.base_layer.float()
        weight, bias = base.weight, base.bias
        assert isinstance(weight, torch.Tensor)
        scale = self.ia3_l.detach().double().flatten()
        with torch.no_grad():
            weight.copy_(weight.double() * self._weight_scale(scale, weight))
            if bias is not None and not self.feedforward:
                bias.copy_(bias.double() * scale)
        return base

    def _weight_scale(self, scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``scale`` broadcast over the weight's layout: rows (outputs) or columns (inputs)."""
        if self.conv:
            if not self.feedforward:
                return scale.reshape(-1, 1, 1, 1)
            groups, out_channels, per_group = self.base_layer.groups, weight.shape[0], weight.shape[1]
            group = torch.arange(out_channels) // (out_channels // groups)
            index = group[:, None] * per_group + torch.arange(per_group)[None, :]  # each kernel's input channels
            return scale[index].reshape(out_channels, per_group, 1, 1)
        transposed = isinstance(self.base_layer, Conv1D)  # weight stored (in, out)
        on_rows = self.feedforward == transposed
        return scale[:, None] if on_rows else scale[None, :]
