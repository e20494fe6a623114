"""(IA)^3 for adapt: a method plugin, written against adapt's public surface only.

(IA)^3 (Liu et al., 2022) learns one scale per output channel of chosen layers,
starting at 1: ``y = l * (W x + b)``. That is the same kind of layer again, with
``W' = diag(l) W`` and ``b' = l * b``, so the merge is exact and the deployed model
is the base architecture. It trains about 0.1% of a BERT's weights.

adapt now ships ``ia3`` itself (input scaling of the MLP too, PEFT's layout); this
example stays the minimal version of the same idea, registered as ``ia3-outputs`` so
that both can be installed side by side. Use it in a config::

    method:
      name: ia3-outputs
      options: {targets: [key, value, intermediate.dense]}

torch is imported only when the method is applied (``layers.py``), so that
listing plugins stays fast.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import ConfigError
from adapt.interfaces import BuiltModel, MergeResult
from adapt.params import SavesTrainedTensors
from adapt.targets import fold_modules, swap_modules


class IA3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: str | list[str] | None = Field(
        None,
        description="layers whose outputs are scaled: a target family, a regular expression, or names / name "
        "suffixes; default: the families in default_families",
    )


class IA3(SavesTrainedTensors):  # saves and loads every trained tensor (the scales and the head)
    name = "ia3-outputs"
    options_schema = IA3Options
    default_families = ("attention", "mlp-output", "pointwise-conv")

    def apply(self, built: BuiltModel, options: IA3Options, default_targets: Sequence[str]) -> list[str]:
        from torch import nn

        from adapt_ia3.layers import Scaled

        spec = options.targets if options.targets is not None else list(default_targets)
        if not spec:
            raise ConfigError(
                "method 'ia3-outputs' needs target layers and the backbone names none",
                hint="set method.options.targets, e.g. [key, value, intermediate.dense]",
            )
        return swap_modules(built, spec, (nn.Linear, nn.Conv2d), Scaled, trained=["scale"])

    def merge(self, built: BuiltModel) -> MergeResult:
        from adapt_ia3.layers import Scaled

        model = copy.deepcopy(built.model).float().eval()
        fold_modules(model, Scaled, Scaled.folded)
        model.requires_grad_(False)
        return MergeResult(model, folded=True, note="(IA)^3 scales folded into the weights and biases")


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(IA3())
