"""Choosing the modules a method adapts.

A target spec is a string, either a target family of the model
(``attention-qv``, ``mlp``, ...: see adapt.families) or a regular expression
matched against the full module name; or a list whose entries match a module
name exactly or as a dotted suffix (``query`` matches ``...attention.self.query``).
When nothing matches, the error lists what could have been targeted.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from adapt.errors import ConfigError


def matches(name: str, spec: str | Sequence[str]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def find_targets(
    model: nn.Module,
    spec: str | Sequence[str],
    kinds: tuple[type[nn.Module], ...],
    *,
    exclude: Sequence[str] = (),
    key: str = "method.options.targets",
    families: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Names of the modules of ``kinds`` that ``spec`` selects, outside ``exclude`` (module-name
    prefixes). Pass ``families=built.families`` so that a family name selects its modules."""
    families = families or {}
    if isinstance(spec, str) and spec in families:
        spec = list(families[spec])
    elif isinstance(spec, str):
        try:
            re.compile(spec)
        except re.error as exc:
            raise ConfigError(
                f"`{key}` = {spec!r} is not a valid regular expression: {exc}",
                hint="write a Python regular expression, or a list of module names",
            ) from None
    candidates = [
        n
        for n, m in model.named_modules()
        if isinstance(m, kinds) and not any(n == e or n.startswith(e + ".") for e in exclude)
    ]
    chosen = [n for n in candidates if matches(n, spec)]
    if not chosen:
        kinds_text = " / ".join(k.__name__ for k in kinds)
        named = f"; its target families: {', '.join(families)}" if families else ""
        raise ConfigError(
            f"`{key}` = {spec!r} matches no {kinds_text} module of this model; it has {len(candidates)}, named like: "
            f"{describe_names(candidates)}{named}",
            hint="give a target family, names or name suffixes from that list (a list), or a regular expression over "
            "full names (a string)",
        )
    return chosen


def describe_names(names: Sequence[str], limit: int = 12) -> str:
    """Distinct last parts of module names, then a few full names, for error messages."""
    suffixes = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
    shown = ", ".join(suffixes[:limit]) + (", ..." if len(suffixes) > limit else "")
    examples = ", ".join(names[:3])
    return f"{shown} (e.g. {examples})" if names else "(none)"


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def swap_modules(
    built: Any,
    spec: str | Sequence[str],
    kinds: tuple[type[nn.Module], ...],
    wrap: Callable[[nn.Module], nn.Module],
    *,
    trained: Sequence[str],
    key: str = "method.options.targets",
) -> list[str]:
    """What a module-replacing method's ``apply`` does: find the targets (a family, a
    regex or names, see :func:`find_targets`), replace each by ``wrap(module)``, and
    leave trainable only the wrappers' parameters named ``trained`` (``["scale"]``:
    ``<target>.scale``), the head and the new parameters. Returns the trainable names."""
    from adapt.params import freeze_all_but

    names = find_targets(built.model, spec, kinds, exclude=built.head, key=key, families=built.families)
    for name in names:
        replace_module(built.model, name, wrap(built.model.get_submodule(name)))
    return freeze_all_but(
        built.model, [*(f"{n}.{p}" for n in names for p in trained), *built.head, *built.new_parameters]
    )


def fold_modules(model: nn.Module, kind: type[nn.Module], fold: Callable[[Any], nn.Module]) -> int:
    """What a module-replacing method's ``merge`` does on its (deep-copied) model:
    replace every ``kind`` wrapper by ``fold(wrapper)``, a plain layer with the method
    folded into its weights. Returns how many were folded."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, kind)]
    for name, module in found:
        replace_module(model, name, fold(module))
    return len(found)
