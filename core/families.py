"""Target families: named groups of modules a method can adapt.

A backbone names the families its models have (``families``, for ``adapt plugins
--verbose``) and resolves them on a built model (``BuiltModel.families``: family
-> full module names). A method names the families it adapts by default
(``default_families``); ``method.options.targets`` may name a family too.
:func:`transformer_families` finds them in any transformer encoder from the
shapes of its linear layers, so no layout (``encoder.layer``, ``q_lin``, ...) is
assumed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from torch import nn

#: The families adapt's built-in backbones declare, and what each holds.
FAMILIES = {
    "attention": "every projection of self-attention: query, key, value and output",
    "attention-qv": "the query and value projections",
    "attention-output": "attention's output projection, one per block",
    "mlp": "the feed-forward projections, in and out",
    "mlp-output": "the feed-forward output projection, one per block",
    "all-linear": "every linear layer inside the blocks",
    "pointwise-conv": "the 1x1 (pointwise) convolutions of the blocks",
    "depthwise-conv": "the depthwise convolutions of the blocks",
}
TRANSFORMER_FAMILIES = ("attention", "attention-qv", "attention-output", "mlp", "mlp-output", "all-linear")
#: Last name parts of query and value projections across architectures (BERT, DistilBERT, DeBERTa, Llama-style).
QUERY_VALUE = {"query", "value", "q", "v", "q_lin", "v_lin", "q_proj", "v_proj", "query_proj", "value_proj"}


def transformer_families(model: nn.Module, blocks: Sequence[str]) -> dict[str, list[str]]:
    """The families of a transformer's blocks, from the linear layers' shapes: inside a
    block, a square layer (hidden -> hidden) belongs to attention and the last of them
    is its output projection; the others (to or from the feed-forward width) are the
    MLP, and the last one back to hidden is its output projection."""
    from torch import nn

    found: dict[str, list[str]] = {name: [] for name in TRANSFORMER_FAMILIES}
    for block in blocks:
        linears = [(f"{block}.{n}", m) for n, m in model.get_submodule(block).named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        hidden = linears[-1][1].out_features
        square = [n for n, m in linears if m.in_features == hidden and m.out_features == hidden]
        mlp = [n for n, m in linears if n not in square]
        found["all-linear"] += [n for n, _ in linears]
        found["attention"] += square
        found["attention-qv"] += [n for n in square if n.rsplit(".", 1)[-1] in QUERY_VALUE]
        found["attention-output"] += square[-1:]
        found["mlp"] += mlp
        found["mlp-output"] += [n for n, m in linears if n in mlp and m.out_features == hidden][-1:]
    return {name: names for name, names in found.items() if names}


def find_blocks(model: nn.Module) -> list[str]:
    """The repeated blocks of a network: the longest ``ModuleList`` whose entries are all
    of one class and hold linear layers (BERT's ``encoder.layer``, DistilBERT's
    ``transformer.layer``, ALBERT's shared ``albert_layers``), input side first."""
    from torch import nn

    best: tuple[int, int, str] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or not any(isinstance(m, nn.Linear) for m in module[0].modules()):
            continue
        score = (len(module), name.count("."), name)
        if best is None or score[:2] > best[:2]:
            best = score
    return [f"{best[2]}.{i}" for i in range(best[0])] if best else []


def default_target_names(families: Mapping[str, Sequence[str]], wanted: Sequence[str]) -> list[str]:
    """The modules of the ``wanted`` families a model has (in that order, without repeats)."""
    return list(dict.fromkeys(name for family in wanted for name in families.get(family, ())))
