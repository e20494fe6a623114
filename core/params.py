"""Which parameters train, and saving / loading just those.

Every method leaves a set of parameters trainable (its own, the task head,
and whatever the checkpoint did not provide) and saves exactly those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from adapt.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported where tensors are handled, so plugins can import this cheaply
    import torch
    from torch import nn


def under(name: str, prefixes: Sequence[str]) -> bool:
    """True when ``name`` is one of ``prefixes`` or lies inside one (dotted)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_all_but(model: nn.Module, trainable: Sequence[str]) -> list[str]:
    """Make exactly the parameters under ``trainable`` (names or module prefixes) trainable; return their names."""
    names = []
    for name, param in model.named_parameters():
        train = under(name, trainable)
        param.requires_grad_(train)
        if train:
            names.append(name)
    return names


def trained_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers of modules that train (a trained BatchNorm's running statistics):
    they change with training, so they are saved with the trainable parameters. A
    buffer registered not persistent is not state (OFT's index tables, VeRA's shared
    projections, which the method saves once itself)."""
    buffers = {}
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and name not in module._non_persistent_buffers_set:
                    buffers[f"{prefix}.{name}" if prefix else name] = buffer
    return buffers


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters and of the trained modules' buffers, ready for safetensors."""
    state = {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone().contiguous() for n, b in trained_buffers(model).items()})
    return state


def load_parameters(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's parameters (and buffers); CheckpointError naming the first misfit."""
    params = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    for name, tensor in state.items():
        if name not in params:
            raise CheckpointError(
                f"adapter tensor {name!r} has no counterpart in the model",
                hint="was the adapter saved from another backbone, task or method options?",
            )
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"adapter tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(params[name].shape)}",
                hint="was the adapter saved for another label count or architecture?",
            )
    import torch

    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


class SavesTrainedTensors:
    """``adapter_state`` / ``load_adapter_state`` for methods whose adapter is simply
    the trainable tensors under their own names (freeze, adapters)."""

    def adapter_state(self, built: Any) -> dict[str, torch.Tensor]:
        return trainable_state(built.model)

    def load_adapter_state(self, built: Any, state: Mapping[str, torch.Tensor]) -> None:
        load_parameters(built.model, state)
