"""The plugin host: a pluggy manager plus one registry per kind of plugin object.

There is no module-level host. :func:`make_host` builds a fresh one each time,
so tests and repeated in-process runs never share state. Plugins arrive through
the ``adapt`` entry-point group (the built-ins too) or, in tests, as objects
passed to :func:`make_host`.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Iterable

import pluggy

from adapt import hookspecs
from adapt.errors import AdaptError, PluginError
from adapt.registry import Registry

#: The distribution that ships the built-in plugins.
DISTRIBUTION = "adapt-edge"
#: Set to 1 to load only the built-in plugins (third-party entry points are ignored).
AUTOLOAD_ENV = "ADAPT_DISABLE_PLUGIN_AUTOLOAD"

#: registration hook -> the host attribute holding its registry.
REGISTRATION_HOOKS = {
    "adapt_register_backbones": "backbones",
    "adapt_register_methods": "methods",
    "adapt_register_exporters": "exporters",
    "adapt_register_data_sources": "data_sources",
    "adapt_register_tasks": "tasks",
}


@dataclass
class PluginInfo:
    """Where a plugin came from, for ``adapt plugins`` and error messages."""

    name: str
    module: str
    package: str
    version: str
    source: str  # "entry point" or "inline"
    error: str | None = None
    path: str = ""  # the file the plugin's code was loaded from


def autoload_enabled() -> bool:
    """False when the user set ADAPT_DISABLE_PLUGIN_AUTOLOAD to a true value."""
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


def _canonical(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


class Host:
    """Holds the plugins and what they registered. Build one with :func:`make_host`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry[Any]] | None = None

    # -- adding plugins -------------------------------------------------

    def register(self, plugin: object, name: str | None = None, *, package: str = "", version: str = "", source: str = "inline") -> None:
        """Add a plugin (a module or any object with ``@hookimpl`` functions)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.plugins:
            first = self.plugins[name]
            raise PluginError(
                f"two plugins are named {name!r}: one from {first.package or first.module!r} and one from {package or _module_of(plugin)!r}",
                hint="uninstall one of the two packages, or rename the entry point of one",
            )
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            raise PluginError(
                f"plugin {name!r} does not fit the hook specification: {exc}",
                hint="check the hook names and argument names against docs/plugins.md",
            ) from None
        self.plugins[name] = PluginInfo(name, _module_of(plugin), package, version, source, path=_file_of(plugin))
        self._registries = None  # collect again on next use

    def load_entry_points(self, *, builtins: bool = True, third_party: bool = True) -> None:
        """Import and register the plugins of the ``adapt`` entry-point group.

        ``builtins`` selects this distribution's entry points, ``third_party``
        every other distribution's. A plugin that fails to
        import is recorded by name and skipped, so one broken package does not
        take the tool down; ``adapt plugins`` and unknown-name errors mention it.
        """
        seen: set[tuple[str, str]] = set()
        for ep in sorted(metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            dist = ep.dist
            package = dist.name if dist else "?"
            version = dist.version if dist else "?"
            if (ep.name, ep.value) in seen:
                continue  # the same distribution visible twice on sys.path
            seen.add((ep.name, ep.value))
            if not (builtins if _canonical(package) == DISTRIBUTION else third_party):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
                error = f"{type(exc).__name__}: {exc}"
                self.plugins[ep.name] = PluginInfo(ep.name, ep.value, package, version, "entry point", error)
                continue
            self.register(plugin, ep.name, package=package, version=version, source="entry point")

    @property
    def broken(self) -> dict[str, str]:
        """Plugins that failed to import: name -> error."""
        return {n: p.error for n, p in self.plugins.items() if p.error}

    # -- registries -----------------------------------------------------

    @property
    def backbones(self) -> Registry[Any]:
        return self._registry("backbones")

    @property
    def methods(self) -> Registry[Any]:
        return self._registry("methods")

    @property
    def exporters(self) -> Registry[Any]:
        return self._registry("exporters")

    @property
    def data_sources(self) -> Registry[Any]:
        return self._registry("data_sources")

    @property
    def tasks(self) -> Registry[Any]:
        return self._registry("tasks")

    def registries(self) -> dict[str, Registry[Any]]:
        """All registries by attribute name (``backbones``, ``methods``, ...)."""
        if self._registries is None:
            self._registries = self._collect()
        return self._registries

    def _registry(self, attr: str) -> Registry[Any]:
        return self.registries()[attr]

    def _collect(self) -> dict[str, Registry[Any]]:
        registries: dict[str, Registry[Any]] = {}
        for hook_name, attr in REGISTRATION_HOOKS.items():
            registry: Registry[Any] = Registry(attr[:-1].replace("_", " "))
            registry.broken_plugins = self.broken
            for plugin_name, impl in self._impls(hook_name):
                self._call_impl(hook_name, plugin_name, impl, {"register": lambda obj, p=plugin_name, r=registry: r.add(obj, p)})
            registries[attr] = registry
        return registries

    # -- calling hooks --------------------------------------------------

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook on every plugin, oldest registration first; a plugin that
        raises is named in the error."""
        return [self._call_impl(hook_name, name, impl, kwargs) for name, impl in self._impls(hook_name)]

    def _impls(self, hook_name: str) -> Iterable[tuple[str, pluggy.HookImpl]]:
        # pluggy keeps implementations last-registered-first; we call in registration order.
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            yield impl.plugin_name, impl

    def _call_impl(self, hook_name: str, plugin_name: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        # pluggy passes an implementation only the arguments it names; so do we.
        args = {name: kwargs[name] for name in impl.argnames}
        try:
            return impl.function(**args)
        except AdaptError:
            raise
        except Exception as exc:
            info = self.plugins.get(plugin_name)
            where = f" (package {info.package} {info.version})" if info and info.package else ""
            raise PluginError(
                f"plugin {plugin_name!r}{where} raised in {hook_name}: {type(exc).__name__}: {exc}",
                hint=f"this is a bug in that plugin; report it to its authors, or set {AUTOLOAD_ENV}=1 to run without third-party plugins",
            ) from exc


def _module_of(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__module__


def _file_of(plugin: object) -> str:
    """The source file of a plugin module or object, to show where it was loaded from."""
    module = plugin if isinstance(plugin, types.ModuleType) else sys.modules.get(type(plugin).__module__)
    return str(getattr(module, "__file__", "") or "")


def make_host(plugins: Iterable[object] = (), *, autoload: bool | None = None, builtins: bool = True) -> Host:
    """Build a fresh host.

    ``builtins``: load this distribution's own entry points (the built-in plugins).
    ``autoload``: load other distributions' entry points; defaults to on unless
    ``ADAPT_DISABLE_PLUGIN_AUTOLOAD`` is set.
    ``plugins``: extra plugin objects to register inline (tests, scripts).
    """
    host = Host()
    host.load_entry_points(builtins=builtins, third_party=autoload_enabled() if autoload is None else autoload)
    for plugin in plugins:
        host.register(plugin)
    return host
