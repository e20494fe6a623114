"""The plugin host: inline plugins, real entry-point discovery, registry errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from adapt import hookimpl
from adapt.errors import PluginError
from adapt.host import AUTOLOAD_ENV, make_host

BUILTINS = {"freeze", "csv", "digits", "tasks"}


class MethodPlugin:
    """Registers a method named ``name``."""

    def __init__(self, name: str, plugin_name: str | None = None) -> None:
        self.method_name = name
        if plugin_name:
            self.__name__ = plugin_name

    @hookimpl
    def adapt_register_methods(self, register):
        register(type("M", (), {"name": self.method_name})())


class EveryKindPlugin:
    """Registers one object of every kind, as a third-party package might."""

    @hookimpl
    def adapt_register_backbones(self, register):
        register(type("B", (), {"name": "my-backbone", "tasks": ("image-classification",)})())

    @hookimpl
    def adapt_register_methods(self, register):
        register(type("M", (), {"name": "my-method"})())

    @hookimpl
    def adapt_register_exporters(self, register):
        register(type("E", (), {"name": "my-exporter", "suffix": ".bin"})())

    @hookimpl
    def adapt_register_data_sources(self, register):
        register(type("D", (), {"name": "my-source", "tasks": ("image-classification",)})())

    @hookimpl
    def adapt_register_tasks(self, register):
        register(type("T", (), {"name": "my-task"})())


def test_inline_plugin_objects_are_usable_by_name():
    host = make_host([EveryKindPlugin()], autoload=False)
    assert host.backbones.get("my-backbone").tasks == ("image-classification",)
    assert host.methods.get("my-method").name == "my-method"
    assert host.exporters.get("my-exporter").suffix == ".bin"
    assert host.data_sources.get("my-source").name == "my-source"
    assert host.tasks.get("my-task").name == "my-task"
    assert host.methods.owner("my-method") == "EveryKindPlugin"


def test_builtins_load_through_entry_points_and_can_be_left_out():
    host = make_host(autoload=False)
    assert BUILTINS <= set(host.plugins)
    assert all(host.plugins[n].source == "entry point" and host.plugins[n].package == "adapt-edge" for n in BUILTINS)
    assert "freeze" in host.methods and "digits" in host.data_sources
    bare = make_host(autoload=False, builtins=False)
    assert bare.plugins == {} and len(bare.methods) == 0


def test_each_host_is_fresh():
    first = make_host([EveryKindPlugin()], autoload=False)
    second = make_host(autoload=False)
    assert "my-method" in first.methods
    assert "my-method" not in second.methods


def test_duplicate_name_names_both_plugins():
    host = make_host([MethodPlugin("twin", "first-pkg"), MethodPlugin("twin", "second-pkg")], autoload=False, builtins=False)
    with pytest.raises(PluginError) as info:
        host.methods.get("twin")
    assert "'twin'" in info.value.message and "first-pkg" in info.value.message and "second-pkg" in info.value.message


def test_duplicate_of_a_builtin_names_the_builtin_and_its_package():
    host = make_host([MethodPlugin("freeze", "impostor")], autoload=False)
    with pytest.raises(PluginError, match=r"method 'freeze' is registered twice: by plugin 'freeze' \(package adapt-edge [^)]+\) and by plugin 'impostor'"):
        host.methods.get("freeze")
    assert host.methods.get("lora").name == "lora"  # the clash spoils only its own name


def test_a_clash_is_listed_by_adapt_plugins_instead_of_breaking_it():
    from click.testing import CliRunner

    from adapt.cli import make_cli

    result = CliRunner().invoke(make_cli(lambda: make_host([MethodPlugin("freeze", "impostor")], autoload=False)), ["plugins"])
    assert result.exit_code == 0, result.output
    assert "clash" in result.output and "impostor" in result.output and "lora" in result.output


def test_unknown_name_lists_what_is_available_and_suggests():
    host = make_host(autoload=False)
    with pytest.raises(PluginError) as info:
        host.methods.get("freez")
    assert "unknown method 'freez'; available: adapters, dora, freeze, ia3, loha, lokr, lora, oft, vera" in info.value.message
    assert "did you mean 'freeze'" in info.value.message


def test_plugin_with_a_misspelt_hook_is_rejected_by_name():
    class Misspelt:
        @hookimpl
        def adapt_register_method(self, register):  # missing the final s
            pass

    with pytest.raises(PluginError, match="plugin 'Misspelt' does not fit the hook specification"):
        make_host([Misspelt()], autoload=False, builtins=False)


def test_plugin_whose_hook_raises_is_named():
    class Broken:
        @hookimpl
        def adapt_register_methods(self, register):
            raise RuntimeError("boom")

    host = make_host([Broken()], autoload=False, builtins=False)
    with pytest.raises(PluginError, match=r"plugin 'Broken' raised in adapt_register_methods: RuntimeError: boom"):
        host.registries()  # collecting them calls the registration hooks


def test_lifecycle_hooks_receive_only_the_arguments_they_name(tmp_path):
    """A plugin written against fewer arguments keeps working when hooks gain new ones."""
    seen = []

    class Tracker:
        @hookimpl
        def adapt_run_started(self, run_dir):
            seen.append(("started", run_dir))

        @hookimpl
        def adapt_epoch_ended(self, epoch, metrics):
            seen.append(("epoch", epoch, metrics["accuracy"]))

        @hookimpl
        def adapt_artifact_exported(self, path, kind):
            seen.append(("exported", path.name, kind))

    host = make_host([Tracker()], autoload=False, builtins=False)
    host.call("adapt_run_started", run_dir=tmp_path, config={"task": "x"})
    host.call("adapt_epoch_ended", run_dir=tmp_path, epoch=1, metrics={"accuracy": 0.5})
    host.call("adapt_artifact_exported", run_dir=tmp_path, path=tmp_path / "model.onnx", kind="onnx")
    assert seen == [("started", tmp_path), ("epoch", 1, 0.5), ("exported", "model.onnx", "onnx")]


# -- real entry-point discovery -------------------------------------------------


def make_distribution(root: Path, dist: str, module: str, body: str) -> None:
    """A throwaway installed distribution: a module plus a *.dist-info with entry points."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[adapt]\n{dist} = {module}\n")


