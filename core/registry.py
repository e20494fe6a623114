"""Name -> object registries, one per kind of plugin object.

A name is owned by exactly one plugin: registering it twice is never a silent
overwrite. The clash is recorded (``adapt plugins`` lists it) and using that name
is an error that names both plugins with their packages and versions. Asking for
a name nobody registered is an error that lists what is available.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any, Callable, Generic, Iterator, TypeVar

from adapt.errors import PluginError
from adapt.interfaces import CONTRACTS, declare, undeclared_members

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind (``backbone``, ``method``, ...) by name, with their owning plugin."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._objects: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        #: Plugins that failed to load; mentioned when a name is not found.
        self.broken_plugins: dict[str, str] = {}
        #: Names registered by more than one plugin -> those plugins (registration order).
        self.clashes: dict[str, list[str]] = {}
        #: How to name a plugin in messages (the host's: with its package and version).
        self.describe: Callable[[str], str] = lambda plugin: f"plugin {plugin!r}"
        #: How to report a problem that does not stop anything (the host's: printed and kept).
        self.warn: Callable[[str], None] = lambda message: warnings.warn(message, stacklevel=2)

    def add(self, obj: T, plugin: str) -> None:
        """Register ``obj`` under its ``name``, as its kind's contract (adapt.interfaces.declare):
        every member it lacks takes the contract's default. An attribute that looks like a
        misspelt member is a warning, since adapt would never read it."""
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {plugin!r} registered a {self.kind} without a string `name` attribute: {obj!r}",
                hint=f"give the {self.kind} object a `name` class attribute",
            )
        if name in self._objects:
            self.clashes.setdefault(name, [self._owners[name]]).append(plugin)
            return
        self._objects[name] = self._declared(obj, name, plugin)
        self._owners[name] = plugin

    def _declared(self, obj: Any, name: str, plugin: str) -> Any:
        contract = CONTRACTS.get(self.kind)
        if contract is None:
            return obj
        for attribute, member in undeclared_members(obj, contract):
            self.warn(
                f"{self.kind} {name!r} ({self.describe(plugin)}) has `{attribute}`, which is not a member of the "
                f"{contract.__name__} contract, so adapt never reads it: did you mean `{member}`? (docs/plugins.md, "
                "Interfaces)"
            )
        return declare(obj, contract)

    def clash_error(self, name: str) -> PluginError:
        owners = " and by ".join(
            self.describe(p) for p in sorted(self.clashes[name])
        )  # pluggy's call order is not the user's business
        return PluginError(
            f"{self.kind} {name!r} is registered twice: by {owners}",
            hint="uninstall one of the two packages, or rename one of the two objects",
        )

    def get(self, name: str) -> T:
        if name in self.clashes:
            raise self.clash_error(name)
        try:
            return self._objects[name]
        except KeyError:
            raise PluginError(self._unknown_message(name), hint=self._unknown_hint(name)) from None

    def first(self, name: str) -> T:
        """The object first registered under ``name``, clash or not (for listings)."""
        return self._objects[name]

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._objects)

    def __contains__(self, name: object) -> bool:
        return name in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._objects)

    def _unknown_message(self, name: str) -> str:
        available = ", ".join(self.names()) or "none"
        message = f"unknown {self.kind} {name!r}; available: {available}"
        close = difflib.get_close_matches(name, self.names(), n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        return message

    def _unknown_hint(self, name: str) -> str:
        if self.broken_plugins:
            broken = "; ".join(f"{p}: {e}" for p, e in sorted(self.broken_plugins.items()))
            return f"some plugins failed to load and may have provided it ({broken})"
        return f"install the plugin package that provides {self.kind} {name!r}, or pick one listed by `adapt plugins`"
