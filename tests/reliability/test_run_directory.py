"""adapt owns only what it wrote (docs/reliability.md, "Run directories"): a folder
that is not a run, a symbolic link, user files inside a run, input data inside the
run that --overwrite would replace, a new run that fails to start, and a kill -9
during `adapt export`. Each through the real CLI, on real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.host import make_host
from adapt.rundir import MARKER_FILE
from tests.conftest import TinyPlugin

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str):
    return CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin()], autoload=False)), list(args))


def write_config(tmp_path: Path, config: dict) -> Path:
    config["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def finished(tmp_path, tiny_config) -> tuple[Path, Path]:
    """A finished tiny run: (config path, run directory)."""
    config = write_config(tmp_path, tiny_config)
    result = run_cli("run", str(config))
    assert result.exit_code == 0, result.output
    return config, tmp_path / "runs" / "tiny"


@pytest.mark.parametrize("flags", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_folder_that_is_not_a_run_is_refused_and_kept(tmp_path, tiny_config, flags):
    folder = tmp_path / "runs" / "tiny"
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    result = run_cli("run", str(write_config(tmp_path, tiny_config)), *flags)
    assert result.exit_code == 2, result.output
    assert "is not a run directory made by adapt" in result.output and "Traceback" not in result.output
    assert snapshot(folder) == {"thesis.tex": b"years of work"} and not (folder / ".adapt.lock").exists()


def test_a_symbolic_link_at_the_run_directory_is_never_followed(tmp_path, tiny_config, finished):
    config, run = finished
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    run.rename(tmp_path / "old-run")
    run.symlink_to(elsewhere, target_is_directory=True)
    for flags in ([], ["--overwrite"], ["--resume"]):
        result = run_cli("run", str(config), *flags)
        assert result.exit_code == 2 and "symbolic link" in result.output, result.output
    assert run_cli("export", str(run)).exit_code == 2
    assert snapshot(elsewhere) == {"notes.txt": b"mine"}


def test_overwrite_deletes_only_what_adapt_wrote(tmp_path, finished):
    config, run = finished
    (run / "notes.md").write_text("my notes")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"png")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    shutil.rmtree(run / "export")
    (run / "export").symlink_to(outside, target_is_directory=True)  # a link where adapt's folder was
    old_id = json.loads((run / MARKER_FILE).read_text())["run_id"]
    result = run_cli("run", str(config), "--overwrite")
    assert result.exit_code == 0, result.output
    assert "kept 2 item(s) adapt did not write: notes.md, plots" in result.output
    assert (run / "notes.md").read_text() == "my notes" and (run / "plots" / "a.png").read_bytes() == b"png"
    assert snapshot(outside) == {"keep.txt": b"keep"}  # the link was removed, not followed
    assert json.loads((run / MARKER_FILE).read_text())["run_id"] != old_id


def test_input_data_inside_the_run_directory_is_refused_before_anything_happens(tmp_path, tiny_config, finished):
    config, run = finished
    (run / "data.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    changed = yaml.safe_load(config.read_text())
    changed.update(task="text-classification", backbone={"name": "bert", "checkpoint": "prajjwal1/bert-tiny"}, data={"source": "csv", "path": str(run / "data.csv")})
    config.write_text(yaml.safe_dump(changed))
    before = snapshot(run)
    result = run_cli("run", str(config), "--overwrite")
    assert result.exit_code == 2 and "lies inside" in result.output and "data.path" in result.output, result.output
    assert snapshot(run) == before


@pytest.mark.parametrize("breakage", ["data", "checkpoint"])
def test_a_failed_start_leaves_the_old_run_as_it_was(tmp_path, finished, breakage):
    config, run = finished
    before = snapshot(run)
    changed = yaml.safe_load(config.read_text())
    if breakage == "data":
        changed["data"] = {"source": "csv", "path": str(tmp_path / "missing.csv")}
        changed["task"], changed["backbone"] = "text-classification", {"name": "bert", "checkpoint": str(tmp_path / "no-such-model/")}
    else:
        (tmp_path / "weights.pth").write_bytes(b"not a weights file")
        changed["backbone"] = {"name": "mobilenet", "arch": "mobilenetv3_small_050", "checkpoint": str(tmp_path / "weights.pth")}
    config.write_text(yaml.safe_dump(changed))
    result = run_cli("run", str(config), "--overwrite")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert snapshot(run) == before


def test_writing_commands_refuse_a_folder_adapt_did_not_make(tmp_path, finished):
    _, run = finished
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.yaml", "labels.json", "report.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    for command in ("train", "merge", "export"):
        result = run_cli(command, str(copy))
        assert result.exit_code == 2 and "not a run directory made by adapt" in result.output, (command, result.output)
    assert sorted(p.name for p in copy.iterdir()) == ["config.yaml", "labels.json", "report.json"]


SLOW_EXPORT = """
import sys, time
from importlib.metadata import entry_points
from adapt import hookimpl
from adapt.cli import make_cli
from adapt.exporters.onnx_exporter import OnnxExporter
from adapt.host import make_host
from tests.conftest import TinyPlugin


