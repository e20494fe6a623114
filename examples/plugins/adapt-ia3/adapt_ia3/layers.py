"""The (IA)^3 layer: a frozen Linear or Conv2d whose output channels are scaled."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Scaled(nn.Module):
    def __init__(self, base: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        self.base_layer = base
        channels = base.out_features if isinstance(base, nn.Linear) else base.out_channels
        self.scale = nn.Parameter(torch.ones(channels, dtype=base.weight.dtype, device=base.weight.device))

    def _shaped(self, ndim: int) -> torch.Tensor:
        """The scale broadcast over an output (Linear: last axis) or a weight (first axis)."""
        if isinstance(self.base_layer, nn.Linear):
            return self.scale
        return self.scale.reshape(-1, *([1] * (ndim - 2)))  # (C, 1, 1) against (N, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self._shaped(4)

    def folded(self) -> nn.Module:
        """The base layer with the scale in its weight and bias, in fp32."""
        layer = copy.deepcopy(self.base_layer).float()
        scale = self.scale.detach().double()
        with torch.no_grad():
            weight = layer.weight.double()
            layer.weight.copy_(weight * scale.reshape(-1, *([1] * (weight.dim() - 1))))
            if layer.bias is not None:
                layer.bias.copy_(layer.bias.double() * scale)
        layer.requires_grad_(False)
        return layer
