"""``freeze``: train the head only (a linear probe), optionally with the last N
blocks (partial fine-tuning) and/or every bias (BitFit).

Nothing is added to the model, so merging is the identity: the deployed model
is the backbone's own architecture with some weights trained.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import CheckpointError, ConfigError
from adapt.interfaces import BuiltModel, MergeResult

if TYPE_CHECKING:
    import torch


class FreezeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    last_blocks: int = Field(0, ge=0, description="also train the last N blocks of the backbone")
    biases: bool = Field(False, description="also train every bias (BitFit)")


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class Freeze:
    name = "freeze"
    options_schema = FreezeOptions

    def apply(self, built: BuiltModel, options: FreezeOptions, default_targets: Sequence[str]) -> list[str]:
        if options.last_blocks > len(built.blocks):
            raise ConfigError(
                f"method.options.last_blocks = {options.last_blocks}, but this model has {len(built.blocks)} blocks",
                hint=f"use a number from 0 to {len(built.blocks)}",
            )
        trained = [*built.head, *built.blocks[len(built.blocks) - options.last_blocks:]]
        names = []
        for name, param in built.model.named_parameters():
            train = _under(name, trained) or name in built.new_parameters or (options.biases and name.endswith("bias"))
            param.requires_grad_(train)
            if train:
                names.append(name)
        return names

    def adapter_state(self, built: BuiltModel) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone().contiguous() for n, p in built.model.named_parameters() if p.requires_grad}

    def load_adapter_state(self, built: BuiltModel, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(built.model.named_parameters())
        for name, tensor in state.items():
            if name not in params:
                raise CheckpointError(f"adapter tensor {name!r} has no counterpart in the model", hint="was the adapter saved from another backbone or task?")
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"adapter tensor {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(params[name].shape)}",
                    hint="was the adapter saved for another label count or architecture?",
                )
        import torch

        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def merge(self, built: BuiltModel) -> MergeResult:
        model = copy.deepcopy(built.model).float().eval()
        model.requires_grad_(False)
        return MergeResult(model, folded=True, note="freeze adds no modules; the merged model is the trained backbone")


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(Freeze())
