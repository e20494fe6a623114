"""``ia3``: (IA)^3, a learnt scale per channel of the keys, the values and the MLP's inner
activations (the input of its output projection), folded exactly into those layers'
weights (the maths in ``ia3_layers``). The fewest trainable parameters of adapt's
methods after ``freeze``: one per channel scaled.

Adapters are saved in PEFT's IA3 layout (``peft_type: IA3``, ``ia3_l``,
``feedforward_modules``), so they move between adapt and PEFT.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import CheckpointError, ConfigError
from adapt.interfaces import BuiltModel, MergeResult, Method
from adapt.plugins.methods.lora import PEFT_TASK_TYPES, inner_prefix, load_peft_state, peft_state, target_spec

if TYPE_CHECKING:
    import torch


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


class IA3(Method):
    name = "ia3"
    options_schema = IA3Options
    #: keys and values, the MLP's output projection (input-scaled); a CNN's pointwise convolutions
    default_families = ("attention-kv", "mlp-output", "pointwise-conv")

    def apply(self, built: BuiltModel, options: IA3Options, default_targets: Sequence[str]) -> list[str]:
        from adapt.params import freeze_all_but
        from adapt.plugins.methods.ia3_layers import IA3_KINDS, IA3Layer
        from adapt.targets import find_targets, replace_module

        model = built.model
        spec = target_spec(self, bool(self._layers(model)), options.targets, default_targets, built)
        names = find_targets(model, spec, IA3_KINDS, exclude=built.head, families=built.families)
        feedforward = self._feedforward(built, options, names)
        for name in names:
            replace_module(model, name, IA3Layer(model.get_submodule(name), name in feedforward))
        return freeze_all_but(model, [*(f"{n}.ia3_l" for n in names), *built.head, *built.new_parameters])

    @staticmethod
    def _feedforward(built: BuiltModel, options: IA3Options, names: Sequence[str]) -> set[str]:
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

    @staticmethod
    def _layers(model: torch.nn.Module) -> dict[str, Any]:
        from adapt.plugins.methods.ia3_layers import IA3Layer

        return {n: m for n, m in model.named_modules() if isinstance(m, IA3Layer)}

    # -- saving, in PEFT's layout ---------------------------------------------

    def adapter_state(self, built: BuiltModel) -> dict[str, torch.Tensor]:
        """Trained tensors (the scales, a head) under PEFT's key names: PEFT's shapes are adapt's."""
        return peft_state(built)

    def adapter_config(self, built: BuiltModel) -> dict[str, Any]:
        """PEFT's adapter_config.json for this model's (IA)^3 layers."""
        from transformers.pytorch_utils import Conv1D

        layers = self._layers(built.model)
        if not layers:
            raise ConfigError("no (IA)^3 layers in this model", hint="apply the ia3 method first")
        prefix = inner_prefix(built.model)
        trained = sorted(
            {
                n.rpartition(".")[0].removeprefix(prefix)
                for n, p in built.model.named_parameters()
                if p.requires_grad and not n.endswith(".ia3_l")
            }
        )
        transformers_model = hasattr(getattr(built.model, "model", built.model), "config")
        return {
            "peft_type": "IA3",
            "task_type": PEFT_TASK_TYPES.get(built.task) if transformers_model else None,
            "base_model_name_or_path": built.checkpoint if transformers_model else None,
            "target_modules": sorted(n.removeprefix(prefix) for n in layers),
            "feedforward_modules": sorted(n.removeprefix(prefix) for n, m in layers.items() if m.feedforward),
            "modules_to_save": trained or None,
            "fan_in_fan_out": any(isinstance(m.base_layer, Conv1D) for m in layers.values()),
            "init_ia3_weights": True,
            "inference_mode": True,
        }

    def load_adapter_state(self, built: BuiltModel, state: Mapping[str, torch.Tensor]) -> None:
        """Load tensors saved by :meth:`adapter_state` or by PEFT (PEFT or adapt key names)."""
        load_peft_state(built, state)

    # -- merging --------------------------------------------------------------

    def merge(self, built: BuiltModel) -> MergeResult:
        from adapt.targets import replace_module

        model = copy.deepcopy(built.model).float().eval()
        layers = self._layers(model)
        for name, layer in layers.items():
            replace_module(model, name, layer.folded())
        model.requires_grad_(False)
        inputs = sum(1 for m in layers.values() if m.feedforward)
        return MergeResult(
            model,
            folded=True,
            note=f"{len(layers)} (IA)^3 scales folded into their layers' weights ({inputs} on the input side)",
        )


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
