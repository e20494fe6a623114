"""torch.distributed when launched by ``torchrun``; a no-op otherwise.

``torchrun --nproc_per_node N $(which adapt) run config.yaml`` sets the usual
environment variables; each process trains on its shard of every epoch, DDP
averages the gradients, and only rank 0 writes files or prints. With
``train.strategy: fsdp`` the frozen base is sharded across the processes instead
of copied to each (:func:`shard`), and rank 0 rebuilds the whole model from the
checkpoint and the saved adapter for the merge (the base never changed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_environment() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (
        Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else Dist()
    )


def init(dist: Dist, device_type: str) -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA) when launched by torchrun."""
    if not dist.active:
        return
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group("nccl" if device_type == "cuda" else "gloo")


def barrier(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as td

        td.barrier()


def mean(dist: Dist, value: float) -> float:
    """The mean of ``value`` over all processes."""
    if not dist.active:
        return value
    import torch
    import torch.distributed as td

    tensor = torch.tensor([value], dtype=torch.float64)
    td.all_reduce(tensor)
    return float(tensor.item()) / dist.world


def shutdown(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


def shard(model: Any, blocks: Sequence[str], keep: Sequence[Any], device_type: str) -> int:
    """FSDP2 (``fully_shard``) over each of ``blocks`` and the whole ``model``: every frozen
    parameter is split across the processes and gathered for the forward and backward of its
    block only. ``keep`` (the trainable parameters) stays whole on every process, so
    checkpoints, resuming and the saved adapter are as without sharding; their gradients
    are averaged by :func:`average_gradients`. Returns the bytes of weights sharded."""
    import torch.distributed as td
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (td.get_world_size(),))
    ignored = set(keep)
    sharded = sum(p.numel() * p.element_size() for p in model.parameters() if p not in ignored)
    for name in blocks:
        fully_shard(model.get_submodule(name), mesh=mesh, ignored_params=ignored)
    fully_shard(model, mesh=mesh, ignored_params=ignored)
    return sharded


def average_gradients(dist: Dist, params: Sequence[Any]) -> None:
    """The mean of each parameter's gradient over the processes (what DDP does for its model),
    in one flat all-reduce."""
    if not dist.active:
        return
    import torch
    import torch.distributed as td
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    td.all_reduce(flat)
    flat /= dist.world
    with torch.no_grad():
        for grad, mean in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(mean)
