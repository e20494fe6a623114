"""The PyTorch side of an adapter bundle (adapt.bundle): the checkpoint's model with a
low-rank branch beside every layer some run adapted, and its head as plain parameters,
so that the ONNX export names each factor and head tensor and the graph can take them
as inputs (adapt.bundle_graph). Fed zeros, a branch adds nothing: the base model.

A branch computes ``base(x) + up(down(x))`` with the run's ``s B A`` split as
``down = A`` and ``up = s B`` (the scale rides in ``up``, so runs with different ranks and
alphas feed the same graph):

* a Linear (or transformers' Conv1D): ``x @ down @ up``, ``down`` (in, r) and ``up`` (r, out),
  A and s B transposed, so each is a MatMul's direct input;
* a Conv2d with g groups (depthwise included): ``down`` the weight of the layer's own k x k
  convolution with g groups to g r channels (same stride, padding, dilation), ``up`` a 1 x 1
  convolution with g groups back to ``out``: :class:`adapt.interfaces.LowRank`'s layout;
* a convolution whose whole weight is no larger than its rank-1 factors (a depthwise conv:
  C k^2 numbers against C k^2 + C) takes the update whole, ``s B A`` as one kernel, and the
  branch is the layer's own convolution with it (:class:`DenseBranch`): a g r-channel
  grouped conv and a 1 x 1 conv after it cost several times the depthwise conv itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from adapt.errors import ConfigError
from adapt.interfaces import LowRank

DOWN, UP, DELTA = "bundle_down", "bundle_up", "bundle_delta"
HEAD_WEIGHT, HEAD_BIAS = "weight_t", "bias"


@dataclass(frozen=True)
class GraphInput:
    """A tensor the bundle's graph takes as an input (its default the initializer of the
    same name): its dynamic axes (axis -> symbol: a rank, a label count)."""

    name: str
    axes: Mapping[int, str]


class LowRankBranch(nn.Module):
    """A frozen layer plus ``up(down(x))``, both factors parameters the export names."""

    def __init__(self, base: Any) -> None:
        super().__init__()
        self.base = base
        weight: torch.Tensor = base.weight
        self.conv = isinstance(base, nn.Conv2d)
        if self.conv:
            g = base.groups
            if type(base) is not nn.Conv2d and base.bias is not None:
                raise ConfigError(
                    f"{type(base).__name__} has a bias and its own padding: the bundle cannot run its low-rank "
                    "branch through it",
                    hint="leave this layer out of the runs' method.options.targets",
                )
            down = torch.zeros(g, base.in_channels // g, *base.kernel_size)
            up = torch.zeros(base.out_channels, 1, 1, 1)
        else:
            fan_in = weight.shape[0] if not isinstance(base, nn.Linear) else weight.shape[1]  # Conv1D stores (in, out)
            out = weight.shape[1] if not isinstance(base, nn.Linear) else weight.shape[0]
            down, up = torch.zeros(fan_in, 1), torch.zeros(1, out)
        setattr(self, DOWN, nn.Parameter(down.to(weight.dtype), requires_grad=False))
        setattr(self, UP, nn.Parameter(up.to(weight.dtype), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down, up = getattr(self, DOWN), getattr(self, UP)
        if not self.conv:
            return self.base(x) + torch.matmul(torch.matmul(x, down), up)
        base: Any = self.base
        return base(x) + F.conv2d(conv_with(base, x, down), up, groups=base.groups)

    def inputs(self, name: str) -> list[GraphInput]:
        if self.conv:  # down (g r, in/g, kh, kw), up (out, r, 1, 1)
            return [GraphInput(f"{name}.{DOWN}", {0: "ranks"}), GraphInput(f"{name}.{UP}", {1: "rank"})]
        return [GraphInput(f"{name}.{DOWN}", {1: "rank"}), GraphInput(f"{name}.{UP}", {0: "rank"})]

    def feed(self, name: str, update: LowRank) -> dict[str, torch.Tensor]:
        """The values of this branch's inputs that give ``update``."""
        a, b = update.A.float(), update.B.float() * update.scale
        if not self.conv:
            return {f"{name}.{DOWN}": a.T.contiguous(), f"{name}.{UP}": b.T.contiguous()}
        groups: int = self.base.groups
        if a.shape[0] % groups or a.shape[1:] != getattr(self, DOWN).shape[1:]:
            raise ConfigError(
                f"the update of {name} has shape {tuple(a.shape)}, which is not a rank-r factor of this "
                f"{groups}-group convolution",
                hint="the run's method gives low-rank updates in another layout than adapt.interfaces.LowRank",
            )
        return {f"{name}.{DOWN}": a.contiguous(), f"{name}.{UP}": b.contiguous()}


