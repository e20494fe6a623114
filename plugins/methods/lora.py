"""``lora``: low-rank adaptation of ``nn.Linear``, transformers' ``Conv1D`` (GPT-2)
and ``nn.Conv2d`` layers, grouped and depthwise convolutions included, with an
exact merge (see ``lora_layers`` for the maths).

Adapters are saved in PEFT's layout and key names (``adapter_config.json`` +
``adapter_model.safetensors``), so they move between adapt and PEFT.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapt import hookimpl
from adapt.errors import CheckpointError, ConfigError
from adapt.interfaces import BuiltModel, LowRank, MergeResult, Method

if TYPE_CHECKING:
    import torch

#: PEFT wraps the model in ``base_model.model``; adapt's wrappers keep it in ``model``.
PEFT_PREFIX = "base_model.model."
#: adapt's task -> PEFT's task_type, for transformers models.
PEFT_TASK_TYPES = {"text-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS"}
WRAPPER_PREFIX = "model."
#: The attribute a model with a quantised base carries (what ``quantised_base.quantise`` reported).
QUANTISED_BASE = "adapt_quantised_base"


class LoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, le=4096, description="rank of the update (per group for grouped convolutions)")
    alpha: float = Field(16.0, gt=0, description="scale: the update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch's input during training")
    targets: str | list[str] | None = Field(
        None,
        description="a target family of the backbone (attention-qv, attention, mlp, all-linear, pointwise-conv, ...), "
        "a regular expression over full module names, or a list of names / name suffixes; default: the "
        "families in default_families",
    )
    rslora: bool = Field(False, description="rank-stabilised scaling: alpha / sqrt(r)")
    dora: bool = Field(
        False,
        description="DoRA: a learnt magnitude per output channel times the normalised W + BA (PEFT's use_dora); "
        "the method `dora` is LoRA with this on",
    )
    init: Literal["kaiming", "gaussian", "pissa", "olora"] = Field(
        "kaiming",
        description="how A and B start: kaiming (A He-uniform, B zero; PEFT's default), gaussian (A normal, std 1/r), "
        "pissa (the weight's principal singular directions; the residual stays frozen), olora (its QR "
        "factors likewise); saved for PEFT as the equal rank-2r LoRA on the original weights",
    )
    lr_ratio: float = Field(
        1.0,
        gt=0,
        le=1024,
        description="LoRA+: B learns at train.lr times this (the paper suggests 16), A at train.lr",
    )
    base: Literal["full", "4bit", "8bit"] = Field(
        "full",
        description="QLoRA: the frozen Linear layers inside the blocks held in 4-bit NF4 or 8-bit by bitsandbytes "
        "while training (CUDA, or the CPU with bitsandbytes >= 0.46); the merge folds into their dequantised weights",
    )

    @model_validator(mode="after")
    def _principal_init_needs_plain_lora(self) -> LoRAOptions:
        if self.init in PRINCIPAL_INITS and (self.dora or self.base != "full"):
            clash = "dora" if self.dora else f"base: {self.base}"
            raise ValueError(
                f"init {self.init} moves part of the full-precision weight into A and B; it does not combine with "
                f"{clash} (use init kaiming or gaussian there)"
            )
        return self


#: Initialisations that start B A on the weight's leading directions (the residual left frozen).
PRINCIPAL_INITS = ("pissa", "olora")


def inner_prefix(model: torch.nn.Module) -> str:
    """``model.`` when the network sits alone inside one of adapt's wrappers (``LogitsOnly``,
    ...), else nothing (a model with more than that child, such as a detector's ``model``
    and ``head``, or with parameters of its own, such as an embedding model's identity
    centres, keeps its own names)."""
    from torch import nn

    alone = (
        isinstance(getattr(model, "model", None), nn.Module)
        and len(list(model.children())) == 1
        and not list(model.parameters(recurse=False))
    )
    return WRAPPER_PREFIX if alone else ""


def to_peft_name(name: str, prefix: str) -> str:
    return PEFT_PREFIX + name.removeprefix(prefix)


def from_peft_name(name: str, prefix: str) -> str:
    return prefix + name.removeprefix(PEFT_PREFIX).replace(".default.", ".")


class LoRA(Method):
    name = "lora"
    options_schema = LoRAOptions
    default_families = ("attention-qv", "pointwise-conv", "depthwise-conv")

    def apply(self, built: BuiltModel, options: LoRAOptions, default_targets: Sequence[str]) -> list[str]:

        from adapt.plugins.methods import lora_layers as layers
        from adapt.params import freeze_all_but
        from adapt.targets import find_targets, replace_module

        model = built.model
        spec = target_spec(self, bool(self._lora_modules(model)), options.targets, default_targets, built)
        names = find_targets(model, spec, tuple(layers.LORA_LAYERS), exclude=built.head, families=built.families)
        if options.init in PRINCIPAL_INITS:
            refuse_tied_targets(model, names, options.init)
        for name in names:
            module = model.get_submodule(name)
            wrapped = layers.wrap(
                module, options.r, options.alpha, options.dropout, options.rslora, options.dora, options.init
            )
            wrapped.lr_ratio = options.lr_ratio
            replace_module(model, name, wrapped)
        if options.base != "full":
            from adapt.plugins.methods.quantised_base import quantise

            # kept on the model (a copy goes with it into the merge) for the merge's note
            setattr(model, QUANTISED_BASE, quantise(model, options.base, built.blocks, built.head))
        factors = ("lora_A", "lora_B", "lora_magnitude_vector") if options.dora else ("lora_A", "lora_B")
        lora = [f"{n}.{p}" for n in names for p in factors]
        return freeze_all_but(model, [*lora, *built.head, *built.new_parameters])

    @staticmethod
    def _lora_modules(model: torch.nn.Module) -> dict[str, Any]:
        from adapt.plugins.methods import lora_layers as layers

        kinds = tuple(layers.LORA_LAYERS.values())
        return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}

    # -- saving, in PEFT's layout ---------------------------------------------

    def adapter_state(self, built: BuiltModel) -> dict[str, torch.Tensor]:
        """Trained tensors under PEFT's key names, LoRA factors in PEFT's shapes."""
        from adapt.plugins.methods import lora_layers as layers

        def factor(name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
            module_name, _, leaf = name.rpartition(".")
            if leaf not in ("lora_A", "lora_B"):
                return None
            module = built.model.get_submodule(module_name)
            if getattr(module, "init", None) in PRINCIPAL_INITS:
                tensor = against_original_weight(module, leaf)
            if isinstance(module, layers.LoRAConv2d):
                rank = tensor.shape[-2] if leaf == "lora_A" else tensor.shape[-1]
                tensor = tensor.reshape(peft_conv_shape(module, leaf, rank=rank))
            return f"{name}.weight", tensor

        return peft_state(built, factor)

    def learning_rates(self, built: BuiltModel) -> dict[str, float]:
        """LoRA+: every B at ``lr_ratio`` times train.lr."""
        return {f"{n}.lora_B": m.lr_ratio for n, m in self._lora_modules(built.model).items() if m.lr_ratio != 1}

    def low_rank_updates(self, built: BuiltModel) -> dict[str, LowRank] | None:
        """Every LoRA layer's ``s B A`` against the checkpoint's weight (pissa / olora: the
        rank-2r form of :func:`against_original_weight`), in :class:`LowRank`'s layout."""
        from adapt.plugins.methods import lora_layers as layers

        modules = self._lora_modules(built.model)
        if any(getattr(m, "dora", False) for m in modules.values()):
            raise ConfigError(
                "a DoRA update rescales each output channel by its norm, which is not a low-rank product that can "
                "be switched at run time",
                hint="bundle runs trained with method lora (any init); DoRA runs deploy as their merged export",
            )
        quantised = getattr(built.model, QUANTISED_BASE, None)
        if quantised is not None:
            raise ConfigError(
                f"the run trained on a {quantised['base']} quantised base, not on the checkpoint's weights",
                hint="bundle runs trained with method.options.base full",
            )
        updates = {}
        for name, module in modules.items():
            principal = getattr(module, "init", None) in PRINCIPAL_INITS
            a, b = (
                against_original_weight(module, leaf) if principal else getattr(module, leaf).detach()
                for leaf in ("lora_A", "lora_B")
            )
            if isinstance(module, layers.LoRAConv2d):
                rank = a.shape[-2]
                a = a.reshape(peft_conv_shape(module, "lora_A", rank=rank))
                b = b.reshape(peft_conv_shape(module, "lora_B", rank=rank))
            updates[name] = LowRank(a.float().clone(), b.float().clone(), float(module.scaling))
        return updates

    def adapter_config(self, built: BuiltModel) -> dict[str, Any]:
        """PEFT's adapter_config.json for this model's LoRA layers."""
        from adapt.plugins.methods import lora_layers as layers

        modules = self._lora_modules(built.model)
        if not modules:
            raise ConfigError("no LoRA layers in this model", hint="apply the lora method first")
        first = next(iter(modules.values()))
        prefix = inner_prefix(built.model)
        # pissa / olora are saved as the rank-2r LoRA on the original weights (PEFT's conversion)
        stacked = 2 if getattr(first, "init", None) in PRINCIPAL_INITS else 1
        rank_pattern, alpha_pattern = {}, {}
        for name, module in modules.items():
            groups = module.base_layer.groups if isinstance(module, layers.LoRAConv2d) else 1
            if groups > 1:  # PEFT counts the rank over all groups and scales by alpha / that rank
                key = name.removeprefix(prefix)
                rank_pattern[key] = module.r * groups * stacked
                alpha_pattern[key] = alpha_for_rank(module.alpha, groups * stacked, module.rslora)
        trained_modules = sorted(
            {
                n.rpartition(".")[0].removeprefix(prefix)
                for n, p in built.model.named_parameters()
                if p.requires_grad and not n.endswith(("lora_A", "lora_B", "lora_magnitude_vector"))
            }
        )
        transformers_model = hasattr(getattr(built.model, "model", built.model), "config")
        return {
            "peft_type": "LORA",
            # PEFT's AutoPeftModelFor* read these to rebuild the base model
            "task_type": PEFT_TASK_TYPES.get(built.task) if transformers_model else None,
            "base_model_name_or_path": built.checkpoint if transformers_model else None,
            "r": first.r * stacked,
            "lora_alpha": alpha_for_rank(first.alpha, stacked, first.rslora),
            "lora_dropout": first.dropout,
            "use_rslora": first.rslora,
            "target_modules": sorted(n.removeprefix(prefix) for n in modules),
            "modules_to_save": trained_modules or None,
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "bias": "none",
            "fan_in_fan_out": any(isinstance(m, layers.LoRAConv1D) for m in modules.values()),
            "init_lora_weights": True,
            "inference_mode": True,
            "use_dora": bool(getattr(first, "dora", False)),
        }

    def load_adapter_state(self, built: BuiltModel, state: Mapping[str, torch.Tensor]) -> None:
        """Load tensors saved by :meth:`adapter_state` or by PEFT (PEFT or adapt key names)."""
        modules = self._lora_modules(built.model)
        if any(getattr(m, "init", None) in PRINCIPAL_INITS for m in modules.values()):
            state = split_principal(built, modules, state)
        load_peft_state(built, state, factors=("lora_A", "lora_B"))

    # -- merging --------------------------------------------------------------

    def merge(self, built: BuiltModel) -> MergeResult:
        from adapt.plugins.methods import lora_layers as layers
        from adapt.targets import replace_module

        model = copy.deepcopy(built.model)
        note = ""
        quantised = getattr(model, QUANTISED_BASE, None)
        if quantised is not None:
            from adapt.plugins.methods.quantised_base import dequantise

            dequantise(model)
            delattr(model, QUANTISED_BASE)
            note = (
                f"; the {quantised['base']} base ({quantised['layers']} layers) dequantised to fp32 first, the "
                f"weights the adapter was trained on (their rounding against the original weights: relative error "
                f"max {quantised['rounding']['max']:.4f}, mean {quantised['rounding']['mean']:.4f})"
            )
        model = model.float().eval()
        modules = self._lora_modules(model)
        for name, module in modules.items():
            replace_module(model, name, layers.fold(module))
        model.requires_grad_(False)
        kind = "DoRA" if any(getattr(m, "dora", False) for m in modules.values()) else "LoRA"
        return MergeResult(
            model,
            folded=True,
            note=f"{len(modules)} {kind} layers folded into their weights{note}",
            tolerance=quantised_tolerance(quantised),
        )


