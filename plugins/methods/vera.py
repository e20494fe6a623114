"""``vera``: VeRA, one frozen random pair of projections shared by every adapted layer and
two trained vectors per layer (the maths in ``vera_layers``): the fewest trainable
parameters of the low-rank methods, folded exactly into the weights of ``nn.Linear``,
transformers' Conv1D and ``nn.Conv2d`` of any groups, depthwise included.

Adapters are saved in PEFT's VERA layout with the projections (``save_projection``); PEFT
defines VeRA on Linear and Conv1D layers, where adapters move both ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import CheckpointError
from adapt.interfaces import BuiltModel
from adapt.plugins.methods.layer_method import LayerMethod, check_peft_type, peft_targets, refuse_peft_options
from adapt.plugins.methods.loha import TARGETS
from adapt.plugins.methods.lora import load_peft_state, peft_state

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Where PEFT keeps the shared projections in an adapter file.
PROJECTIONS = {"vera_A": "base_model.vera_A", "vera_B": "base_model.vera_B"}


class VeRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(256, ge=1, le=8192, description="rank of the shared projections (costs no trained parameters)")
    d_initial: float = Field(0.1, description="the starting value of every d (b starts at zero)")
    seed: int = Field(0, ge=0, description="seed of the shared projections (PEFT's projection_prng_key)")
    targets: str | list[str] | None = TARGETS


class VeRA(LayerMethod):
    name = "vera"
    options_schema = VeRAOptions
    peft_type = "VERA"
    label = "VeRA"
    default_families = ("attention-qv", "pointwise-conv")

    def layer_types(self) -> tuple[type, ...]:
        from adapt.plugins.methods.vera_layers import VeRALayer

        return (VeRALayer,)

    def prepare(self, built: BuiltModel, options: VeRAOptions, names: Sequence[str]) -> Any:
        """Draw the projections once, for the largest target (each layer reads its corner)."""
        from adapt.plugins.methods.vera_layers import projections
        from adapt.plugins.methods.weight_layers import matrix_shape

        shapes = [matrix_shape(built.model.get_submodule(n)) for n in names]
        out, fan_in = max(s[0] for s in shapes), max(s[1] for s in shapes)
        return projections(options.r, fan_in, out, options.seed)

    def wrap(self, module: nn.Module, options: VeRAOptions, name: str, shared: Any) -> nn.Module:
        from adapt.plugins.methods.vera_layers import VeRALayer

        return VeRALayer(module, shared, options.d_initial, options.seed)

    def peft_fields(self, layers: Mapping[str, Any]) -> dict[str, Any]:
        from transformers.pytorch_utils import Conv1D

        first = next(iter(layers.values()))
        return {
            "r": first.r,
            "d_initial": first.d_initial,
            "projection_prng_key": first.seed,
            "save_projection": True,
            "vera_dropout": 0.0,
            "fan_in_fan_out": any(isinstance(m.base_layer, Conv1D) for m in layers.values()),
            "bias": "none",
            "init_weights": True,
        }

    def adapter_state(self, built: BuiltModel) -> dict[str, torch.Tensor]:
        """The trained vectors and the shared projections, under PEFT's key names."""
        state = peft_state(built)
        first = next(iter(self.layers(built.model).values()))
        for buffer, key in PROJECTIONS.items():
            state[key] = getattr(first, buffer).detach().clone().contiguous()
        return state

    def load_adapter_state(self, built: BuiltModel, state: Mapping[str, torch.Tensor]) -> None:
        """The vectors, and the projections when the file has them (a PEFT adapter saved
        without them is refused: they would come from PEFT's generator, not the file)."""
        import torch

        layers = list(self.layers(built.model).values())
        missing = [key for key in PROJECTIONS.values() if key not in state]
        if missing:
            raise CheckpointError(
                f"VeRA adapter has no {', '.join(missing)}: its shared projections were not saved",
                hint="save the adapter with PEFT's save_projection=True (the default)",
            )
        for buffer, key in PROJECTIONS.items():
            tensor, ours = state[key], getattr(layers[0], buffer)
            if tuple(tensor.shape) != tuple(ours.shape):
                raise CheckpointError(
                    f"adapter tensor {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(ours.shape)}",
                    hint="was the adapter saved with another rank (method.options.r) or other targets?",
                )
            with torch.no_grad():
                for layer in layers:
                    getattr(layer, buffer).copy_(tensor)
        load_peft_state(built, {k: v for k, v in state.items() if k not in PROJECTIONS.values()})


def options_from_peft(config: Mapping[str, Any]) -> VeRAOptions:
    """VeRA options equal to a PEFT VERA ``adapter_config.json``."""
    check_peft_type(config, "VERA", "vera")
    refuse_peft_options(config, {"vera_dropout": 0.0, "bias": "none"}, "vera")
    return VeRAOptions(
        r=config["r"],
        d_initial=config.get("d_initial", 0.1),
        seed=config.get("projection_prng_key", 0),
        targets=peft_targets(config),
    )


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(VeRA())