def conv_with(base: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``base``'s convolution (its stride, padding, dilation, groups) with another weight and no bias."""
    if type(base) is nn.Conv2d:
        return F.conv2d(x, weight, None, base.stride, base.padding, base.dilation, base.groups)
    return functional_call(base, {"weight": weight}, (x,))  # its own padding (timm's Conv2dSame); no bias: checked


def dense_update(base: Any, update: LowRank) -> torch.Tensor:
    """``s B A`` as a kernel of ``base``'s shape: per group, B's rows times A's."""
    groups = base.groups
    a = update.A.float().reshape(groups, -1, update.A[0].numel())  # (g, r, in/g kh kw)
    b = update.B.float().reshape(groups, base.out_channels // groups, -1)  # (g, out/g, r)
    return (torch.bmm(b, a) * update.scale).reshape(base.weight.shape)


def prefers_dense(base: Any) -> bool:
    """Whether a convolution's whole update is no larger than its rank-1 factors (a depthwise
    conv: C k^2 numbers against C k^2 + C): then one conv with the update's kernel is the
    cheaper branch, in time and in the adapter's size."""
    return (
        isinstance(base, nn.Conv2d) and base.weight.numel() <= base.weight[0].numel() * base.groups + base.out_channels
    )


class DenseBranch(nn.Module):
    """A frozen convolution plus the same convolution with the update's kernel ``s B A`` (for
    the layers :func:`prefers_dense` picks), fed whole as one parameter the export names."""

    def __init__(self, base: Any) -> None:
        super().__init__()
        if type(base) is not nn.Conv2d and base.bias is not None:
            raise ConfigError(
                f"{type(base).__name__} has a bias and its own padding: the bundle cannot run its update through it",
                hint="leave this layer out of the runs' method.options.targets",
            )
        self.base = base
        setattr(self, DELTA, nn.Parameter(torch.zeros_like(base.weight), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + conv_with(self.base, x, getattr(self, DELTA))

    def inputs(self, name: str) -> list[GraphInput]:
        return [GraphInput(f"{name}.{DELTA}", {})]

    def feed(self, name: str, update: LowRank) -> dict[str, torch.Tensor]:
        return {f"{name}.{DELTA}": dense_update(self.base, update).contiguous()}


class HeadLinear(nn.Module):
    """A Linear head as ``x @ weight_t + bias``: its weight stored (in, out), so the export
    uses the parameter itself (a Linear's weight would be folded into a transposed copy)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(torch.zeros(linear.in_features, 1), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.has_bias = linear.bias is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight_t) + self.bias

    def inputs(self, name: str) -> list[GraphInput]:
        return [GraphInput(f"{name}.{HEAD_WEIGHT}", {1: "labels"}), GraphInput(f"{name}.{HEAD_BIAS}", {0: "labels"})]

    def feed(self, name: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weight = state[f"{name}.weight"].float()
        bias = state[f"{name}.bias"].float() if self.has_bias else torch.zeros(weight.shape[0])
        return {f"{name}.{HEAD_WEIGHT}": weight.T.contiguous(), f"{name}.{HEAD_BIAS}": bias}


class BundleModel:
    """One kind of graph (a task's model class): the checkpoint's model with branches on
    ``targets`` and the trained ``head`` parameters as inputs; :meth:`feed` gives a run's values."""

    def __init__(self, model: nn.Module, targets: Iterable[str], head: Iterable[str]) -> None:
        from adapt.targets import replace_module

        self.model = model.float().eval().requires_grad_(False)
        self.branches: dict[str, LowRankBranch | DenseBranch] = {}
        for name in sorted(set(targets)):
            layer = model.get_submodule(name)
            self.branches[name] = DenseBranch(layer) if prefers_dense(layer) else LowRankBranch(layer)
            replace_module(model, name, self.branches[name])
        self.heads: dict[str, HeadLinear] = {}
        self.plain: list[str] = []  # head parameters of other modules (a norm): inputs under their own names
        for module_name in sorted({n.rpartition(".")[0] for n in head}):
            module = model.get_submodule(module_name)
            if isinstance(module, nn.Linear):
                self.heads[module_name] = HeadLinear(module)
                replace_module(model, module_name, self.heads[module_name])
            else:
                self.plain += sorted(n for n in head if n.rpartition(".")[0] == module_name)
        self._distinct()

    def _distinct(self) -> None:
        """Random values in every input tensor while tracing: the exporter merges initializers of
        equal value into one, which would leave two inputs under one name (adapt.bundle_graph then
        sets each default to zeros)."""
        generator = torch.Generator().manual_seed(0)
        names = {i.name for i in self.inputs()}
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in names:
                    param.copy_(torch.randn(param.shape, generator=generator))

    @property
    def branch_inputs(self) -> set[str]:
        """The names of the low-rank factors' inputs (shared by every task kind's graph)."""
        return {i.name for name, branch in self.branches.items() for i in branch.inputs(name)}

    def inputs(self) -> list[GraphInput]:
        found = [i for name, branch in self.branches.items() for i in branch.inputs(name)]
        found += [i for name, head in self.heads.items() for i in head.inputs(name)]
        return found + [GraphInput(name, {}) for name in self.plain]

    def feed(self, updates: Mapping[str, LowRank], head_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """A run's values of this graph's inputs, as float32 numpy arrays: its updates (layers it
        did not adapt keep the graph's zeros) and its head."""
        values: dict[str, torch.Tensor] = {}
        for name, update in updates.items():
            if name in self.branches:
                values.update(self.branches[name].feed(name, update))
        for name, head in self.heads.items():
            values.update(head.feed(name, head_state))
        values.update({name: head_state[name].float() for name in self.plain})
        return {name: tensor.detach().cpu().numpy() for name, tensor in values.items()}