def peft_state(
    built: BuiltModel, relayout: Callable[[str, torch.Tensor], tuple[str, torch.Tensor] | None] | None = None
) -> dict[str, torch.Tensor]:
    """Every trained tensor and trained buffer under PEFT's key names; ``relayout(name, tensor)``
    gives a tensor PEFT names or shapes otherwise (LoRA's factors), or None to keep it as it is."""
    from adapt.params import trained_buffers

    prefix = inner_prefix(built.model)
    state = {}
    for name, param in built.model.named_parameters():
        if not param.requires_grad:
            continue
        changed = relayout(name, param.detach()) if relayout is not None else None
        key, tensor = changed if changed is not None else (name, param.detach())
        state[to_peft_name(key, prefix)] = tensor.clone().contiguous()
    for name, buffer in trained_buffers(built.model).items():
        state[to_peft_name(name, prefix)] = buffer.detach().clone().contiguous()
    return state


def target_spec(
    method: Method, applied: bool, targets: str | list[str] | None, default_targets: Sequence[str], built: BuiltModel
) -> str | list[str]:
    """What a method that wraps layers adapts: its ``targets`` option, else the default
    targets; a ConfigError for a model it is applied to already, or for no targets at all."""
    if applied:
        raise ConfigError(
            f"method '{method.name}' is already applied to this model",
            hint="build a fresh model before applying a method again",
        )
    spec = targets if targets is not None else list(default_targets)
    if not spec:
        raise ConfigError(
            f"method.options.targets is not set and this model has none of {method.name}'s default target families "
            f"({', '.join(method.default_families or ())})",
            hint="set method.options.targets to a target family, module names or a regular expression"
            + (f"; this model's families: {', '.join(built.families)}" if built.families else ""),
        )
    return spec