@pytest.fixture
def on_sys_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]


GOOD_PLUGIN = """
    from adapt import hookimpl

    class Scale:
        name = "scale"
        options_schema = None

    @hookimpl
    def adapt_register_methods(register):
        register(Scale())
"""


def test_entry_point_plugin_found_with_autoload_on_and_ignored_with_it_off(on_sys_path, monkeypatch):
    make_distribution(on_sys_path, "adapt-scale", "thirdparty_scale", GOOD_PLUGIN)
    host = make_host(autoload=True)
    assert "scale" in host.methods
    info = host.plugins["adapt-scale"]
    assert (info.package, info.version, info.source) == ("adapt-scale", "1.2.3", "entry point")

    assert "scale" not in make_host(autoload=False).methods
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    host = make_host()
    assert "scale" not in host.methods and "freeze" in host.methods  # built-ins still load


def test_plugin_that_fails_to_import_is_reported_by_name(on_sys_path):
    make_distribution(on_sys_path, "adapt-broken", "thirdparty_broken", "import not_a_module_anywhere\n")
    host = make_host(autoload=True)
    assert "adapt-broken" in host.broken
    assert "ModuleNotFoundError" in host.broken["adapt-broken"]
    assert "freeze" in host.methods  # the rest of the tool keeps working
    with pytest.raises(PluginError) as info:
        host.methods.get("whatever")
    assert "adapt-broken" in info.value.hint


def test_debug_plugins_shows_the_traceback_of_a_plugin_that_failed_to_import(on_sys_path):
    from click.testing import CliRunner

    from adapt.cli import make_cli

    make_distribution(on_sys_path, "adapt-broken", "thirdparty_broken", "import not_a_module_anywhere\n")
    plain = CliRunner().invoke(make_cli(lambda: make_host(autoload=True)), ["plugins"])
    assert plain.exit_code == 0 and "adapt --debug plugins shows their tracebacks" in plain.output and "Traceback" not in plain.output
    debug = CliRunner().invoke(make_cli(lambda: make_host(autoload=True)), ["--debug", "plugins"])
    assert debug.exit_code == 0 and "Traceback (most recent call last)" in debug.output and "thirdparty_broken.py" in debug.output


def test_a_misspelled_hook_name_gets_a_suggestion():
    class Typo:
        @hookimpl
        def adapt_register_method(self, register):
            pass

    with pytest.raises(PluginError, match=r"unknown hook 'adapt_register_method'.*\(did you mean 'adapt_register_methods'\?\)"):
        make_host([Typo()], autoload=False)


def test_run_finished_is_called_once_with_the_report_or_the_error(tmp_path, tiny_config, monkeypatch):
    """adapt_run_finished pairs with adapt_run_started, on success and on failure."""
    import yaml
    from click.testing import CliRunner

    from adapt.cli import make_cli
    from tests.conftest import TinyPlugin

    finished = []

    class Tracker:
        @hookimpl
        def adapt_run_finished(self, run_dir, report, error):
            finished.append((run_dir.name, "metrics" in report, error))

    tiny_config.update(output_dir=str(tmp_path / "runs"), export={"formats": []})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config))
    cli = lambda: make_cli(lambda: make_host([TinyPlugin(), Tracker()], autoload=False))  # noqa: E731
    assert CliRunner().invoke(cli(), ["run", str(tmp_path / "c.yaml")]).exit_code == 0
    assert finished == [("tiny", True, None)]

    class FailingLogger:
        @hookimpl
        def adapt_epoch_ended(self, epoch):
            raise RuntimeError("tracker offline")

    monkeypatch.setenv("ADAPT_STRICT_HOOKS", "1")  # an observer's exception fails the run only when asked to
    failing = make_cli(lambda: make_host([TinyPlugin(), Tracker(), FailingLogger()], autoload=False))
    result = CliRunner().invoke(failing, ["run", str(tmp_path / "c.yaml"), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert len(finished) == 2 and finished[1][0] == "tiny" and "tracker offline" in finished[1][2]
