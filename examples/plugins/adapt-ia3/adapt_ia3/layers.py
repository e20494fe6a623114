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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # Linear: (..., C); Conv2d: (N, C, H, W)
        return out * (self.scale if isinstance(self.base_layer, nn.Linear) else self.scale[:, None, None])

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
