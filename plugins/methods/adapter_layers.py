"""Bottleneck adapter layers and their fold (private to the ``adapters`` plugin).

An adapter sits on the output ``h`` of a projection layer and adds a small
residual bottleneck::

    h' = h + U act(D h + d) + u          D: channels -> channels / reduction, U back

``U`` starts at zero, so the adapted model starts equal to the base. With a
non-linear ``act`` the adapter cannot be folded and stays in the graph as plain
modules. With ``act = none`` it is affine, ``h' = M h + c`` with
``M = I + U D`` and ``c = U d + u``, and folds exactly into the projection it
follows: ``W' = M W``, ``b' = M b + c``. For convolutions the adapter is a pair of
bias-free 1x1 convolutions (``c = 0``), so a bias-free convolution stays bias-free.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

#: The layers an adapter can follow.
LinearOrConv = nn.Linear | Conv1D | nn.Conv2d

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "none": nn.Identity}


class Bottleneck(nn.Module):
    """``h + up(act(down(h)))`` over the channel dimension (last for Linear, 1 for Conv2d)."""

    def __init__(self, channels: int, reduction: int, activation: str, conv: bool) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.down: nn.Conv2d | nn.Linear
        self.up: nn.Conv2d | nn.Linear
        if conv:
            self.down = nn.Conv2d(channels, hidden, 1, bias=False)
            self.up = nn.Conv2d(hidden, channels, 1, bias=False)
        else:
            self.down = nn.Linear(channels, hidden)
            self.up = nn.Linear(hidden, channels)
            nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.up.weight)
        self.activation = activation
        self.act = ACTIVATIONS[activation]()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M, c)`` with ``adapter(h) = M h + c`` (only when the activation is none)."""
        down, up = self.down.weight.flatten(1), self.up.weight.flatten(1)
        m = torch.eye(down.shape[1], dtype=down.dtype, device=down.device) + up @ down
        c = torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
        if self.down.bias is not None and self.up.bias is not None:
            c = up @ self.down.bias + self.up.bias
        return m, c


class AdapterAfter(nn.Module):
    """Runs ``base_layer`` and then a bottleneck adapter on its output."""

    def __init__(self, base: LinearOrConv, reduction: int, activation: str) -> None:
        super().__init__()
        self.base_layer = base
        conv = isinstance(base, nn.Conv2d)
        channels = (
            base.out_channels
            if isinstance(base, nn.Conv2d)
            else base.out_features
            if isinstance(base, nn.Linear)
            else base.nf
        )
        weight = base.weight
        self.adapter = Bottleneck(channels, reduction, activation, conv).to(dtype=weight.dtype, device=weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base_layer(x))

    def foldable(self) -> bool:
        return not self.why_inline()

    def why_inline(self) -> str:
        """Why this adapter cannot fold into its layer ("" when it can)."""
        if self.adapter.activation != "none":
            return f"activation {self.adapter.activation!r} is not linear"
        if getattr(self.base_layer, "groups", 1) != 1:
            return "the layer is a grouped convolution"
        if getattr(self.base_layer, "bias", None) is None and self.adapter.down.bias is not None:
            return "the layer has no bias to take the adapter's (Llama-style projections)"
        return ""


def fold(layer: AdapterAfter) -> nn.Module:
    """The base layer with the (affine) adapter folded in, in fp32."""
    if not layer.foldable():
        raise ValueError(f"this adapter cannot fold: {layer.why_inline()}")
    base = layer.base_layer.float()
    weight, bias = base.weight, base.bias
    assert isinstance(weight, torch.Tensor) and (bias is None or isinstance(bias, torch.Tensor))
    with torch.no_grad():
        m, c = (t.double() for t in layer.adapter.double().affine())  # one rounding, at the end
        if isinstance(base, Conv1D):  # x W + b with W (in, out): the adapter maps W to W M^T
            weight.copy_(weight.double() @ m.T)
        else:
            weight.copy_((m @ weight.double().flatten(1)).reshape(weight.shape))
        if bias is not None:
            bias.copy_(m @ bias.double() + c)
        elif c.abs().max() > 0:
            raise ValueError("a bias-free layer cannot absorb an adapter bias")
    return base
