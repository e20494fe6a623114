"""VeRA layers (private to the ``vera`` plugin).

VeRA (Kopiczko et al. 2024, "Vector-based Random Matrix Adaptation") freezes one random
pair of projections shared by every adapted layer and trains two vectors per layer::

    delta = diag(b) B diag(d) A       A: (r x fan_in), B: (out x r) frozen, shared
                                      b: (out,), zero at the start; d: (r,), d_initial

so a layer trains ``out + r`` numbers whatever ``r`` is: the fewest of the low-rank
methods. ``A`` and ``B`` are drawn once, He-uniform from a seeded generator (PEFT's
``projection_prng_key`` and ``_kaiming_init``, so the same seed gives PEFT's matrices),
sized to the largest adapted layer; each layer uses their top-left corner. They are
saved with the adapter (PEFT's ``save_projection``), so loading does not depend on the
generator. A convolution's ``fan_in`` is its flattened kernel (``weight_layers``), so the
fold is exact on depthwise convolutions too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adapt.plugins.methods.weight_layers import DeltaLayer


def projections(r: int, fan_in: int, out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared frozen ``A`` (r, fan_in) and ``B`` (out, r), drawn as PEFT draws them."""
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def he_uniform(rows: int, cols: int) -> torch.Tensor:
        bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(cols)  # gain sqrt(2) over the fan-in
        return torch.empty(rows, cols).uniform_(-bound, bound, generator=generator)

    a = he_uniform(r, fan_in)
    return a, he_uniform(out, r)


class VeRALayer(DeltaLayer):
    """A frozen layer plus ``diag(b) B diag(d) A`` from the shared projections."""

    vera_A: torch.Tensor
    vera_B: torch.Tensor

    def __init__(self, base: nn.Module, shared: tuple[torch.Tensor, torch.Tensor], d_initial: float, seed: int) -> None:
        super().__init__(base)
        a, b = shared
        self.r, self.d_initial, self.seed = int(a.shape[0]), d_initial, seed
        weight = self.base_weight
        # not persistent: saved once for the model (adapter_state), not once per layer
        self.register_buffer("vera_A", a.to(weight.device), persistent=False)
        self.register_buffer("vera_B", b.to(weight.device), persistent=False)
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, dtype=weight.dtype, device=weight.device))
        self.vera_lambda_d = nn.Parameter(torch.full((self.r,), d_initial, dtype=weight.dtype, device=weight.device))

    def delta(self, dtype: torch.dtype) -> torch.Tensor:
        a = self.vera_A[:, : self.fan_in].to(dtype)
        b = self.vera_B[: self.out_features].to(dtype)
        return (self.vera_lambda_b.to(dtype)[:, None] * b) @ (self.vera_lambda_d.to(dtype)[:, None] * a)
