"""LoRA's initialisations (gaussian, pissa, olora) and LoRA+ (lr_ratio): each starts where
PEFT's does, starts the model at the base, folds exactly, and a pissa / olora adapter
loads in PEFT (as PEFT's own rank-2r conversion) with the adapted model's outputs."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

from adapt.config import TrainConfig
from adapt.engine import Trainer
from adapt.errors import ConfigError
from adapt.host import make_host
from adapt.interfaces import BuiltModel
from adapt.plan import validate_options
from adapt.plugins.methods.lora import LoRA, LoRAOptions
from adapt.plugins.transformers.bert import Bert
from adapt.plugins.transformers.hf_text import TextOptions
from tests.plugins.test_lora_peft import TwoConvs, Wrapped, inputs, randomise_lora
from tests.tiny import bert_checkpoint

TARGETS = ["query", "value"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert", num_labels=3))


def adapt_bert(bert_dir, **options):
    built = Bert().build("text-classification", 3, checkpoint=bert_dir, arch=None, options=TextOptions())
    torch.manual_seed(0)
    LoRA().apply(built, LoRAOptions(targets=TARGETS, **options), [])
    return built


def base_bert(bert_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3, attn_implementation="eager")


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_principal_inits_start_where_peft_starts_and_at_the_base_model(bert_dir, init):
    built = adapt_bert(bert_dir, r=4, alpha=8, init=init)
    peft_model = get_peft_model(base_bert(bert_dir), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init))
    layer = built.model.get_submodule("model.bert.encoder.layer.0.attention.self.query")
    theirs = peft_model.base_model.model.bert.encoder.layer[0].attention.self.query
    torch.testing.assert_close(layer.lora_A, theirs.lora_A["default"].weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.lora_B, theirs.lora_B["default"].weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.base_weight, theirs.base_layer.weight, rtol=0, atol=1e-6)  # the residual
    reference = base_bert(bert_dir).eval()
    built.model.eval()
    with torch.no_grad():
        assert (built.model(**inputs()) - reference(**inputs()).logits).abs().max().item() <= 1e-5


def test_gaussian_init_draws_a_with_std_one_over_r(bert_dir):
    built = adapt_bert(bert_dir, r=4, init="gaussian")
    a = torch.cat([m.lora_A.flatten() for m in LoRA._lora_modules(built.model).values()])
    assert abs(a.std().item() - 1 / 4) < 0.02
    assert all(not m.lora_B.any() for m in LoRA._lora_modules(built.model).values())


@pytest.mark.parametrize("init, rslora", [("pissa", False), ("olora", False), ("pissa", True)])
def test_principal_adapter_loads_into_peft_as_the_rank_2r_lora(bert_dir, tmp_path, init, rslora):
    built = adapt_bert(bert_dir, r=4, alpha=8, init=init, rslora=rslora)
    randomise_lora(built)
    lora = LoRA()
    save_file(lora.adapter_state(built), tmp_path / "adapter_model.safetensors")
    config = lora.adapter_config(built)
    assert config["r"] == 8 and config["init_lora_weights"] is True
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    peft_model = PeftModel.from_pretrained(base_bert(bert_dir), tmp_path).eval()  # on the original weights
    built.model.eval()
    with torch.no_grad():
        ours = built.model(**inputs())
        assert (ours - peft_model(**inputs()).logits).abs().max().item() <= 1e-5
        assert (lora.merge(built).model.eval()(**inputs()) - ours).abs().max().item() <= 1e-5


@pytest.mark.parametrize("groups", [1, 4])
def test_principal_init_on_grouped_and_depthwise_convs_round_trips_and_folds(groups, tmp_path):
    torch.manual_seed(0)
    inner = TwoConvs()
    inner.conv = torch.nn.Conv2d(4, 8, 3, padding=1, stride=2, groups=groups)
    inner.head = torch.nn.Linear(8, 2)
    original = {k: v.clone() for k, v in inner.state_dict().items()}
    built = BuiltModel(Wrapped(inner), "image-classification", 2, head=("model.head",))
    lora = LoRA()
    lora.apply(built, LoRAOptions(r=3, alpha=6, targets=["conv"], init="pissa"), [])
    randomise_lora(built)
    x = torch.randn(2, 4, 9, 9)
    built.model.eval()
    with torch.no_grad():
        ours = built.model(x)
        assert (lora.merge(built).model.eval()(x) - ours).abs().max().item() <= 1e-5
    if groups == 1:  # PEFT's conv LoRA has no groups: load the rank-2r form there
        save_file(lora.adapter_state(built), tmp_path / "adapter_model.safetensors")
        (tmp_path / "adapter_config.json").write_text(json.dumps(lora.adapter_config(built)))
        reference = TwoConvs()
        reference.conv, reference.head = torch.nn.Conv2d(4, 8, 3, padding=1, stride=2), torch.nn.Linear(8, 2)
        reference.load_state_dict(original)
        with torch.no_grad():
            assert (PeftModel.from_pretrained(reference, tmp_path).eval()(x) - ours).abs().max().item() <= 1e-5


def test_a_principal_adapter_from_another_start_moves_the_residual_to_its_start(bert_dir):
    """Another machine's SVD may start B0 A0 elsewhere: loading keeps W_res + s B0 A0 = W."""
    built = adapt_bert(bert_dir, r=4, alpha=8, init="pissa")
    randomise_lora(built)
    state = LoRA().adapter_state(built)
    for key in state:
        if key.endswith("lora_A.weight"):
            state[key][4:] += 0.01  # the file's A0 is not this model's
    fresh = adapt_bert(bert_dir, r=4, alpha=8, init="pissa")
    LoRA().load_adapter_state(fresh, state)
    original = base_bert(bert_dir)
    for name, layer in LoRA._lora_modules(fresh.model).items():
        with torch.no_grad():
            start = layer.base_weight + layer.initial_delta()
        torch.testing.assert_close(start, original.get_submodule(name.removeprefix("model.")).weight, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.lora_A0, state[f"base_model.model.{name.removeprefix('model.')}.lora_A.weight"][4:])


