"""Training checkpoints: everything needed to continue a run exactly.

One file, ``checkpoints/last.pt``, holding the trainable tensors, optimiser,
scheduler and grad-scaler state, the RNG states, the position in the data
(epoch and batch) and the metrics so far. It is written to a temporary file and
renamed over the old one, so a crash at any moment leaves a complete
checkpoint; it is read back with ``weights_only=True`` (no code is unpickled).
"""

from __future__ import annotations

import io
import pickle
import random
import re
from pathlib import Path
from typing import Any

import torch

from adapt.errors import CheckpointError
from adapt.rundir import atomic_write_bytes

CHECKPOINT = Path("checkpoints") / "last.pt"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({**payload, "rng": rng_state()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path: Path | str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only. A file
    that holds pickled code (classes, functions) is refused with adapt's own message;
    PyTorch's suggestion to reload it with ``weights_only=False`` is not passed on,
    because that would run whatever code the file carries."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc)))) or ["a Python object"]
        raise CheckpointError(
            f"{path} contains pickled Python code ({', '.join(names[:3])}), not only tensors, and is refused: loading "
            "it could run that code",
            hint="if you trust the file, re-save its tensors as safetensors "
            "(safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')) and point the config at "
            "that",
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return load_tensors(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user problem
        raise CheckpointError(
            f"cannot read training checkpoint {path}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint="it is damaged; delete it to train that run again from the start",
        ) from None
