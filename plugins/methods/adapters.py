"""``adapters``: bottleneck adapters (Houlsby or Pfeiffer placement).

Transformers (bert, roberta): Pfeiffer puts one adapter after each layer's
feed-forward output projection; Houlsby adds one after the attention output
projection too. CNNs (mobilenet): one adapter after each block's last
convolution (its projection), before the block's residual connection.

With a non-linear activation the adapters stay inline in the merged model (and
in its one ONNX graph); with ``activation: none`` they fold exactly into the
projection they follow (see ``adapter_layers``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal, Sequence, cast

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import ConfigError
from adapt.interfaces import BuiltModel, MergeResult, Method
from adapt.params import SavesTrainedTensors

if TYPE_CHECKING:
    import torch


class AdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reduction: int = Field(16, ge=1, le=4096, description="bottleneck width is channels / reduction")
    activation: Literal["relu", "gelu", "silu", "tanh", "none"] = Field(
        "relu", description="non-linearity; none makes the adapter foldable"
    )
    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer", description="pfeiffer: after the feed-forward block; houlsby: after attention too"
    )
    targets: str | list[str] | None = Field(None, description="modules to put adapters after (overrides placement)")


class Adapters(SavesTrainedTensors, Method):
    name = "adapters"
    options_schema = AdapterOptions
    #: Pfeiffer uses mlp-output; Houlsby attention-output too (see _targets).
    default_families = ("mlp-output", "attention-output")

    def apply(self, built: BuiltModel, options: AdapterOptions, default_targets: Sequence[str]) -> list[str]:
        from adapt.params import freeze_all_but
        from adapt.plugins.methods import adapter_layers as layers
        from adapt.targets import replace_module

        model = built.model
        if self._adapters(model):
            raise ConfigError(
                "method 'adapters' is already applied to this model",
                hint="build a fresh model before applying a method again",
            )
        names = self._targets(built, options, default_targets)
        for name in names:
            base = cast("layers.LinearOrConv", model.get_submodule(name))  # _targets keeps only these kinds
            replace_module(model, name, layers.AdapterAfter(base, options.reduction, options.activation))
        return freeze_all_but(model, [*(f"{n}.adapter" for n in names), *built.head, *built.new_parameters])

    @staticmethod
    def _targets(built: BuiltModel, options: AdapterOptions, default_targets: Sequence[str]) -> list[str]:
        """Placement: the model's ``mlp-output`` family (Pfeiffer) and ``attention-output``
        before it (Houlsby); else the backbone's older per-block positions; else each
        block's last projection."""
        from torch import nn
        from transformers.pytorch_utils import Conv1D

        from adapt.targets import find_targets

        kinds = (nn.Linear, Conv1D, nn.Conv2d)
        if options.targets is not None:
            return find_targets(built.model, options.targets, kinds, exclude=built.head, families=built.families)
        modules = dict(built.model.named_modules())
        if "mlp-output" in built.families:
            wanted = set(built.families["mlp-output"]) | (
                set(built.families.get("attention-output", ())) if options.placement == "houlsby" else set()
            )
            return [name for name in modules if name in wanted]
        names = []
        for block in built.blocks:
            if default_targets:
                positions = list(default_targets) if options.placement == "houlsby" else list(default_targets)[-1:]
                names += [f"{block}.{p}" for p in positions if f"{block}.{p}" in modules]
            else:
                inside = [n for n, m in modules.items() if n.startswith(block + ".") and isinstance(m, kinds)]
                names += inside[-1:]
        if not names:
            raise ConfigError(
                "found nowhere to place adapters in this model (no blocks with a projection layer)",
                hint="set method.options.targets to the layers to put adapters after",
            )
        return names

    @staticmethod
    def _adapters(model: torch.nn.Module) -> dict[str, Any]:
        from adapt.plugins.methods import adapter_layers as layers

        return {n: m for n, m in model.named_modules() if isinstance(m, layers.AdapterAfter)}

    def merge(self, built: BuiltModel) -> MergeResult:
        from adapt.plugins.methods import adapter_layers as layers
        from adapt.targets import replace_module

        model = copy.deepcopy(built.model).float().eval()
        adapters = self._adapters(model)
        inline = [n for n, m in adapters.items() if not m.foldable()]
        for name, module in adapters.items():
            if module.foldable():
                replace_module(model, name, layers.fold(module))
        model.requires_grad_(False)
        if inline:
            reason = adapters[inline[0]].why_inline()
            return MergeResult(
                model,
                folded=False,
                note=f"{len(inline)} adapters kept inline: {reason}, so they cannot be folded into the weights",
            )
        return MergeResult(
            model, folded=True, note=f"{len(adapters)} linear adapters folded into the projections they follow"
        )


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(Adapters())
