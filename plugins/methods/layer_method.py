"""What a method that wraps chosen layers and folds them back shares (``ia3``, ``loha``,
``lokr``, ``vera``, ``oft``): target matching, freezing, saving in PEFT's layout, the fold.
A subclass says how to wrap one layer and PEFT's config fields; its layers give
``folded()``; everything else is here."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from adapt.errors import CheckpointError, ConfigError
from adapt.interfaces import BuiltModel, MergeResult, Method
from adapt.plugins.methods.lora import PEFT_TASK_TYPES, inner_prefix, load_peft_state, peft_state, target_spec

if TYPE_CHECKING:
    import torch
    from torch import nn


class LayerMethod(Method):
    """A method made of ``weight_layers.MatrixLayer`` wrappers."""

    #: PEFT's ``peft_type`` for this method's adapter_config.json.
    peft_type: str = ""
    #: What the merge's note calls the folded layers ("LoHa", ...).
    label: str = ""
    default_families: tuple[str, ...] | None = ("attention-qv", "pointwise-conv", "depthwise-conv")

    def wrap(self, module: nn.Module, options: Any, name: str, shared: Any) -> nn.Module:
        """The method's layer around the target ``name`` (``shared``: what :meth:`prepare` gave)."""
        raise NotImplementedError

    def prepare(self, built: BuiltModel, options: Any, names: Sequence[str]) -> Any:
        """What every target's wrapping shares, made once before (VeRA's projections)."""
        return None

    def layer_types(self) -> tuple[type, ...]:
        """The layer classes this method wraps its targets in (its own, so that a model
        another method adapted is not taken for one this method adapted)."""
        raise NotImplementedError

    def peft_fields(self, layers: Mapping[str, Any]) -> dict[str, Any]:
        """This method's own fields of PEFT's adapter_config.json (``layers`` by PEFT's names)."""
        return {"init_weights": True}

    def merge_note(self, layers: Mapping[str, Any]) -> str:
        return f"{len(layers)} {self.label} layers folded into their weights"

    def apply(self, built: BuiltModel, options: Any, default_targets: Sequence[str]) -> list[str]:
        from adapt.params import freeze_all_but
        from adapt.plugins.methods.weight_layers import MATRIX_KINDS
        from adapt.targets import find_targets, replace_module

        model = built.model
        spec = target_spec(self, bool(self.layers(model)), options.targets, default_targets, built)
        names = find_targets(model, spec, MATRIX_KINDS, exclude=built.head, families=built.families)
        shared = self.prepare(built, options, names)
        for name in names:
            replace_module(model, name, self.wrap(model.get_submodule(name), options, name, shared))
        trained = [
            f"{n}.{p}" for n in names for p, _ in model.get_submodule(n).named_parameters() if "base_layer" not in p
        ]
        return freeze_all_but(model, [*trained, *built.head, *built.new_parameters])

    def layers(self, model: nn.Module) -> dict[str, Any]:
        kinds = self.layer_types()
        return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}

    # -- saving, in PEFT's layout ---------------------------------------------

    def adapter_state(self, built: BuiltModel) -> dict[str, torch.Tensor]:
        """Trained tensors under PEFT's key names: PEFT's shapes are adapt's."""
        return peft_state(built)

    def adapter_config(self, built: BuiltModel) -> dict[str, Any]:
        """PEFT's adapter_config.json for this model's layers."""
        layers = self.layers(built.model)
        if not layers:
            raise ConfigError(f"no {self.label} layers in this model", hint=f"apply the {self.name} method first")
        prefix = inner_prefix(built.model)
        trained = sorted(
            {
                n.rpartition(".")[0].removeprefix(prefix)
                for n, p in built.model.named_parameters()
                if p.requires_grad and not any(n.startswith(f"{layer}.") for layer in layers)
            }
        )
        transformers_model = hasattr(getattr(built.model, "model", built.model), "config")
        return {
            "peft_type": self.peft_type,
            "task_type": PEFT_TASK_TYPES.get(built.task) if transformers_model else None,
            "base_model_name_or_path": built.checkpoint if transformers_model else None,
            "target_modules": sorted(n.removeprefix(prefix) for n in layers),
            "modules_to_save": trained or None,
            "inference_mode": True,
            **self.peft_fields({n.removeprefix(prefix): m for n, m in layers.items()}),
        }

    def load_adapter_state(self, built: BuiltModel, state: Mapping[str, torch.Tensor]) -> None:
        """Load tensors saved by :meth:`adapter_state` or by PEFT (PEFT or adapt key names)."""
        load_peft_state(built, state)

    # -- merging --------------------------------------------------------------

    def merge(self, built: BuiltModel) -> MergeResult:
        from adapt.targets import replace_module

        model = copy.deepcopy(built.model).float().eval()
        layers = self.layers(model)
        for name, layer in layers.items():
            replace_module(model, name, layer.folded())
        model.requires_grad_(False)
        return MergeResult(model, folded=True, note=self.merge_note(layers))


def check_peft_type(config: Mapping[str, Any], peft_type: str, method: str) -> None:
    if config.get("peft_type") != peft_type:
        raise CheckpointError(
            f"adapter is of PEFT type {config.get('peft_type')!r}, not {peft_type}",
            hint=f"method {method} loads PEFT {peft_type} adapters",
        )


def peft_targets(config: Mapping[str, Any]) -> str | list[str] | None:
    """PEFT's target_modules as adapt's ``targets`` (a string is PEFT's regex inside the wrapper)."""
    targets = config.get("target_modules")
    if isinstance(targets, str):
        return r"(?:model\.)?(?:" + targets + ")"
    return list(targets) if targets is not None else None


def refuse_peft_options(config: Mapping[str, Any], unsupported: Mapping[str, Any], method: str) -> None:
    """A CheckpointError for a PEFT option adapt does not implement (set away from its default)."""
    for key, default in unsupported.items():
        if config.get(key, default) not in (default, None):
            raise CheckpointError(
                f"adapter sets {key}={config[key]!r}, which adapt's {method} does not implement",
                hint=f"train the adapter with {key}={default!r}",
            )
