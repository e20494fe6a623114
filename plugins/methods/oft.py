"""``oft``: orthogonal fine-tuning, each adapted layer's input space rotated by a learnt
block-diagonal orthogonal matrix (Cayley parametrisation; the maths in ``oft_layers``),
folded exactly (``W' = W R^T``) into ``nn.Linear``, transformers' Conv1D and ``nn.Conv2d``
of any groups, depthwise included.

Adapters are saved in PEFT's OFT layout (``oft_R.weight``) and move both ways on Linear
layers; on an ungrouped convolution PEFT's merge equals adapt's fold (PEFT's OFT ignores a
convolution's groups, and its unmerged forward only approximates the rotation for kernels
past 1x1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapt import hookimpl
from adapt.plugins.methods.layer_method import LayerMethod, check_peft_type, peft_targets, refuse_peft_options
from adapt.plugins.methods.loha import TARGETS

if TYPE_CHECKING:
    from torch import nn

#: PEFT OFT options adapt does not implement, with the value they must keep.
UNSUPPORTED = {"coft": False, "block_share": False, "module_dropout": 0.0}


class OFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(
        32,
        ge=2,
        le=4096,
        description="size of each rotation block; a layer whose fan-in it does not divide uses "
        "the nearest divisor (as PEFT does)",
    )
    neumann_terms: int = Field(
        0,
        ge=0,
        le=64,
        description="0: the exact Cayley transform (R orthogonal); k >= 2: PEFT's Cayley-Neumann "
        "series of k terms (cheaper, nearly orthogonal; PEFT's default is 5)",
    )
    targets: str | list[str] | None = TARGETS

    @field_validator("neumann_terms")
    @classmethod
    def _not_one(cls, value: int) -> int:
        if value == 1:
            raise ValueError("a Neumann series of 1 term is the identity: use 0 (exact) or at least 2")
        return value


class OFT(LayerMethod):
    name = "oft"
    options_schema = OFTOptions
    peft_type = "OFT"
    label = "OFT"

    def layer_types(self) -> tuple[type, ...]:
        from adapt.plugins.methods.oft_layers import OFTLayer

        return (OFTLayer,)

    def wrap(self, module: nn.Module, options: OFTOptions, name: str, shared: Any) -> nn.Module:
        from adapt.plugins.methods.oft_layers import OFTLayer

        return OFTLayer(module, options.block_size, options.neumann_terms)

    def peft_fields(self, layers: Mapping[str, Any]) -> dict[str, Any]:
        from transformers.pytorch_utils import Conv1D

        first = next(iter(layers.values()))
        terms = first.oft_R.neumann_terms
        return {
            "r": 0,
            "oft_block_size": first.requested_block_size,
            "use_cayley_neumann": bool(terms),
            "num_cayley_neumann_terms": terms or 5,
            "fan_in_fan_out": any(isinstance(m.base_layer, Conv1D) for m in layers.values()),
            "eps": 6e-5,
            "init_weights": True,
            **UNSUPPORTED,
        }


def options_from_peft(config: Mapping[str, Any]) -> OFTOptions:
    """OFT options equal to a PEFT OFT ``adapter_config.json`` (blocks given by their size)."""
    from adapt.errors import CheckpointError

    check_peft_type(config, "OFT", "oft")
    refuse_peft_options(config, UNSUPPORTED, "oft")
    if not config.get("oft_block_size"):
        raise CheckpointError(
            "adapter gives OFT's block count (r), not its block size", hint="train it with oft_block_size set, r=0"
        )
    neumann = config.get("use_cayley_neumann", True)
    return OFTOptions(
        block_size=config["oft_block_size"],
        neumann_terms=config.get("num_cayley_neumann_terms", 5) if neumann else 0,
        targets=peft_targets(config),
    )


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(OFT())
