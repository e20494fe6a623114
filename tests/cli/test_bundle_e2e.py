"""`adapt bundle` end to end: tiny BERT runs of two task kinds and MobileNetV2 runs with LoRA on
its depthwise convolutions, bundled into one graph with one ONNX Runtime adapter per run, proven
per task, switched by `adapt predict --task` and the standalone predict.py, and run in headless
Chromium with two adapters in one page."""

from __future__ import annotations

import json
import os
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
from adapt.host import make_host

from tests.cli.test_run_e2e import ner_file, text_csv
from tests.tiny import bert_checkpoint


def invoke(args, code=0):
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), args)
    assert result.exit_code == code, result.output
    return result


def make_run(folder: Path, name: str, task: str, backbone: dict, method: dict, data: dict, train: dict) -> Path:
    config = {
        "name": name,
        "task": task,
        "backbone": backbone,
        "method": method,
        "data": data,
        "train": train,
        "export": {"quantize": "none", "mobile": False, "latency_runs": 2},
        "output_dir": str(folder / "runs"),
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    invoke(["run", str(path)])
    return folder / "runs" / name


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """A topic classifier (LoRA on query/value) and a tagger (rank 2 on query/key/value) on one tiny BERT."""
    folder = tmp_path_factory.mktemp("bundle")
    bert = str(bert_checkpoint(folder / "bert"))
    backbone = {"name": "bert", "checkpoint": bert, "options": {"max_length": 16}}
    train = {"epochs": 3, "batch_size": 16, "lr": 2e-2}
    topic = make_run(folder, "topic", "text-classification", backbone, {"name": "lora", "options": {"r": 4, "alpha": 8}}, {"source": "csv", "path": str(text_csv(folder))}, train)
    ner = make_run(folder, "ner", "token-classification", backbone, {"name": "lora", "options": {"r": 2, "alpha": 4, "targets": ["query", "key", "value"]}}, {"source": "conll", "path": str(ner_file(folder))}, train)
    bundle = folder / "bundle"
    invoke(["bundle", str(topic), str(ner), "--out", str(bundle)])
    return folder, topic, ner, bundle


def test_bundle_reproduces_each_run_on_its_test_split(text_runs):
    _, topic, ner, bundle = text_runs
    report = json.loads((bundle / "report.json").read_text())
    for run in (topic, ner):
        entry, own = report["tasks"][run.name], json.loads((run / "report.json").read_text())
        assert entry["parity"]["verified"] and entry["parity"]["label_agreement"] == 1.0
        assert entry["parity"]["max_abs_diff"] <= own["parity"]["onnx"]["bound"]
        assert entry["metrics"]["bundle"] == entry["metrics"]["merged"]
        assert entry["metrics"]["merged"] == {k: v for k, v in own["metrics"]["merged"].items() if k != "loss"}
    sizes = report["sizes"]
    assert sizes["bundle_total"] == sizes["model"] + sum(sizes["adapters"].values()) < sizes["merged_total"]
    int8 = report["int8"]
    assert set(int8["tasks"]) == {"topic", "ner"} and int8["float_nodes"] == 2 * 6 + 2 * 2  # the branches' MatMuls, each head's MatMul and bias Add
    assert report["deployable"] == ("model.int8.onnx" if int8["passed"] else "model.onnx")
    assert all(t["val"]["drop"] == round(t["val"]["fp32"] - t["val"]["int8"], 6) for t in int8["tasks"].values())
    quantised = onnx.load(str(bundle / "model.int8.onnx")).graph
    assert sum(n.op_type == "MatMulInteger" for n in quantised.node) > 0
    assert {i.name for i in quantised.input} == {i.name for i in onnx.load(str(bundle / "model.onnx")).graph.input}
    pairs = {"topic", "ner"} | ({"topic:int8", "ner:int8"} if int8["passed"] else set())
    assert set(report["latency_ms"]["bundle_over_merged"]) == pairs
    assert "| topic | text-classification |" in (bundle / "report.md").read_text()


def test_one_encoder_serves_both_task_kinds(text_runs):
    """The two kinds' graphs are merged: the encoder's MatMuls appear once, beside two heads."""
    _, topic, ner, bundle = text_runs
    graph = onnx.load(str(bundle / "model.onnx")).graph
    matmuls = sum(n.op_type == "MatMul" for n in graph.node)
    single = sum(n.op_type == "MatMul" for n in onnx.load(str(topic / "export" / "model.onnx")).graph.node)
    # the encoder's own MatMuls once (a second copy would add 16), plus two per adapted layer
    # (query, key, value of 2 layers) and one per head (the single export's heads are Gemm)
    assert matmuls == single + 2 * 6 + 2
    assert [o.name for o in graph.output] == ["text-classification:logits", "token-classification:logits"]
    inputs = {i.name for i in graph.input}
    assert {"input_ids", "attention_mask", "token_type_ids", "token-classification:model.classifier.weight_t"} <= inputs


def test_the_adapters_low_rank_factors_carry_the_task(text_runs):
    """With only its head (the LoRA factors left at the graph's zeros) the tagger's outputs move
    well past the parity bound: the per-task check compared trained factors, not zeros."""
    from adapt.bundle_graph import write_adapter

    _, _, _, bundle = text_runs
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([[2, 9, 12, 14, 3]], dtype=np.int64), "attention_mask": np.ones((1, 5), np.int64), "token_type_ids": np.zeros((1, 5), np.int64)}

    def run(path):
        adapter = ort.LoraAdapter()
        adapter.Load(str(path))
        options = ort.RunOptions()
        options.add_active_adapter(adapter)
        return session.run(["token-classification:logits"], feed, options)[0]

    tensors = ort.AdapterFormat.read_adapter(str(bundle / "adapters" / "ner.onnx_adapter")).get_parameters()
    factors = [n for n in tensors if n.endswith(("bundle_down", "bundle_up"))]
    assert len(factors) == 2 * 3 * 2  # query, key and value of both layers
    write_adapter(bundle.parent / "head-only.onnx_adapter", {n: v.numpy() for n, v in tensors.items() if n not in factors})
    assert np.abs(run(bundle / "adapters" / "ner.onnx_adapter") - run(bundle.parent / "head-only.onnx_adapter")).max() > 1e-2