class SlowOnnx(OnnxExporter):
    def export(self, model, inputs, io, path, options):
        written = super().export(model, inputs, io, path, options)
        open(sys.argv[2], "w").write("now")
        time.sleep(600)  # killed here, with the new export half made


class SlowPlugin:
    @hookimpl
    def adapt_register_exporters(self, register):
        register(SlowOnnx())


def host():
    built = make_host([TinyPlugin(), SlowPlugin()], autoload=False, builtins=False)
    for ep in entry_points(group="adapt"):
        if ep.dist and ep.dist.name == "adapt-edge" and ep.name != "onnx":
            built.register(ep.load(), ep.name)
    return built


make_cli(host)(["export", sys.argv[1]])
"""


def test_kill_9_during_export_leaves_the_previous_export_usable(tmp_path, tiny_config):
    tiny_config["export"] = {"formats": ["onnx"], "quantize": "none", "mobile": False, "latency_runs": 2}
    assert run_cli("run", str(write_config(tmp_path, tiny_config))).exit_code == 0
    run = tmp_path / "runs" / "tiny"
    before = snapshot(run / "export")
    script = tmp_path / "slow_export.py"
    script.write_text(SLOW_EXPORT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the script imports the tests' tiny backbone
    process = subprocess.Popen([sys.executable, str(script), str(run), str(tmp_path / "half-way")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "half-way").exists():
            assert process.poll() is None and time.time() < deadline, process.stdout.read().decode() if process.poll() is not None else "timed out"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    assert snapshot(run / "export") == before  # the previous export, byte for byte
    report = json.loads((run / "report.json").read_text())
    session = ort.InferenceSession(str(run / report["deployable"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "pixel_values"
    assert run_cli("export", str(run)).exit_code == 0  # and the next export cleans up after the killed one
    assert not [p for p in run.iterdir() if p.name.startswith(".export.")]


def test_the_lock_file_is_never_followed_out_of_the_run(tmp_path):
    from adapt.errors import RunDirError
    from adapt.rundir import hold_lock

    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("do not truncate")
    (run / ".adapt.lock").symlink_to(victim)
    with pytest.raises(RunDirError, match="cannot create run directory"):
        with hold_lock(run):
            pass
    assert victim.read_text() == "do not truncate"


def test_stale_temporaries_of_a_killed_process_are_cleared_only_where_adapt_writes(tmp_path):
    from adapt.rundir import RunDir, hold_lock

    run = RunDir.create(tmp_path / "run").path
    (run / ".export.99999.tmp").mkdir()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".last.pt.99999.tmp").write_bytes(b"half")
    (run / ".notes.99999.tmp").write_text("a user's file that only looks like ours")
    with hold_lock(run):
        pass
    assert sorted(p.name for p in run.iterdir()) == [".adapt-run.json", ".adapt.lock", ".notes.99999.tmp", "checkpoints"]
    assert not list((run / "checkpoints").iterdir())


def test_a_new_run_that_fails_to_start_leaves_no_folder_behind(tmp_path, tiny_config):
    tiny_config["data"] = {"source": "csv", "path": str(tmp_path / "missing.csv")}
    tiny_config["task"], tiny_config["backbone"] = "text-classification", {"name": "bert", "checkpoint": "x/"}
    result = run_cli("run", str(write_config(tmp_path, tiny_config)))
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "runs" / "tiny").exists()
