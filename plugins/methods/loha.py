"""``loha`` and ``lokr``: LyCORIS' Hadamard and Kronecker updates (the maths in
``lycoris_layers``), folded exactly into the weights of every layer they adapt:
``nn.Linear``, transformers' Conv1D and ``nn.Conv2d`` of any groups, depthwise included.

Adapters are saved in PEFT's LOHA / LOKR layout and load in PEFT's own classes (PEFT
defines them on Linear and Conv2d, not on GPT-2's Conv1D); PEFT's adapters load here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapt import hookimpl
from adapt.plugins.methods.layer_method import LayerMethod, check_peft_type, peft_targets, refuse_peft_options

if TYPE_CHECKING:
    from torch import nn

TARGETS = Field(
    None,
    description="a target family, a regular expression over module names, or a list of names / name suffixes; "
    "default: the families in default_families",
)
#: PEFT options adapt's LyCORIS methods do not implement, with the value they must keep.
UNSUPPORTED = {"rank_dropout": 0.0, "module_dropout": 0.0, "use_effective_conv2d": False}


class LoHaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, le=4096, description="rank of each of the two products (the update reaches rank r^2)")
    alpha: float = Field(8.0, gt=0, description="scale: the update is multiplied by alpha / r")
    targets: str | list[str] | None = TARGETS


class LoKrOptions(LoHaOptions):
    r: int = Field(8, ge=1, le=4096, description="rank of the low-rank Kronecker factor(s)")
    decompose_both: bool = Field(False, description="also make the small Kronecker factor low-rank")
    decompose_factor: int = Field(
        -1, ge=-1, description="split each dimension as this factor times the rest; -1: near its square root"
    )

    @field_validator("decompose_factor")
    @classmethod
    def _a_factor(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 splits nothing: give a factor of at least 1, or -1 for near the square root")
        return value


class LoHa(LayerMethod):
    name = "loha"
    options_schema = LoHaOptions
    peft_type = "LOHA"
    label = "LoHa"

    def layer_types(self) -> tuple[type, ...]:
        from adapt.plugins.methods.lycoris_layers import LoHaLayer

        return (LoHaLayer,)

    def wrap(self, module: nn.Module, options: LoHaOptions, name: str, shared: Any) -> nn.Module:
        from adapt.plugins.methods.lycoris_layers import LoHaLayer

        return LoHaLayer(module, options.r, options.alpha)

    def peft_fields(self, layers: Mapping[str, Any]) -> dict[str, Any]:
        first = next(iter(layers.values()))
        return {"r": first.r, "alpha": first.alpha, "init_weights": True, **UNSUPPORTED}


class LoKr(LayerMethod):
    name = "lokr"
    options_schema = LoKrOptions
    peft_type = "LOKR"
    label = "LoKr"

    def layer_types(self) -> tuple[type, ...]:
        from adapt.plugins.methods.lycoris_layers import LoKrLayer

        return (LoKrLayer,)

    def wrap(self, module: nn.Module, options: LoKrOptions, name: str, shared: Any) -> nn.Module:
        from adapt.plugins.methods.lycoris_layers import LoKrLayer

        return LoKrLayer(module, options.r, options.alpha, options.decompose_both, options.decompose_factor)

    def peft_fields(self, layers: Mapping[str, Any]) -> dict[str, Any]:
        first = next(iter(layers.values()))
        return {
            "r": first.r,
            "alpha": first.alpha,
            "decompose_both": first.decompose_both,
            "decompose_factor": first.decompose_factor,
            "rank_dropout_scale": False,
            "init_weights": True,
            **UNSUPPORTED,
        }


def loha_options_from_peft(config: Mapping[str, Any]) -> LoHaOptions:
    """LoHa options equal to a PEFT LOHA ``adapter_config.json``."""
    check_peft_type(config, "LOHA", "loha")
    refuse_peft_options(config, UNSUPPORTED, "loha")
    return LoHaOptions(r=config["r"], alpha=config["alpha"], targets=peft_targets(config))


def lokr_options_from_peft(config: Mapping[str, Any]) -> LoKrOptions:
    """LoKr options equal to a PEFT LOKR ``adapter_config.json``."""
    check_peft_type(config, "LOKR", "lokr")
    refuse_peft_options(config, UNSUPPORTED, "lokr")
    return LoKrOptions(
        r=config["r"],
        alpha=config["alpha"],
        decompose_both=config.get("decompose_both", False),
        decompose_factor=config.get("decompose_factor", -1),
        targets=peft_targets(config),
    )


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(LoHa())
    register(LoKr())
