"""adapt's (IA)^3 against HF PEFT's IA3 (a test dependency): adapters move both ways with
equal outputs, and adapt's fold equals PEFT's merge_and_unload, on BERT (keys, values, the
MLP's output projection input-scaled), GPT-2's Conv1D projections and a Conv2d."""

from __future__ import annotations

import json

import pytest
import torch
from peft import IA3Config, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from adapt.interfaces import BuiltModel
from adapt.plugins.methods.ia3 import IA3, IA3Options, options_from_peft
from adapt.plugins.transformers.bert import Bert
from adapt.plugins.transformers.hf_text import TextOptions
from tests.plugins.test_lora_peft import TwoConvs, Wrapped, inputs
from tests.tiny import bert_checkpoint, decoder_checkpoint


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert", num_labels=3))


def randomise_scales(model: torch.nn.Module, seed: int = 1) -> None:
    """Scales away from their initial ones (where any fold is trivially exact), heads too."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_l" in name:
                param.copy_(torch.rand_like(param) * 1.5 + 0.25)
            elif param.requires_grad or "modules_to_save" in name:
                param.normal_(0, 0.2)


def peft_base(bert_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3, attn_implementation="eager")


def test_adapt_ia3_loads_into_peft_with_equal_outputs(bert_dir, tmp_path):
    built = Bert().build("text-classification", 3, checkpoint=bert_dir, arch=None, options=TextOptions())
    method = IA3()
    method.apply(built, IA3Options(), [*built.families["attention-kv"], *built.families["mlp-output"]])
    randomise_scales(built.model)
    save_file(method.adapter_state(built), tmp_path / "adapter_model.safetensors")
    config = method.adapter_config(built)
    assert config["peft_type"] == "IA3" and config["feedforward_modules"] and set(config["feedforward_modules"]) < set(config["target_modules"])
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))

    peft_model = PeftModel.from_pretrained(peft_base(bert_dir), tmp_path).eval()
    built.model.eval()
    with torch.no_grad():
        ours, theirs = built.model(**inputs()), peft_model(**inputs()).logits
        assert (ours - theirs).abs().max().item() <= 1e-5
        folded = method.merge(built).model.eval()(**inputs())
        assert (folded - peft_model.merge_and_unload()(**inputs()).logits).abs().max().item() <= 1e-5
    assert (folded - ours).abs().max().item() <= 1e-5


def test_peft_ia3_loads_into_adapt_with_equal_outputs(bert_dir, tmp_path):
    config = IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"], modules_to_save=["classifier"])
    peft_model = get_peft_model(peft_base(bert_dir), config)
    randomise_scales(peft_model, seed=3)
    peft_model.save_pretrained(tmp_path)
    options = options_from_peft(json.loads((tmp_path / "adapter_config.json").read_text()))

    built = Bert().build("text-classification", 3, checkpoint=bert_dir, arch=None, options=TextOptions())
    method = IA3()
    method.apply(built, options, [])
    method.load_adapter_state(built, load_file(tmp_path / "adapter_model.safetensors"))
    built.model.eval(), peft_model.eval()
    with torch.no_grad():
        assert (built.model(**inputs()) - peft_model(**inputs()).logits).abs().max().item() <= 1e-5


def test_gpt2_conv1d_ia3_moves_between_adapt_and_peft(tmp_path):
    """GPT-2's projections store their weight (in, out): output scaling on c_attn, input scaling on mlp.c_proj."""
    from transformers import AutoModelForSequenceClassification

    from adapt.plugins.transformers.transformers_backbone import Transformers
    from tests.plugins.test_lora_peft import gpt2_inputs

    folder = str(decoder_checkpoint(tmp_path / "gpt2", "gpt2", num_labels=3))
    built = Transformers().build("text-classification", 3, checkpoint=folder, arch=None, options=TextOptions())
    method = IA3()
    method.apply(built, IA3Options(targets=["c_attn", "mlp.c_proj"], feedforward=["mlp.c_proj"]), [])
    randomise_scales(built.model)
    save_file(method.adapter_state(built), tmp_path / "adapter_model.safetensors")
    config = method.adapter_config(built)
    assert config["fan_in_fan_out"] is True
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))

    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, attn_implementation="eager")
    base.config.pad_token_id = built.preprocessor.pad_token_id
    peft_model = PeftModel.from_pretrained(base, tmp_path).eval()
    built.model.eval()
    with torch.no_grad():
        ours = built.model(**gpt2_inputs())
        assert (ours - peft_model(**gpt2_inputs()).logits).abs().max().item() <= 1e-5
        assert (method.merge(built).model.eval()(**gpt2_inputs()) - ours).abs().max().item() <= 1e-5


@pytest.mark.parametrize("feedforward", [False, True], ids=["output-scaled", "input-scaled"])
def test_conv2d_ia3_matches_peft_both_ways(tmp_path, feedforward):
    torch.manual_seed(0)
    inner = TwoConvs()
    original = {k: v.clone() for k, v in inner.state_dict().items()}
    built = BuiltModel(Wrapped(inner), "image-classification", 2, head=("model.head",))
    method = IA3()
    method.apply(built, IA3Options(targets=["conv"], feedforward=["conv"] if feedforward else []), [])
    randomise_scales(built.model)
    save_file(method.adapter_state(built), tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(method.adapter_config(built)))

    reference = TwoConvs()
    reference.load_state_dict(original)
    peft_model = PeftModel.from_pretrained(reference, tmp_path).eval()
    built.model.eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        ours = built.model(x)
        assert (ours - peft_model(x)).abs().max().item() <= 1e-5
        assert (method.merge(built).model.eval()(x) - ours).abs().max().item() <= 1e-5

    peft_model.save_pretrained(tmp_path / "again")  # and back into a fresh adapt model
    fresh_inner = TwoConvs()
    fresh_inner.load_state_dict(original)
    fresh = BuiltModel(Wrapped(fresh_inner), "image-classification", 2, head=("model.head",))
    method.apply(fresh, options_from_peft(json.loads((tmp_path / "again" / "adapter_config.json").read_text())), [])
    method.load_adapter_state(fresh, load_file(tmp_path / "again" / "adapter_model.safetensors"))
    with torch.no_grad():
        assert (fresh.model.eval()(x) - ours).abs().max().item() <= 1e-5
