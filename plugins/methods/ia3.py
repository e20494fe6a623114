"""``ia3``: (IA)^3, a learnt scale per channel of the keys, the values and the MLP's inner
activations (the input of its output projection), folded exactly into those layers'
weights (the maths in ``ia3_layers``). The fewest trainable parameters of adapt's
methods after ``freeze``: one per channel scaled.

Adapters are saved in PEFT's IA3 layout (``peft_type: IA3``, ``ia3_l``,
``feedforward_modules``), so they move between adapt and PEFT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import CheckpointError, ConfigError
from adapt.interfaces import BuiltModel
from adapt.plugins.methods.layer_method import LayerMethod

if TYPE_CHECKING:
    from torch import nn


class IA3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: str | list[str] | None = Field(
        None,
        description="the layers scaled: a target family, a regular expression over module names, or a list of "
        "names / name suffixes; default: the families in default_families",
    )
    feedforward: str | list[str] | None = Field(
        None,
        description="which of the targets have their input scaled, not their output (PEFT's feedforward_modules): "
        "a family, regular expression or list; default: the targets in the mlp-output family",
    )


class IA3(LayerMethod):
    name = "ia3"
    options_schema = IA3Options
    peft_type = "IA3"
    label = "(IA)^3"
    #: keys and values, the MLP's output projection (input-scaled); a CNN's pointwise convolutions
    default_families = ("attention-kv", "mlp-output", "pointwise-conv")

    def layer_types(self) -> tuple[type, ...]:
        from adapt.plugins.methods.ia3_layers import IA3Layer

        return (IA3Layer,)

    def prepare(self, built: BuiltModel, options: IA3Options, names: Sequence[str]) -> set[str]:
        """The targets whose input is scaled: those the option names (all must be targets),
        else those in the model's mlp-output family."""
        from adapt.plugins.methods.ia3_layers import IA3_KINDS
        from adapt.targets import find_targets

        if options.feedforward is None:
            return set(names) & set(built.families.get("mlp-output", ()))
        if not options.feedforward:  # an empty list: every target output-scaled
            return set()
        chosen = set(find_targets(built.model, options.feedforward, IA3_KINDS, families=built.families))
        strays = sorted(chosen - set(names))
        if strays:
            raise ConfigError(
                f"method.options.feedforward names layers that are not targets: {', '.join(strays)}",
                hint="feedforward picks which targets have their input scaled; add them to method.options.targets",
            )
        return chosen

    def wrap(self, module: nn.Module, options: IA3Options, name: str, shared: set[str]) -> nn.Module:
        from adapt.plugins.methods.ia3_layers import IA3Layer

        return IA3Layer(module, name in shared)

    def peft_fields(self, layers: Mapping[str, Any]) -> dict[str, Any]:
        from transformers.pytorch_utils import Conv1D

        return {
            "feedforward_modules": sorted(n for n, m in layers.items() if m.feedforward),
            "fan_in_fan_out": any(isinstance(m.base_layer, Conv1D) for m in layers.values()),
            "init_ia3_weights": True,
        }

    def merge_note(self, layers: Mapping[str, Any]) -> str:
        inputs = sum(1 for m in layers.values() if m.feedforward)
        return f"{len(layers)} (IA)^3 scales folded into their layers' weights ({inputs} on the input side)"


def options_from_peft(config: Mapping[str, Any]) -> IA3Options:
    """(IA)^3 options equal to a PEFT IA3 ``adapter_config.json``."""
    if config.get("peft_type") != "IA3":
        raise CheckpointError(
            f"adapter is of PEFT type {config.get('peft_type')!r}, not IA3", hint="method ia3 loads PEFT IA3 adapters"
        )
    targets, feedforward = config.get("target_modules"), config.get("feedforward_modules")
    if isinstance(targets, str):  # PEFT matches it against names inside the wrapped model
        targets = r"(?:model\.)?(?:" + targets + ")"
    if isinstance(feedforward, str):
        feedforward = r"(?:model\.)?(?:" + feedforward + ")"
    return IA3Options(
        targets=targets, feedforward=feedforward if isinstance(feedforward, str) else list(feedforward or [])
    )


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(IA3())
