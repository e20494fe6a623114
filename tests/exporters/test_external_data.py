"""Models past ONNX's 2 GB limit: the weights in ``model.onnx.data`` beside the graph, through
every stage. A 2.5 GB model would take minutes per test, so the stages are driven on a
tiny decoder with ``export.options.onnx.external_data: always``, the same code path a
model past the limit takes (bench/large_decoder.py runs a 0.63B one end to end)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.errors import ExportError
from adapt.exporters import onnx_files
from adapt.host import make_host
from adapt.report_schema import Report
from tests.tiny import decoder_checkpoint

TEXTS = [f"the team won the match {i % 7}" if i % 2 else f"shares fell in the market {i % 5}" for i in range(40)]


def _matmul_model(rows: int = 64) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((rows, rows)).astype(np.float32), f"w{i}") for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(3)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("h3", TensorProto.FLOAT, [1, rows])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ones((1, 64), np.float32)})[0]


def test_save_writes_one_data_file_and_replaces_an_earlier_one_instead_of_appending(tmp_path):
    path = tmp_path / "model.onnx"
    onnx_files.save(_matmul_model(), path, "always")
    size = onnx_files.total_bytes(path)
    onnx_files.save(_matmul_model(), path, "always")  # again: ONNX alone would append to model.onnx.data
    assert onnx_files.data_files(path) == [tmp_path / "model.onnx.data"]
    assert onnx_files.total_bytes(path) == size and (tmp_path / "model.onnx.data").stat().st_size >= 3 * 64 * 64 * 4
    assert path.stat().st_size < 2000  # the graph alone
    onnx_files.save(_matmul_model(), path)  # auto: a small model is one file, and the old data file is gone
    assert onnx_files.data_files(path) == [] and not (tmp_path / "model.onnx.data").exists()


def test_consolidate_gathers_one_file_per_tensor_into_one_data_file_with_the_same_outputs(tmp_path):
    """torch's exporter writes one file per tensor past 2 GB; the export ships one data file."""
    scattered = tmp_path / "scratch" / "model.onnx"
    scattered.parent.mkdir()
    onnx.save_model(_matmul_model(), str(scattered), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(scattered.parent.iterdir())) == 4
    expected = _run(scattered)
    path = onnx_files.consolidate(scattered, tmp_path / "model.onnx")
    assert onnx_files.data_files(path) == [tmp_path / "model.onnx.data"]
    np.testing.assert_array_equal(_run(path), expected)
    onnx.checker.check_model(str(path), full_check=True)
    offsets = [int(e.value) for t in onnx.load(str(path), load_external_data=False).graph.initializer for e in t.external_data if e.key == "offset"]
    assert len(offsets) == 3 and all(o % 4096 == 0 for o in offsets)  # aligned, so ONNX Runtime can map the weights


