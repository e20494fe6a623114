"""adapt's LoRA against HF PEFT (a test dependency): same weights, same outputs; adapters move both ways."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from adapt.plugins.transformers.hf_text import TextOptions
from adapt.interfaces import BuiltModel
from adapt.plugins.transformers.bert import Bert
from adapt.plugins.methods.lora import LoRA, LoRAOptions, options_from_peft

from tests.tiny import bert_checkpoint


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert", num_labels=3))


def adapt_bert(bert_dir, options):
    built = Bert().build("text-classification", 3, checkpoint=bert_dir, arch=None, options=TextOptions())
    LoRA().apply(built, options, ["query", "value"])
    return built


def peft_bert(bert_dir, options):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3, attn_implementation="eager")
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, target_modules=["query", "value"], modules_to_save=["classifier"], use_rslora=options.rslora, use_dora=options.dora)
    return get_peft_model(model, config)


def randomise_lora(built):
    torch.manual_seed(1)
    with torch.no_grad():
        for param in built.model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.2)


def inputs():
    torch.manual_seed(2)
    return {"input_ids": torch.randint(5, 60, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}


@pytest.mark.parametrize("rslora, dora", [(False, False), (True, False), (False, True)], ids=["lora", "rslora", "dora"])
def test_adapt_adapter_loads_into_peft_with_equal_outputs(bert_dir, tmp_path, rslora, dora):
    options = LoRAOptions(r=4, alpha=8, rslora=rslora, dora=dora)
    built = adapt_bert(bert_dir, options)
    randomise_lora(built)
    lora = LoRA()
    save_file(lora.adapter_state(built), tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(lora.adapter_config(built)))

    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3, attn_implementation="eager")
    peft_model = PeftModel.from_pretrained(base, tmp_path).eval()
    built.model.eval()
    batch = inputs()
    with torch.no_grad():
        ours, theirs = built.model(**batch), peft_model(**batch).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_peft_adapter_loads_into_adapt_with_equal_outputs(bert_dir, tmp_path, dora):
    peft_model = peft_bert(bert_dir, LoRAOptions(r=4, alpha=8, dora=dora))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.normal_(0, 0.2)
    peft_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())

    options = options_from_peft(config)
    assert (options.r, options.alpha, options.dora) == (4, 8, dora)
    built = adapt_bert(bert_dir, options)
    LoRA().load_adapter_state(built, load_file(tmp_path / "adapter_model.safetensors"))
    built.model.eval(), peft_model.eval()
    batch = inputs()
    with torch.no_grad():
        assert (built.model(**batch) - peft_model(**batch).logits).abs().max().item() <= 1e-5
        merged = LoRA().merge(built).model
        assert (merged(**batch) - peft_model.merge_and_unload()(**batch).logits).abs().max().item() <= 1e-5


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.head = nn.Linear(6, 2)

    def forward(self, pixel_values):
        return self.head(self.conv(pixel_values).mean((2, 3)))


class Wrapped(nn.Module):
    """adapt's convention: the real model sits in ``.model``."""

    def __init__(self, inner):
        super().__init__()
        self.model = inner

    def forward(self, pixel_values):
        return self.model(pixel_values)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_conv2d_lora_matches_peft_both_ways(tmp_path, dora):
    torch.manual_seed(0)
    inner = TwoConvs()
    original = {k: v.clone() for k, v in inner.state_dict().items()}
    reference = TwoConvs()
    reference.load_state_dict(original)
    built = BuiltModel(Wrapped(inner), "image-classification", 2, head=("model.head",))
    lora = LoRA()
    lora.apply(built, LoRAOptions(r=3, alpha=6, targets=["conv"], dora=dora), [])
    randomise_lora(built)
    save_file(lora.adapter_state(built), tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(lora.adapter_config(built)))

    peft_model = PeftModel.from_pretrained(reference, tmp_path).eval()
    built.model.eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        assert (built.model(x) - peft_model(x)).abs().max().item() <= 1e-5

    # and back: PEFT's saved file into a fresh adapt model
    peft_model.save_pretrained(tmp_path / "again")
    fresh_inner = TwoConvs()
    fresh_inner.load_state_dict(original)
    fresh = BuiltModel(Wrapped(fresh_inner), "image-classification", 2, head=("model.head",))
    lora.apply(fresh, options_from_peft(json.loads((tmp_path / "again" / "adapter_config.json").read_text())), [])
    lora.load_adapter_state(fresh, load_file(tmp_path / "again" / "adapter_model.safetensors"))
    fresh.model.eval()
    with torch.no_grad():
        assert (fresh.model(x) - peft_model(x)).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from tests.tiny import decoder_checkpoint

    return str(decoder_checkpoint(tmp_path_factory.mktemp("gpt2") / "gpt2", "gpt2", num_labels=3))


def gpt2_inputs():
    torch.manual_seed(2)
    return {"input_ids": torch.randint(5, 300, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_gpt2_conv1d_lora_moves_between_adapt_and_peft_with_equal_outputs(gpt2_dir, tmp_path, dora):
    """GPT-2's projections are transformers' Conv1D (weight stored (in, out)): adapt's adapter
    loads into PEFT (fan_in_fan_out) with equal outputs, and PEFT's own merge agrees with adapt's fold."""
    from transformers import AutoModelForSequenceClassification

    from adapt.plugins.transformers.transformers_backbone import Transformers

    built = Transformers().build("text-classification", 3, checkpoint=gpt2_dir, arch=None, options=TextOptions())
    lora = LoRA()
    lora.apply(built, LoRAOptions(r=4, alpha=8, dora=dora), built.families["attention-qv"])
    randomise_lora(built)
    save_file(lora.adapter_state(built), tmp_path / "adapter_model.safetensors")
    config = lora.adapter_config(built)
    assert config["fan_in_fan_out"] is True and config["target_modules"] == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))

    base = AutoModelForSequenceClassification.from_pretrained(gpt2_dir, num_labels=3, attn_implementation="eager")
    base.config.pad_token_id = built.preprocessor.pad_token_id
    peft_model = PeftModel.from_pretrained(base, tmp_path).eval()
    built.model.eval()
    batch = gpt2_inputs()
    with torch.no_grad():
        ours, theirs = built.model(**batch), peft_model(**batch).logits
        assert (ours - theirs).abs().max().item() <= 1e-5
        folded = lora.merge(built).model.eval()(**batch)
        peft_merged = peft_model.merge_and_unload()(**batch).logits
    assert (folded - peft_merged).abs().max().item() <= 1e-5
    assert (folded - ours).abs().max().item() <= 1e-5
