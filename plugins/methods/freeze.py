"""``freeze``: train the head only (a linear probe), optionally with the last N
blocks (partial fine-tuning) and/or every bias (BitFit).

Nothing is added to the model, so merging is the identity: the deployed model
is the backbone's own architecture with some weights trained.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import ConfigError
from adapt.interfaces import BuiltModel, MergeResult, Method
from adapt.params import SavesTrainedTensors


class FreezeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    last_blocks: int = Field(0, ge=0, description="also train the last N blocks of the backbone")
    biases: bool = Field(False, description="also train every bias (BitFit)")


class Freeze(SavesTrainedTensors, Method):
    name = "freeze"
    options_schema = FreezeOptions
    #: freeze adapts no target family: it trains the head (and ``last_blocks``, ``biases``)
    default_families: tuple[str, ...] = ()

    def apply(self, built: BuiltModel, options: FreezeOptions, default_targets: Sequence[str]) -> list[str]:
        from adapt.params import freeze_all_but

        if options.last_blocks > len(built.blocks):
            raise ConfigError(
                f"method.options.last_blocks = {options.last_blocks}, but this model has {len(built.blocks)} blocks",
                hint=f"use a number from 0 to {len(built.blocks)}",
            )
        trained = [*built.head, *built.new_parameters, *built.blocks[len(built.blocks) - options.last_blocks :]]
        if options.biases:
            trained += [n for n, _ in built.model.named_parameters() if n.endswith("bias")]
        return freeze_all_but(built.model, trained)

    def merge(self, built: BuiltModel) -> MergeResult:
        model = copy.deepcopy(built.model).float().eval()
        model.requires_grad_(False)
        return MergeResult(model, folded=True, note="freeze adds no modules; the merged model is the trained backbone")


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(Freeze())
