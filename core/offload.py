"""A PyTorch model's tensors parked on disk while a stage does not need them.

The export's quantisers (ONNX Runtime's) hold up to three copies of an fp32 graph while
they work; with the merged PyTorch model beside them, a 0.6B decoder's export would pass
4x its weights. The PyTorch model is idle meanwhile, so its tensors go to a safetensors
file in adapt's own staging folder and come back bit for bit afterwards: every reference
to the model stays valid, only its storage leaves memory for a while.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from adapt.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

#: The file's name in the folder it is written to (adapt's own staging folder).
OFFLOAD_FILE = ".offloaded-model.safetensors"


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (a tensor shared by two names once)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


@contextlib.contextmanager
def offloaded(model: nn.Module, folder: Path) -> Iterator[None]:
    """While the block runs, ``model``'s tensors live in ``folder``/OFFLOAD_FILE, not in memory.
    Nothing is freed until the file is written; the tensors are restored (and the file removed)
    however the block ends."""
    import torch
    from safetensors.torch import load_file, save_file

    from adapt.memory import give_back

    tensors: dict[str, torch.Tensor] = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    path = folder / OFFLOAD_FILE
    try:
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(path))
    except Exception as exc:  # noqa: BLE001 - OSError, or safetensors' own error type for the same causes
        path.unlink(missing_ok=True)
        raise ExportError(
            f"could not write the merged model's {model_bytes(model) / 2**20:,.0f} MiB to {path} while the export "
            f"quantises ({exc})",
            hint="free disk space beside the run (or run `adapt export RUN_DIR` again later); nothing was lost",
        ) from None
    devices = {name: t.device for name, t in tensors.items()}
    try:
        for tensor in tensors.values():
            tensor.data = torch.empty(0, dtype=tensor.dtype)
        give_back()
        yield
    finally:
        saved = load_file(str(path))
        for name, tensor in tensors.items():
            tensor.data = saved[name].to(devices[name])
        path.unlink(missing_ok=True)