def test_a_data_location_outside_the_models_folder_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    onnx_files.save(_matmul_model(), path, "always")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save_model(model, str(path))
    with pytest.raises(ExportError, match="outside its folder"):
        onnx_files.data_files(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A LoRA run of a tiny Llama whose every ONNX file keeps its weights in a data file."""
    root = tmp_path_factory.mktemp("external")
    checkpoint = decoder_checkpoint(root / "llama", "llama", causal_lm=True, texts=TEXTS)
    (root / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    config = {
        "name": "lm", "output_dir": str(root / "runs"), "task": "text-generation",
        "backbone": {"name": "transformers", "checkpoint": str(checkpoint), "options": {"max_length": 32}},
        "method": {"name": "lora", "options": {"r": 4, "targets": "all-linear"}},
        "data": {"source": "jsonl", "path": str(root / "data.jsonl")},
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3},
        "export": {"quantize": "all", "mobile": True, "latency_runs": 2, "options": {"onnx": {"external_data": "always"}}},
    }  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:  # the memory-lean export a model past 1 GiB gets, on a tiny one
        patch.setattr("adapt.export_stage.LEAN_ABOVE_BYTES", 0)
        patch.setattr("adapt.exporters.onnx_exporter.DYNAMIC_INT8_MAX_BYTES", 0)
        result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(root / "config.yaml")])
    assert result.exit_code == 0, result.output
    return root / "runs" / "lm"


def test_every_onnx_form_keeps_its_weights_beside_it_and_passes_its_checks(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    Report.model_validate(report)
    onnx_forms = {f: p for f, p in report["forms"].items() if p.endswith(".onnx")}
    assert {"onnx", "onnx_optimized", "onnx_int8", "onnx_int4"} <= set(onnx_forms)
    for form, relative in onnx_forms.items():
        path = run_dir / relative
        assert onnx_files.data_files(path) == [path.with_name(path.name + ".data")], form
        assert path.stat().st_size < 200_000, form  # the graph, not the weights
        assert report["form_bytes"][form] == onnx_files.total_bytes(path) == report["files"][relative] + report["files"][relative + ".data"]
    onnx.checker.check_model(str(run_dir / "export" / "model.onnx"), full_check=True)  # by path (others have contrib ops)
    for form in ("onnx", "onnx_optimized"):  # exact forms: the same greedy continuations as PyTorch
        assert report["parity"][form]["verified"] is True and report["parity"][form]["generation_agreement"] == 1.0
    assert all(k in report["latency_ms"] for k in ("onnx", "onnx_int8", "onnx_int4"))
    assert all(a.get("error") is None and a["bytes"] > 0 for a in report["export"]["onnx"]["attempts"])
    metadata = ort.InferenceSession(str(run_dir / "export" / "model.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(metadata["adapt.labels"]) == [] or "adapt.task" in metadata  # stamped without touching the weights
    assert not [p for p in (run_dir / "export").rglob("*") if "torch-export" in p.name]  # the scratch folder is gone
    assert (run_dir / report["forms"]["ort_mobile"]).is_file()


def test_the_lean_export_parks_the_model_on_disk_and_times_one_session_at_a_time(run_dir):
    """Past 1 GiB (patched to 0 here) the merged model waits on disk while the quantisers work and
    comes back exact (the exact forms' checks above ran against it after); the forms take turns."""
    report = json.loads((run_dir / "report.json").read_text())
    assert any("its own turns only" in note for note in report["export_notes"])
    assert not list(run_dir.rglob(".offloaded-model.safetensors"))
    assert report["latency_vs_pytorch"].get("onnx") or report["latency_vs_pytorch"].get("note")


def test_a_large_graphs_int8_is_weight_only_made_from_the_file(run_dir):
    """Past 1 GiB (patched to 0 here) ONNX Runtime's dynamic quantiser would hold four copies of the
    graph: int8 is MatMulNBits at 8 bits instead, gated like any attempt."""
    report = json.loads((run_dir / "report.json").read_text())
    attempt = next(a for a in report["export"]["onnx"]["attempts"] if a["file"] == "model.int8.onnx")
    assert attempt["attempt"].startswith("int8 weight-only (MatMulNBits, 8 bits")
    assert report["export"]["onnx"]["int8_activations"]["chosen"] == "weight-only"
    ops = {n.op_type for n in onnx.load(str(run_dir / "export" / "model.int8.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "GatherBlockQuantized" not in ops  # the embedding stays fp32 at 8 bits


def test_dynamic_int8_reads_and_writes_external_data(run_dir, tmp_path):
    """The dynamic quantiser (what a graph under 1 GiB gets) on a graph whose weights are in a data file."""
    from adapt.exporters.onnx_exporter import _dynamic_attempts
    from adapt.interfaces import DeriveContext
    from adapt.exporters.onnx_exporter import OnnxOptions

    base = onnx_files.copy(run_dir / "export" / "model.onnx", tmp_path / "model.onnx")
    ctx = DeriveContext(tmp_path, {"quantization": "dynamic"}, "int8", False, 1.0, [], lambda p: 0.0, lambda p: {}, OnnxOptions(external_data="always"))
    attempts, _ = _dynamic_attempts(base, ctx)
    out = tmp_path / "model.int8.onnx"
    attempts[0][1](out)
    assert onnx_files.data_files(out) == [tmp_path / "model.int8.onnx.data"]
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node}
    ort.InferenceSession(str(out))  # loads with its data file


def test_the_report_gives_each_stages_peak_memory_against_the_weights(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    memory = report["memory"]
    assert set(memory["peak_mib"]) == {"load", "train", "merge", "export"}
    assert all(v > 0 for v in memory["peak_mib"].values()) and memory["run_peak_mib"] == max(memory["peak_mib"].values())
    assert memory["fp32_weights_mib"] == pytest.approx(report["params"]["total"] * 4 / 2**20, abs=0.1)
    assert "peak" in (run_dir / "report.md").read_text() and "MiB" in (run_dir / "report.md").read_text()


def test_predict_py_runs_the_deployable_file_with_its_data_file_in_a_copied_folder(run_dir, tmp_path):
    """What a device gets: the export folder copied elsewhere; the data file travels with the graph."""
    import shutil

    copied = tmp_path / "device"
    shutil.copytree(run_dir / "export", copied)
    report = json.loads((run_dir / "report.json").read_text())
    deployable = copied / Path(report["deployable"]).name
    out = subprocess.run([sys.executable, str(copied / "predict.py"), str(deployable), "the team", "--max-new-tokens", "4"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "generated" in json.loads(out.stdout.splitlines()[0])