def load_peft_state(built: BuiltModel, state: Mapping[str, torch.Tensor], factors: Sequence[str] = ()) -> None:
    """Copy an adapter's tensors (PEFT's key names or adapt's) into the model's parameters and
    buffers; ``factors``: leaves stored as ``<leaf>.weight`` whose shape PEFT lays out otherwise
    (only their sizes must agree). A tensor without a counterpart, or of another size, is a
    CheckpointError before anything is copied."""
    import torch

    params = {**dict(built.model.named_buffers()), **dict(built.model.named_parameters())}
    prefix = inner_prefix(built.model)
    suffixes = tuple(f".{leaf}.weight" for leaf in factors)
    updates = {}
    for key, tensor in state.items():
        name = from_peft_name(key, prefix) if key.startswith(PEFT_PREFIX) else key
        if suffixes and name.endswith(suffixes):
            name = name.removesuffix(".weight")
        if name not in params:
            raise CheckpointError(
                f"adapter tensor {key!r} has no counterpart in this model",
                hint="were the adapter's targets, backbone or task different? match method.options.targets to the "
                "adapter",
            )
        target = params[name]
        reshaped = bool(factors) and name.endswith(tuple(factors))
        if target.numel() != tensor.numel() or (not reshaped and tuple(target.shape) != tuple(tensor.shape)):
            raise CheckpointError(
                f"adapter tensor {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}",
                hint="was the adapter saved with other targets, another rank (lora's method.options.r) or label count?",
            )
        updates[name] = tensor.reshape(target.shape)
    with torch.no_grad():
        for name, tensor in updates.items():
            params[name].copy_(tensor)


