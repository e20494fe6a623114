"""OFT layers (private to the ``oft`` plugin).

Orthogonal fine-tuning (Qiu et al. 2023; PEFT's OFT) keeps the angles between a layer's
neurons by rotating its input space with a block-diagonal orthogonal ``R``::

    W' = W R^T          R = diag(R_1, ..., R_n), each R_i (b x b),  n * b = fan_in
    R_i = (I - Q_i)(I + Q_i)^-1                    (Cayley; Q_i skew-symmetric)
    R_i ~ I + 2 Q_i + 2 Q_i^2 + ... + Q_i^(k-1)    (PEFT's Cayley-Neumann series, k terms)

``Q_i`` is stored as its strict upper triangle (PEFT's ``oft_R.weight``, shape
(n, b (b - 1) / 2)), zero at the start, so ``R = I`` and training starts at the base. The
exact Cayley transform gives an orthogonal ``R``; the Neumann series is cheaper and
nearly orthogonal; either way the fold writes ``W R^T`` itself, so it is exact. In PEFT's
(in, out) view this is ``R W``. A convolution's ``fan_in`` is its flattened kernel
(``weight_layers``): the rotation acts on each group's kernel taps, so it folds on
grouped and depthwise convolutions too (PEFT's OFT ignores a conv's groups).
"""

from __future__ import annotations

import torch
from torch import nn

from adapt.plugins.methods.weight_layers import MatrixLayer


def block_size_for(fan_in: int, wanted: int) -> int:
    """The divisor of ``fan_in`` nearest ``wanted`` (the smaller on a tie): PEFT's
    ``adjust_oft_parameters``, so a layer gets the block PEFT gives it."""
    if fan_in % wanted == 0 and wanted <= fan_in:
        return wanted
    if wanted >= fan_in:
        return fan_in
    higher = wanted
    while higher <= fan_in and fan_in % higher:
        higher += 1
    lower = wanted
    while lower > 1 and fan_in % lower:
        lower -= 1
    return lower if wanted - lower <= higher - wanted else higher


class OFTRotation(nn.Module):
    """The blocks' skew-symmetric parameters and their rotations (PEFT's ``oft_R``)."""

    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, blocks: int, block_size: int, neumann_terms: int, like: torch.Tensor) -> None:
        super().__init__()
        self.block_size, self.neumann_terms = block_size, neumann_terms
        n_elements = block_size * (block_size - 1) // 2
        self.weight = nn.Parameter(torch.zeros(blocks, n_elements, dtype=like.dtype, device=like.device))
        rows, cols = torch.triu_indices(block_size, block_size, 1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def rotations(self, dtype: torch.dtype) -> torch.Tensor:
        """``R_i`` for every block: (n, b, b)."""
        vec = self.weight.to(dtype)
        upper = torch.zeros(vec.shape[0], self.block_size, self.block_size, dtype=dtype, device=vec.device)
        upper[:, self.rows, self.cols] = vec
        skew = upper - upper.transpose(-2, -1)
        eye = torch.eye(self.block_size, dtype=dtype, device=vec.device).expand_as(skew)
        if not self.neumann_terms:
            return torch.linalg.solve(eye + skew, eye - skew, left=False)
        return self._neumann(skew, eye)

    def _neumann(self, skew: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
        """PEFT's truncated series, term for term (so its adapters give its rotations)."""
        terms, rotation = self.neumann_terms, eye.clone()
        if terms > 1:
            rotation = rotation + 2 * skew
        if terms > 2:
            power = skew @ skew
            rotation = rotation + 2 * power
            for _ in range(3, terms - 1):
                power = power @ skew
                rotation = rotation + 2 * power
            rotation = rotation + power @ skew
        return rotation


class OFTLayer(MatrixLayer):
    """A frozen layer whose input space is rotated block by block."""

    def __init__(self, base: nn.Module, block_size: int, neumann_terms: int) -> None:
        super().__init__(base)
        self.requested_block_size = block_size
        self.block_size = block_size_for(self.fan_in, block_size)
        blocks = self.fan_in // self.block_size
        self.oft_R = OFTRotation(blocks, self.block_size, neumann_terms, like=self.base_weight)

    def adapted_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        rotations = self.oft_R.rotations(weight.dtype)  # (n, b, b)
        blocks = weight.reshape(self.out_features, rotations.shape[0], self.block_size)
        return torch.einsum("onc,nkc->onk", blocks, rotations).reshape(weight.shape)