@pytest.mark.parametrize("raw, message", [({"init": "pissa", "dora": True}, "does not combine with dora"), ({"init": "olora", "base": "4bit"}, "base: 4bit"), ({"lr_ratio": 0}, "greater than 0")])
def test_init_and_lr_ratio_options_are_checked(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate_options(make_host(autoload=False).methods.get("lora"), "method", raw, "method.options")


def test_lr_ratio_gives_b_its_own_learning_rate_in_the_optimiser(bert_dir, tmp_path):
    host = make_host(autoload=False)
    backbone, method = host.backbones.get("bert"), host.methods.get("lora")
    built = backbone.build("text-classification", 2, checkpoint=bert_dir, arch=None, options=TextOptions())
    method.apply(built, validate_options(method, "m", {"r": 2, "lr_ratio": 16}, "m"), TARGETS)
    examples = [{"text": "the team won", "label": i % 2} for i in range(4)]
    config = TrainConfig(epochs=1, batch_size=2, lr=1e-3, device="cpu", checkpoint_every=0)
    trainer = Trainer(built=built, method=method, task=host.tasks.get("text-classification"), collate=backbone.collator(built, TextOptions()), train=examples, val=[], label_names=["a", "b"], config=config, run_dir=tmp_path)
    params = [p for p in built.model.parameters() if p.requires_grad]
    groups = trainer._optimiser(params).param_groups
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    bs = {id(p) for n, p in built.model.named_parameters() if n.endswith("lora_B")}
    assert set(by_lr) == {1e-3, 1.6e-2} and by_lr[1.6e-2] == bs
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_principal_init_refuses_a_target_whose_weight_another_layer_shares():
    """pissa / olora change the frozen weight: a tied one would change the other layer too."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Linear(6, 6))
    model[1].weight = model[0].weight
    built = BuiltModel(model, "image-classification", 6)
    with pytest.raises(ConfigError, match="would change weights that other layers share: 0"):
        LoRA().apply(built, LoRAOptions(r=2, init="pissa", targets=["0"]), [])


def test_learning_rates_naming_a_missing_parameter_is_an_error_naming_the_method(bert_dir, tmp_path):
    from adapt.errors import PluginError

    class Misnamed(LoRA):
        name = "misnamed"

        def learning_rates(self, built):
            return {"model.no_such.lora_B": 4.0}

    host = make_host(autoload=False)
    backbone = host.backbones.get("bert")
    built = backbone.build("text-classification", 2, checkpoint=bert_dir, arch=None, options=TextOptions())
    method = Misnamed()
    method.apply(built, LoRAOptions(r=2), TARGETS)
    config = TrainConfig(epochs=1, batch_size=2, lr=1e-3, device="cpu", checkpoint_every=0)
    trainer = Trainer(built=built, method=method, task=host.tasks.get("text-classification"), collate=backbone.collator(built, TextOptions()), train=[{"text": "a", "label": 0}], val=[], label_names=["a", "b"], config=config, run_dir=tmp_path)
    with pytest.raises(PluginError, match="method 'misnamed' sets learning rates for parameters the model lacks: model.no_such.lora_B"):
        trainer._optimiser([p for p in built.model.parameters() if p.requires_grad])
