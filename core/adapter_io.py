"""Saving and loading what a method trained, as safetensors in a folder.

The folder holds ``adapter_model.safetensors`` and, for methods that describe
themselves (LoRA, in PEFT's format), ``adapter_config.json``: the layout PEFT
uses, so LoRA adapters move between adapt and PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapt.errors import CheckpointError
from adapt.interfaces import BuiltModel
from adapt.rundir import atomic_write_bytes, atomic_write_json

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


def save_adapter(method: Any, built: BuiltModel, directory: Path) -> list[Path]:
    """Write the method's trained tensors (and its adapter config, if it has one)."""
    from safetensors.torch import save

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in method.adapter_state(built).items()}
    written = [directory / WEIGHTS_FILE]
    atomic_write_bytes(written[0], save(state, metadata={"format": "pt", "method": method.name}))
    config = method.adapter_config(built)
    if config is not None:
        atomic_write_json(directory / CONFIG_FILE, config)
        written.append(directory / CONFIG_FILE)
    return written


def read_adapter_config(directory: Path) -> dict[str, Any] | None:
    path = directory / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc}", hint="the adapter folder is damaged; save the adapter again"
        ) from None


def load_adapter(method: Any, built: BuiltModel, directory: Path) -> None:
    """Load tensors written by :func:`save_adapter` into a model the method was applied to."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / WEIGHTS_FILE
    if not path.exists():
        raise CheckpointError(
            f"no adapter weights at {path}", hint="point at a folder written by adapt or by PEFT's save_pretrained"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read adapter weights {path}: {exc}",
            hint="the file is truncated or corrupt; save the adapter again",
        ) from None
    method.load_adapter_state(built, state)
