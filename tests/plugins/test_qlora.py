"""QLoRA (``method.options.base: 4bit | 8bit``): the blocks' Linear layers held by
bitsandbytes (on the CPU here: bitsandbytes >= 0.46 runs there), the fold into their
dequantised weights exact against the model as trained, and `adapt run` end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.errors import ConfigError
from adapt.host import make_host
from tests.tiny import decoder_checkpoint

bnb = pytest.importorskip("bitsandbytes", reason="the qlora extra (bitsandbytes) is installed by .ci/run")
TEXTS = [f"the team won the match {i % 7}" if i % 2 else f"shares fell in the market {i % 5}" for i in range(40)]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return decoder_checkpoint(tmp_path_factory.mktemp("qlora") / "llama", "llama", causal_lm=True, texts=TEXTS)


def _built(checkpoint: Path):
    from adapt.plugins.transformers.hf_text import TextOptions
    from adapt.plugins.transformers.transformers_backbone import Transformers

    return Transformers().build("text-generation", 0, checkpoint=str(checkpoint), arch=None, options=TextOptions())


@pytest.mark.parametrize("base", ["4bit", "8bit"])
def test_the_blocks_linear_layers_are_quantised_and_the_rest_stays_full_precision(llama, base):
    from adapt.pipeline import count_parameters
    from adapt.plugins.methods.lora import LoRA, LoRAOptions

    built = _built(llama)
    total = count_parameters(built.model)["total"]
    embedding = built.model.model.model.embed_tokens.weight.clone()
    LoRA().apply(built, LoRAOptions(r=4, targets="all-linear", base=base), [])
    kind = bnb.nn.Linear4bit if base == "4bit" else bnb.nn.Linear8bitLt
    quantised = [n for n, m in built.model.named_modules() if isinstance(m, kind)]
    assert len(quantised) == 2 * 7 and all(n.endswith(".base_layer") for n in quantised)  # q k v o gate up down
    assert type(built.model.model.lm_head) is torch.nn.Linear and torch.equal(built.model.model.model.embed_tokens.weight, embedding)
    info = built.model.adapt_quantised_base
    assert info["layers"] == 14 and info["bytes_after"] < info["bytes_before"] / (6 if base == "4bit" else 3)
    assert 0 < info["rounding"]["mean"] <= info["rounding"]["max"] < (0.5 if base == "4bit" else 0.05)
    assert count_parameters(built.model)["total"] == total + sum(p.numel() for n, p in built.model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("base", ["4bit", "8bit"])
def test_the_fold_into_the_dequantised_base_reproduces_the_adapted_model(llama, base):
    """With a trained-looking (non-zero) update: the merged fp32 model equals the adapted
    one, and differs from the original weights plus the update (the base's rounding is real)."""
    from adapt.plugins.methods.lora import LoRA, LoRAOptions

    original = _built(llama).model.eval()
    built = _built(llama)
    method = LoRA()
    method.apply(built, LoRAOptions(r=4, targets="all-linear", base=base), [])
    with torch.no_grad():
        for name, p in built.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    merged = method.merge(built)
    assert not any(type(m).__module__.startswith("bitsandbytes") for m in merged.model.modules())
    assert "dequantised to fp32" in merged.note
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted, folded, plain = built.model.eval()(input_ids=ids), merged.model.eval()(input_ids=ids), original(input_ids=ids)
    if base == "4bit":  # weights dequantised, products in fp32: the fold is exact
        assert merged.tolerance is None and (folded - adapted).abs().max() < 1e-4
    else:  # LLM.int8 also rounds the activations, which the merged model does not: approximate, bounded
        bound = merged.tolerance * max(1.0, float(adapted.abs().max()))
        assert merged.tolerance is not None and 1e-5 < (folded - adapted).abs().max() < bound
    assert (plain - adapted).abs().max() > 1e-3  # the adapted model runs on the rounded base, not the original


def test_adapt_run_with_a_4bit_base_trains_merges_and_exports(tmp_path, llama):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    config = {
        "name": "q", "output_dir": str(tmp_path / "runs"), "task": "text-generation",
        "backbone": {"name": "transformers", "checkpoint": str(llama), "options": {"max_length": 32}},
        "method": {"name": "lora", "options": {"r": 8, "targets": "all-linear", "base": "4bit"}},
        "data": {"source": "jsonl", "path": str(tmp_path / "data.jsonl")},
        "train": {"epochs": 3, "batch_size": 8, "lr": 3e-3}, "export": {"quantize": "none", "mobile": False, "latency_runs": 2},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "q" / "report.json").read_text())
    assert report["merge"] == "folded" and report["parity"]["merged"]["verified"] and "4bit base" in report["merge_note"]
    assert report["parity"]["onnx"]["verified"] and report["parity"]["onnx"]["generation_agreement"] == 1.0
    curve = [json.loads(line) for line in (tmp_path / "runs" / "q" / "metrics.jsonl").read_text().splitlines()]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]  # it learns on the quantised base


def test_without_bitsandbytes_a_quantised_base_is_one_clear_message(llama, monkeypatch):
    from adapt.plugins.methods.lora import LoRA, LoRAOptions

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="needs bitsandbytes") as caught:
        LoRA().apply(_built(llama), LoRAOptions(targets="all-linear", base="4bit"), [])
    assert "adapt-edge[qlora]" in caught.value.hint
