"""Hooks run the way pluggy documents: tryfirst / trylast order, new-style wrappers
(wrapper=True) and old-style ones (hookwrapper=True), all through make_host, and a
plugin that raises is still named."""

from __future__ import annotations

import pytest

from adapt import hookimpl
from adapt.errors import PluginError
from adapt.host import make_host


def started(log: list, name: str, **opts):
    class Plugin:
        @hookimpl(**opts)
        def adapt_run_started(self, run_dir, config):
            log.append(name)
            return name

    Plugin.__name__ = name
    return Plugin()


def test_tryfirst_and_trylast_order_the_calls():
    log: list = []
    host = make_host([started(log, "last", trylast=True), started(log, "plain"), started(log, "first", tryfirst=True)], autoload=False)
    host.call("adapt_run_started", run_dir=".", config={})
    assert log == ["first", "plain", "last"]


def test_new_style_wrappers_run_around_the_others_and_see_their_results():
    log: list = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def adapt_run_started(self, run_dir, config):
            log.append("before")
            results = yield
            log.append(f"after {sorted(results)}")
            return results + ["from wrapper"]

    host = make_host([started(log, "a"), Wrapper(), started(log, "b")], autoload=False)
    assert sorted(host.call("adapt_run_started", run_dir=".", config={})) == ["a", "b", "from wrapper"]
    assert log[0] == "before" and log[-1] == "after ['a', 'b']" and sorted(log[1:3]) == ["a", "b"]


def test_old_style_hookwrappers_run_and_get_the_outcome():
    seen: list = []

    class OldWrapper:
        @hookimpl(hookwrapper=True)
        def adapt_run_started(self, run_dir, config):
            outcome = yield
            seen.append(outcome.get_result())

    host = make_host([started([], "a"), OldWrapper()], autoload=False)
    host.call("adapt_run_started", run_dir=".", config={})
    assert seen == [["a"]]


def test_a_wrapper_sees_registrations_and_raising_plugins_are_named():
    wrapped: list = []

    class Counter:
        @hookimpl(wrapper=True)
        def adapt_register_methods(self, register):
            result = yield
            wrapped.append("methods")
            return result

    class Broken:
        @hookimpl(wrapper=True)
        def adapt_register_tasks(self, register):
            yield
            raise RuntimeError("wrapper broke")

    host = make_host([Counter()], autoload=False)
    assert "freeze" in host.methods and host.methods.owner("freeze") == "freeze" and wrapped == ["methods"]
    with pytest.raises(PluginError, match=r"plugin 'Broken' raised in adapt_register_tasks: RuntimeError: wrapper broke"):
        make_host([Broken()], autoload=False).registries()
