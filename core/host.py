"""The plugin host: a pluggy manager plus one registry per kind of plugin object.

There is no module-level host. :func:`make_host` builds a fresh one each time,
so tests and repeated in-process runs never share state. Plugins arrive through
the ``adapt`` entry-point group (the built-ins too) or, in tests, as objects
passed to :func:`make_host`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.metadata as metadata
import inspect
import os
import sys
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import pluggy

from adapt import hookspecs
from adapt.errors import AdaptError, PluginError
from adapt.registry import Registry

if TYPE_CHECKING:
    from adapt.interfaces import Backbone, DataSource, Exporter, Method, Task

#: The distribution that ships the built-in plugins.
DISTRIBUTION = "adapt-edge"
#: Set to 1 to load only the built-in plugins (third-party entry points are ignored).
AUTOLOAD_ENV = "ADAPT_DISABLE_PLUGIN_AUTOLOAD"

#: Set to 1 to make an exception in a lifecycle hook fail the run (by default: a warning).
STRICT_HOOKS_ENV = "ADAPT_STRICT_HOOKS"
#: Hooks that observe a run (a logger, a tracker): one that raises must not lose the run.
LIFECYCLE_HOOKS = ("adapt_run_started", "adapt_run_finished", "adapt_epoch_ended", "adapt_artifact_exported")

#: The plugin whose hook implementation is running (for error messages and registry owners).
_RUNNING: contextvars.ContextVar[str] = contextvars.ContextVar("adapt_running_plugin", default="")

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
    traceback: str = ""  # of the import that failed, for `adapt --debug plugins`


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
        #: problems that did not stop the run (see :meth:`warn`)
        self.warnings: list[str] = []

    # -- adding plugins -------------------------------------------------

    def register(
        self, plugin: object, name: str | None = None, *, package: str = "", version: str = "", source: str = "inline"
    ) -> None:
        """Add a plugin (a module or any object with ``@hookimpl`` functions)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.plugins:
            first = self.plugins[name]
            raise PluginError(
                f"two plugins are named {name!r}: one from {first.package or first.module!r} and one from "
                f"{package or _module_of(plugin)!r}",
                hint="uninstall one of the two packages, or rename the entry point of one",
            )
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
            self._attribute(plugin, name)
        except pluggy.PluginValidationError as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            raise PluginError(
                f"plugin {name!r} does not fit the hook specification: {exc}{_did_you_mean(str(exc))}",
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
                import traceback

                error = f"{type(exc).__name__}: {exc}"
                self.plugins[ep.name] = PluginInfo(
                    ep.name,
                    ep.value,
                    package,
                    version,
                    "entry point",
                    error,
                    traceback="".join(traceback.format_exception(exc)),
                )
                continue
            self.register(plugin, ep.name, package=package, version=version, source="entry point")

    @property
    def broken(self) -> dict[str, str]:
        """Plugins that failed to import: name -> error."""
        return {n: p.error for n, p in self.plugins.items() if p.error}

    # -- registries -----------------------------------------------------

    @property
    def backbones(self) -> Registry[Backbone]:
        return self._registry("backbones")

    @property
    def methods(self) -> Registry[Method]:
        return self._registry("methods")

    @property
    def exporters(self) -> Registry[Exporter]:
        return self._registry("exporters")

    @property
    def data_sources(self) -> Registry[DataSource]:
        return self._registry("data_sources")

    @property
    def tasks(self) -> Registry[Task]:
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
            registry.describe = self.describe
            registry.warn = self.warn
            self.call(hook_name, register=lambda obj, r=registry: r.add(obj, _RUNNING.get()))
            registries[attr] = registry
        return registries

    # -- calling hooks --------------------------------------------------

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook the way pluggy does (``tryfirst``/``trylast`` order, wrappers and
        old-style hookwrappers around the rest); return the implementations' non-None
        results. A plugin that raises is named in the error."""
        return getattr(self.pm.hook, hook_name)(**kwargs)

    def _attribute(self, plugin: object, plugin_name: str) -> None:
        """Wrap each hook implementation of ``plugin`` so that, while it runs, the host
        knows which plugin is running (``register`` callbacks record it as the owner)
        and an exception it raises becomes a PluginError naming it. pluggy still
        decides the order and drives the wrappers."""
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    # HookImpl.function is typed Final; pluggy reads it on every call, so replacing it
                    # is how a wrapper sees each call (tests/core/test_hook_calling.py checks this holds)
                    impl.function = self._attributed(impl.function, plugin_name, caller.name)  # type: ignore[misc]

    def _attributed(self, function: Callable[..., Any], plugin_name: str, hook_name: str) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(function):  # a wrapper: runs around the inner implementations

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._running(plugin_name, hook_name):
                    return (yield from function(*args, **kwargs))

            return wrapper

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._running(plugin_name, hook_name):
                return function(*args, **kwargs)

        if hook_name not in LIFECYCLE_HOOKS:
            return call

        @functools.wraps(function)
        def observe(*args: Any, **kwargs: Any) -> Any:
            try:
                return call(*args, **kwargs)
            except AdaptError as exc:
                if os.environ.get(STRICT_HOOKS_ENV) == "1":
                    raise
                named = (
                    exc.message
                    if isinstance(exc, PluginError)
                    else f"{self.describe(plugin_name)} raised in {hook_name}: {exc.message}"
                )
                self.warn(f"{named}; the run goes on ({STRICT_HOOKS_ENV}=1 makes this fatal)")
                return None

        return observe

    def warn(self, message: str) -> None:
        """A problem that does not stop the run (an observer that raised): printed now and
        kept in ``warnings``, which the run's report lists (``plugin_warnings``)."""
        import click

        self.warnings.append(message)
        click.echo(f"warning: {message}", err=True)

    @contextlib.contextmanager
    def _running(self, plugin_name: str, hook_name: str) -> Iterator[None]:
        """While a plugin's implementation runs: who is running, and its errors named.
        An AdaptError passes as it is (a user error, or an inner plugin already named)."""
        token = _RUNNING.set(plugin_name)
        try:
            yield
        except AdaptError:
            raise
        except Exception as exc:
            raise self._failure(plugin_name, hook_name, exc) from exc
        finally:
            _RUNNING.reset(token)

    def _failure(self, plugin_name: str, hook_name: str, exc: Exception) -> PluginError:
        return PluginError(
            f"{self.describe(plugin_name)} raised in {hook_name}: {type(exc).__name__}: {exc}",
            hint=f"this is a bug in that plugin; report it to its authors, or set {AUTOLOAD_ENV}=1 to run without "
            "third-party plugins",
        )

    def describe(self, plugin_name: str) -> str:
        """``plugin 'lora' (package adapt-edge 0.1.0)``, for messages that blame a plugin."""
        info = self.plugins.get(plugin_name)
        return f"plugin {plugin_name!r}" + (
            f" (package {info.package} {info.version})" if info and info.package else ""
        )


def _did_you_mean(error: str) -> str:
    """`` (did you mean 'adapt_register_methods'?)`` for an unknown hook name in pluggy's error."""
    import difflib
    import re

    unknown = re.search(r"unknown hook '([^']+)'", error)
    hooks = [n for n in dir(hookspecs) if n.startswith("adapt_")]
    close = difflib.get_close_matches(unknown.group(1), hooks, n=1) if unknown else []
    return f" (did you mean {close[0]!r}?)" if close else ""


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