def test_predict_with_a_task_of_the_bundle(text_runs, tmp_path):
    folder, topic, ner, bundle = text_runs
    texts = ["team won the match", "market shares fell"]
    rows = [json.loads(line) for line in invoke(["predict", str(bundle), "--task", "topic", *texts]).output.splitlines()]
    own = [json.loads(line) for line in invoke(["predict", str(topic), *texts]).output.splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in own]
    # predict runs the bundle's recommended graph: int8 where every task kept its accuracy
    exact = json.loads((bundle / "bundle.json").read_text())["model"] == "model.onnx"
    assert max(abs(a["score"] - b["score"]) for a, b in zip(rows, own)) < (1e-4 if exact else 0.05)
    tags = json.loads(invoke(["predict", str(bundle), "--task", "ner", "obama visited paris"]).output)
    assert tags["tags"] == json.loads(invoke(["predict", str(ner), "obama visited paris"]).output)["tags"]
    # the bundle's own predict.py, with torch, transformers and adapt unimportable
    (tmp_path / "sitecustomize.py").write_text("import sys\nfor name in ('torch', 'transformers', 'adapt', 'timm'):\n    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    alone = subprocess.run([sys.executable, str(bundle / "predict.py"), str(bundle), "--task", "topic", *texts], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert [json.loads(line)["label"] for line in alone.stdout.splitlines()] == [r["label"] for r in own]
    missing = subprocess.run([sys.executable, str(bundle / "predict.py"), str(bundle), *texts], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "choose one with --task NAME" in missing.stderr and "ner, topic" in missing.stderr
    result = invoke(["predict", str(bundle), "--task", "sentiment", "x"], code=2)
    assert "has no task 'sentiment'; its tasks: ner, topic" in result.output
    assert "is a run directory" in invoke(["predict", str(topic), "--task", "topic", "x"], code=2).output


@pytest.mark.slow
def test_the_bundle_runs_in_headless_chromium_with_two_adapters(text_runs):
    _, _, _, bundle = text_runs
    found = json.loads(invoke(["web-check", str(bundle)]).output)
    result = found["result"]
    assert found["passed"] and result["runtime"] == "onnxruntime-web 1.31.1"
    assert set(result["tasks"]) == {"topic", "ner"} and all(t["examples"] > 0 for t in result["tasks"].values())
    assert result["max_abs_diff"] <= 1e-4 and result["label_agreement"] == 1
    assert json.loads((bundle / "report.json").read_text())["web_check"]["passed"]


def test_runs_that_do_not_fit_one_base_are_refused(text_runs, tmp_path):
    folder, topic, _, _ = text_runs
    other = str(bert_checkpoint(tmp_path / "other", seed=1))
    stranger = make_run(tmp_path, "stranger", "text-classification", {"name": "bert", "checkpoint": other, "options": {"max_length": 16}}, {"name": "lora", "options": {"r": 2}}, {"source": "csv", "path": str(text_csv(tmp_path))}, {"epochs": 1, "batch_size": 16})
    result = invoke(["bundle", str(topic), str(stranger), "--out", str(tmp_path / "b")], code=2)
    assert "is not on the base of" in result.output and not (tmp_path / "b").exists()
    dora = make_run(tmp_path, "dora", "text-classification", {"name": "bert", "checkpoint": str(folder / "bert"), "options": {"max_length": 16}}, {"name": "dora", "options": {"r": 2}}, {"source": "csv", "path": str(text_csv(tmp_path))}, {"epochs": 1, "batch_size": 16})
    result = invoke(["bundle", str(topic), str(dora), "--out", str(tmp_path / "b")], code=2)
    assert "DoRA update rescales each output channel" in result.output
    adapters = make_run(tmp_path, "adapters", "text-classification", {"name": "bert", "checkpoint": str(folder / "bert"), "options": {"max_length": 16}}, {"name": "adapters", "options": {"reduction": 4}}, {"source": "csv", "path": str(text_csv(tmp_path))}, {"epochs": 1, "batch_size": 16})
    result = invoke(["bundle", str(adapters), "--out", str(tmp_path / "b")], code=2)
    assert "method 'adapters' does not give low-rank updates" in result.output


def test_the_bundle_folder_is_adapt_s_own(text_runs, tmp_path):
    _, topic, ner, _ = text_runs
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = invoke(["bundle", str(topic), "--out", str(foreign)], code=2)
    assert "not a bundle made by adapt" in result.output and (foreign / "notes.txt").read_text() == "keep me"
    assert "lies inside the run" in invoke(["bundle", str(topic), "--out", str(topic / "b")], code=2).output
    out = tmp_path / "b"
    invoke(["bundle", str(topic), "--out", str(out)])
    assert json.loads((out / "bundle.json").read_text())["tasks"].keys() == {"topic"}
    invoke(["bundle", str(topic), str(ner), "--out", str(out)])  # a bundle adapt wrote is replaced
    assert json.loads((out / "bundle.json").read_text())["tasks"].keys() == {"topic", "ner"}


@pytest.mark.slow
def test_mobilenet_runs_with_lora_on_depthwise_convs_bundle_and_run_in_the_browser(tmp_path):
    """Two MobileNetV2 runs (LoRA on every pointwise and depthwise conv; one started by PiSSA)
    in one bundle whose depthwise branches are depthwise convolutions with the update's kernel;
    proven per task, and in Chromium (the page's Pillow resampling included)."""
    backbone = {"name": "mobilenet", "arch": "mobilenetv2_050", "options": {"image_size": 32}}
    train = {"epochs": 1, "batch_size": 64, "lr": 1e-2}
    a = make_run(tmp_path, "plain", "image-classification", backbone, {"name": "lora", "options": {"r": 4, "alpha": 8}}, {"source": "digits"}, train)
    b = make_run(tmp_path, "pissa", "image-classification", backbone, {"name": "lora", "options": {"r": 2, "alpha": 2, "init": "pissa"}}, {"source": "digits"}, {**train, "lr": 5e-3})
    bundle = tmp_path / "bundle"
    invoke(["bundle", str(a), str(b), "--out", str(bundle)])
    report = json.loads((bundle / "report.json").read_text())
    assert all(t["parity"]["verified"] and t["parity"]["label_agreement"] == 1.0 for t in report["tasks"].values())
    graph = onnx.load(str(bundle / "model.onnx")).graph
    # a depthwise conv's update goes in whole (cheaper than its rank-r factors), a pointwise one's as factors
    depthwise = [n for n in graph.node if n.op_type == "Conv" and n.input[1].endswith("conv_dw.bundle_delta")]
    assert len(depthwise) == 17 and all(next(a.i for a in n.attribute if a.name == "group") > 1 for n in depthwise)
    assert any(n.op_type == "Conv" and n.input[1].endswith("conv_pw.bundle_down") for n in graph.node)
    pages = json.loads((bundle / "web" / "manifest.json").read_text())["tasks"]
    files = [{e["input"] for e in pages[name]["examples"]} for name in ("plain", "pissa")]
    assert all(files) and files[0].isdisjoint(files[1])  # each task's recorded images are its own files
    found = json.loads(invoke(["web-check", str(bundle)]).output)
    assert found["passed"] and set(found["result"]["tasks"]) == {"plain", "pissa"}


def test_a_bundle_that_fails_its_check_is_kept_beside_and_never_over_a_user_s_folder(text_runs, tmp_path):
    """A run whose parity tolerance no float graph can meet: the bundle fails, names the run, and is
    kept in DIR.rejected; where DIR.rejected is someone else's folder it is left alone."""
    import shutil

    _, topic, _, _ = text_runs
    strict = tmp_path / "topic"
    shutil.copytree(topic, strict)
    config = yaml.safe_load((strict / "config.yaml").read_text())
    config["export"]["parity_tolerance"] = 1e-30
    (strict / "config.yaml").write_text(yaml.safe_dump(config))
    result = invoke(["bundle", str(strict), "--out", str(tmp_path / "b")], code=2)
    assert "does not reproduce" in result.output and f"kept in {tmp_path / 'b.rejected'}" in result.output
    assert not (tmp_path / "b").exists() and (tmp_path / "b.rejected" / "bundle.json").is_file()
    foreign = tmp_path / "c.rejected"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    result = invoke(["bundle", str(strict), "--out", str(tmp_path / "c")], code=2)
    assert "is not adapt's, so the failed bundle was not kept" in result.output
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"] and not (tmp_path / "c").exists()