def quantised_tolerance(quantised: Mapping[str, Any] | None) -> float | None:
    """The merge's promise: exact (None) but for an 8-bit base, whose products round activations."""
    if quantised is None or quantised["base"] != "8bit":
        return None
    from adapt.plugins.methods.quantised_base import INT8_TOLERANCE

    return INT8_TOLERANCE


def peft_conv_shape(module: Any, leaf: str, rank: int | None = None) -> tuple[int, ...]:
    """PEFT's conv LoRA shapes: A a conv (g*r, in/g, kh, kw); B a 1x1 conv (out, r, 1, 1)."""
    base, rank = module.base_layer, rank or module.r
    if leaf == "lora_A":
        return (base.groups * rank, base.in_channels // base.groups, *base.kernel_size)
    return (base.out_channels, rank, 1, 1)


def alpha_for_rank(alpha: float, factor: int, rslora: bool) -> float:
    """The alpha that keeps ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``) when r grows ``factor`` times."""
    return alpha * (math.sqrt(factor) if rslora else factor)


def against_original_weight(module: Any, leaf: str) -> torch.Tensor:
    """A pissa / olora layer's factor of ``s (B A - B0 A0)``, the update against the original
    weight, as a rank-2r LoRA: A stacked over A0, B beside -B0 (PEFT's conversion)."""
    import torch

    if leaf == "lora_A":
        return torch.cat([module.lora_A.detach(), module.lora_A0], dim=-2)
    return torch.cat([module.lora_B.detach(), -module.lora_B0], dim=-1)


def refuse_tied_targets(model: torch.nn.Module, names: Sequence[str], init: str) -> None:
    """A principal initialisation changes the frozen weight: not one another layer shares."""
    counts: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        counts[id(param)] = counts.get(id(param), 0) + 1
    tied = [n for n in names if counts.get(id(model.get_submodule(n).weight), 0) > 1]
    if tied:
        raise ConfigError(
            f"init {init} would change weights that other layers share: {', '.join(tied)}",
            hint="leave tied layers (an output layer tied to the embeddings) out of method.options.targets",
        )


def split_principal(
    built: BuiltModel, modules: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A pissa / olora adapter (rank-2r factors, :func:`against_original_weight`) as the
    layers' own A and B. Where the file's start (A0, B0) is not this model's (another
    machine's SVD), the frozen residual is moved to the file's, so W_res + s B0 A0 is kept."""
    import torch

    prefix, state = inner_prefix(built.model), dict(state)
    for name, module in modules.items():
        keys = [to_peft_name(f"{name}.{leaf}.weight", prefix) for leaf in ("lora_A", "lora_B")]
        if not all(key in state for key in keys):
            continue  # load_peft_state names what is missing or extra
        a, b = state[keys[0]], state[keys[1]]
        if a.numel() != 2 * module.lora_A.numel() or b.numel() != 2 * module.lora_B.numel():
            raise CheckpointError(
                f"adapter tensor {keys[0]!r} is not this {module.init} model's rank-2r form",
                hint=f"load it with method.options.init kaiming and r = 2 x {module.r}, as PEFT does",
            )
        a = a.reshape(*module.lora_A.shape[:-2], 2 * module.r, module.lora_A.shape[-1])
        b = b.reshape(*module.lora_B.shape[:-1], 2 * module.r)
        a0, b0 = a[..., module.r :, :], -b[..., module.r :]
        with torch.no_grad():
            if not (torch.equal(a0, module.lora_A0) and torch.equal(b0, module.lora_B0)):
                module.base_weight.add_(module.initial_delta().to(module.base_weight.dtype))
                module.lora_A0.copy_(a0), module.lora_B0.copy_(b0)
                module.base_weight.sub_(module.initial_delta().to(module.base_weight.dtype))
        state[keys[0]], state[keys[1]] = a[..., : module.r, :].contiguous(), b[..., : module.r].contiguous()
    return state


def options_from_peft(config: Mapping[str, Any]) -> LoRAOptions:
    """LoRA options equal to a PEFT ``adapter_config.json`` (plain LoRA only)."""
    if config.get("peft_type") != "LORA":
        raise CheckpointError(
            f"adapter is of PEFT type {config.get('peft_type')!r}, not LORA", hint="adapt loads PEFT LoRA adapters"
        )
    if config.get("fan_in_fan_out"):
        raise CheckpointError("adapter uses fan_in_fan_out, which adapt reads from the model, not the adapter")
    targets = config.get("target_modules")
    if isinstance(targets, str):  # PEFT matches it against names inside the wrapped model
        targets = r"(?:model\.)?(?:" + targets + ")"
    return LoRAOptions(
        r=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout", 0.0),
        targets=targets,
        rslora=config.get("use_rslora", False),
        dora=bool(config.get("use_dora", False)),
    )


class DoRAOptions(LoRAOptions):
    dora: bool = Field(True, description="DoRA's magnitude (off: plain LoRA)")


class DoRA(LoRA):
    """``dora``: weight-decomposed LoRA (Liu et al. 2024): ``W' = m * (W + s B A) / ||W + s B A||``,
    the norm per output channel and ``m`` learnt, starting at ``||W||`` (the maths in
    ``lora_layers``). Folds exactly on every layer LoRA adapts, depthwise convolutions
    included; saved as PEFT's LoRA with ``use_dora`` (its ``lora_magnitude_vector``)."""

    name = "dora"
    options_schema = DoRAOptions


@hookimpl
def adapt_register_methods(register: Any) -> None:
    register(LoRA())
    register(DoRA())
