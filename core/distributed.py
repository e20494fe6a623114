"""torch.distributed when launched by ``torchrun``; a no-op otherwise.

``torchrun --nproc_per_node N $(which adapt) run config.yaml`` sets the usual
environment variables; each process trains on its shard of every epoch, DDP
averages the gradients, and only rank 0 writes files or prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
