"""Target families: named groups of modules a method can adapt.

A backbone names the families its models have (``families``, for ``adapt plugins
--verbose``) and resolves them on a built model (``BuiltModel.families``: family
-> full module names). A method names the families it adapts by default
(``default_families``); ``method.options.targets`` may name a family too.
:func:`transformer_families` finds them in any transformer (encoder or decoder)
from the names and shapes of its linear layers, so no layout (``encoder.layer``,
``q_lin``, ``c_attn``, ...) is assumed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from torch import nn

#: The families adapt's built-in backbones declare, and what each holds.
FAMILIES = {
    "attention": "every projection of self-attention: query, key, value and output",
    "attention-qv": "the query and value projections",
    "attention-kv": "the key and value projections",
    "attention-output": "attention's output projection, one per block",
    "mlp": "the feed-forward projections, in and out",
    "mlp-output": "the feed-forward output projection, one per block",
    "all-linear": "every linear layer inside the blocks",
    "pointwise-conv": "the 1x1 (pointwise) convolutions of the blocks",
    "depthwise-conv": "the depthwise convolutions of the blocks",
}
TRANSFORMER_FAMILIES = (
    "attention",
    "attention-qv",
    "attention-kv",
    "attention-output",
    "mlp",
    "mlp-output",
    "all-linear",
)
#: Last name parts of query and value projections across architectures (BERT, DistilBERT,
#: DeBERTa, Llama-style), and of fused query-key-value projections (GPT-2 ``c_attn``).
QUERY_VALUE = {
    "query",
    "value",
    "q",
    "v",
    "q_lin",
    "v_lin",
    "q_proj",
    "v_proj",
    "query_proj",
    "value_proj",
    "c_attn",
    "qkv",
    "query_key_value",
    "Wqkv",
}


#: Last name parts of key and value projections, and of the fused projections (which hold them too).
KEY_VALUE = {"key", "value", "k", "v", "k_lin", "v_lin", "k_proj", "v_proj", "key_proj", "value_proj"} | (
    QUERY_VALUE - {"query", "q", "q_lin", "q_proj", "query_proj"}
)


#: Parts of a module path inside a block that mark self-attention (BERT ``attention``,
#: GPT-2 ``attn``, Llama ``self_attn``); a block with none falls back to the shape rule.
ATTENTION_MARKS = ("attn", "attention")


def linear_features(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` of a linear layer, None for anything else: an ``nn.Linear``, or a layer
    holding the same map with its weight stored (in, out), known by its shape alone: just a
    2-D ``weight`` and a ``bias`` of its second size (GPT-2's projections)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    own = dict(module.named_parameters(recurse=False))
    weight, bias = own.get("weight"), own.get("bias")
    if (
        set(own) == {"weight", "bias"}
        and weight is not None
        and bias is not None
        and weight.dim() == 2
        and bias.dim() == 1
        and bias.numel() == weight.shape[1]
    ):
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def _is_attention(path: str) -> bool:
    return any(mark in part.lower() for part in path.split(".") for mark in ATTENTION_MARKS)


def transformer_families(model: nn.Module, blocks: Sequence[str]) -> dict[str, list[str]]:
    """The families of a transformer's blocks (encoders and decoders alike). Inside a block,
    a linear layer under a module named like attention (``attention``, ``attn``,
    ``self_attn``) is attention, and the last of them its output projection; where no
    module is so named, the square layers (hidden -> hidden) are. The other layers are
    the MLP, and the last one back to the hidden size is its output projection."""
    found: dict[str, list[str]] = {name: [] for name in TRANSFORMER_FAMILIES}
    for block in blocks:
        linears = [
            (f"{block}.{n}", n, shape)
            for n, m in model.get_submodule(block).named_modules()
            if (shape := linear_features(m)) is not None
        ]
        if not linears:
            continue
        hidden = linears[-1][2][1]
        named = [full for full, inner, _ in linears if _is_attention(inner)]
        attention = named or [full for full, _, (i, o) in linears if i == hidden and o == hidden]
        mlp = [(full, shape) for full, _, shape in linears if full not in attention]
        found["all-linear"] += [full for full, _, _ in linears]
        found["attention"] += attention
        found["attention-qv"] += [n for n in attention if n.rsplit(".", 1)[-1] in QUERY_VALUE]
        found["attention-kv"] += [n for n in attention if n.rsplit(".", 1)[-1] in KEY_VALUE]
        found["attention-output"] += attention[-1:]
        found["mlp"] += [n for n, _ in mlp]
        found["mlp-output"] += [n for n, (_, o) in mlp if o == hidden][-1:]
    return {name: names for name, names in found.items() if names}


def find_blocks(model: nn.Module) -> list[str]:
    """The repeated blocks of a network: the longest ``ModuleList`` whose entries are all
    of one class and hold linear layers (BERT's ``encoder.layer``, DistilBERT's
    ``transformer.layer``, ALBERT's shared ``albert_layers``, GPT-2's ``h``, Llama's
    ``layers``), input side first."""
    from torch import nn

    best: tuple[int, int, str] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or not any(linear_features(m) for m in module[0].modules()):
            continue
        score = (len(module), name.count("."), name)
        if best is None or score[:2] > best[:2]:
            best = score
    return [f"{best[2]}.{i}" for i in range(best[0])] if best else []


def default_target_names(families: Mapping[str, Sequence[str]], wanted: Sequence[str]) -> list[str]:
    """The modules of the ``wanted`` families a model has (in that order, without repeats)."""
    return list(dict.fromkeys(name for family in wanted for name in families.get(family, ())))
