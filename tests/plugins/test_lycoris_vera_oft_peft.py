"""adapt's loha, lokr, vera and oft against HF PEFT's own classes (a test dependency):
adapters adapt saves load in PEFT with equal outputs and PEFT's merge equals adapt's fold;
adapters PEFT trained load in adapt with equal outputs; on BERT and on convolutions
(depthwise included, where PEFT defines the method there)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, OFTConfig, PeftModel, VeraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from adapt.host import make_host
from adapt.interfaces import BuiltModel
from adapt.plan import validate_options
from adapt.plugins.methods import loha, oft, vera
from adapt.plugins.transformers.bert import Bert
from adapt.plugins.transformers.hf_text import TextOptions
from tests.plugins.test_lora_peft import Wrapped, inputs
from tests.tiny import bert_checkpoint

HOST = make_host(autoload=False)
TARGETS = ["query", "value"]

#: method -> (adapt options, the PEFT config with the same meaning, PEFT config -> adapt options)
CASES = {
    "loha": ({"r": 4, "alpha": 6}, lambda: LoHaConfig(r=4, alpha=6), loha.loha_options_from_peft),
    "lokr": ({"r": 2, "alpha": 3}, lambda: LoKrConfig(r=2, alpha=3), loha.lokr_options_from_peft),
    "lokr-both": (
        {"r": 1, "alpha": 3, "decompose_both": True, "decompose_factor": 4},
        lambda: LoKrConfig(r=1, alpha=3, decompose_both=True, decompose_factor=4),
        loha.lokr_options_from_peft,
    ),
    "vera": ({"r": 16, "seed": 7}, lambda: VeraConfig(r=16, projection_prng_key=7), vera.options_from_peft),
    "oft": ({"block_size": 8}, lambda: OFTConfig(oft_block_size=8, use_cayley_neumann=False), oft.options_from_peft),
    "oft-neumann": (
        {"block_size": 16, "neumann_terms": 5},
        lambda: OFTConfig(oft_block_size=16, use_cayley_neumann=True, num_cayley_neumann_terms=5),
        oft.options_from_peft,
    ),
}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert", num_labels=3))


def method_of(case: str):
    return HOST.methods.get(case.split("-")[0])


def randomise(model: nn.Module, seed: int = 1) -> None:
    """Every trained tensor away from its start (zeros or the identity fold trivially)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad or "modules_to_save" in name:
                param.normal_(0, 0.2)


def peft_base(bert_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3, attn_implementation="eager")


def adapt_bert(bert_dir, case, options):
    built = Bert().build("text-classification", 3, checkpoint=bert_dir, arch=None, options=TextOptions())
    method_of(case).apply(built, options, TARGETS)
    return built


@pytest.mark.parametrize("case", list(CASES))
def test_adapt_adapter_loads_into_peft_and_folds_as_peft_merges(bert_dir, tmp_path, case):
    raw, _, _ = CASES[case]
    method = method_of(case)
    built = adapt_bert(bert_dir, case, validate_options(method, "m", {**raw, "targets": TARGETS}, "m"))
    randomise(built.model)
    save_file(method.adapter_state(built), tmp_path / "adapter_model.safetensors")
    config = method.adapter_config(built)
    assert config["peft_type"] == method.peft_type and config["target_modules"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))

    peft_model = PeftModel.from_pretrained(peft_base(bert_dir), tmp_path).eval()
    built.model.eval()
    with torch.no_grad():
        ours = built.model(**inputs())
        assert (ours - peft_model(**inputs()).logits).abs().max().item() <= 1e-5
        folded = method.merge(built).model.eval()(**inputs())
        assert (folded - peft_model.merge_and_unload()(**inputs()).logits).abs().max().item() <= 1e-5
    assert (folded - ours).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_peft_adapter_loads_into_adapt_with_equal_outputs(bert_dir, tmp_path, case):
    _, peft_config, from_peft = CASES[case]
    config = peft_config()
    config.target_modules, config.modules_to_save = TARGETS, ["classifier"]
    peft_model = get_peft_model(peft_base(bert_dir), config)
    randomise(peft_model, seed=3)
    peft_model.save_pretrained(tmp_path)
    options = from_peft(json.loads((tmp_path / "adapter_config.json").read_text()))

    built = adapt_bert(bert_dir, case, options)
    method_of(case).load_adapter_state(built, load_file(tmp_path / "adapter_model.safetensors"))
    built.model.eval(), peft_model.eval()
    with torch.no_grad():
        assert (built.model(**inputs()) - peft_model(**inputs()).logits).abs().max().item() <= 1e-5


class Convs(nn.Module):
    """A pointwise-less little CNN: an ordinary 3x3 conv, then a depthwise 3x3 conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8)
        self.head = nn.Linear(8, 2)

    def forward(self, pixel_values):
        return self.head(self.dw(self.conv(pixel_values)).mean((2, 3)))


@pytest.mark.parametrize("case", ["loha", "lokr", "lokr-both"])
def test_conv_and_depthwise_folds_equal_peft_both_ways(tmp_path, case):
    """PEFT's LoHa and LoKr lay a grouped kernel out as adapt does: both ways, equal outputs
    and adapt's fold equal to PEFT's merge, on a depthwise convolution too."""
    raw, _, from_peft = CASES[case]
    method = method_of(case)
    torch.manual_seed(0)
    inner = Convs()
    original = {k: v.clone() for k, v in inner.state_dict().items()}
    built = BuiltModel(Wrapped(inner), "image-classification", 2, head=("model.head",))
    method.apply(built, validate_options(method, "m", {**raw, "targets": ["conv", "dw"]}, "m"), [])
    randomise(built.model)
    save_file(method.adapter_state(built), tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(method.adapter_config(built)))

    reference = Convs()
    reference.load_state_dict(original)
    peft_model = PeftModel.from_pretrained(reference, tmp_path).eval()
    peft_model.save_pretrained(tmp_path / "again")  # to load back into a fresh adapt model below
    built.model.eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        ours = built.model(x)
        assert (ours - peft_model(x)).abs().max().item() <= 1e-5
        folded = method.merge(built).model.eval()
        assert (folded(x) - ours).abs().max().item() <= 1e-5
        assert folded.model.dw.groups == 8 and type(folded.model.dw) is nn.Conv2d
        assert (folded(x) - peft_model.merge_and_unload()(x)).abs().max().item() <= 1e-5

    fresh_inner = Convs()
    fresh_inner.load_state_dict(original)
    fresh = BuiltModel(Wrapped(fresh_inner), "image-classification", 2, head=("model.head",))
    method.apply(fresh, from_peft(json.loads((tmp_path / "again" / "adapter_config.json").read_text())), [])
    method.load_adapter_state(fresh, load_file(tmp_path / "again" / "adapter_model.safetensors"))
    with torch.no_grad():
        assert (fresh.model.eval()(x) - ours).abs().max().item() <= 1e-5


def test_oft_on_a_conv_folds_as_peft_merges(tmp_path):
    """PEFT's OFT rotates a conv's flattened kernel as adapt does (its unmerged forward
    approximates that for kernels past 1x1, so the merged models are compared)."""
    method = HOST.methods.get("oft")
    torch.manual_seed(0)
    inner = Convs()
    original = {k: v.clone() for k, v in inner.state_dict().items()}
    built = BuiltModel(Wrapped(inner), "image-classification", 2, head=("model.head",))
    method.apply(built, validate_options(method, "m", {"block_size": 12, "targets": ["conv"]}, "m"), [])
    randomise(built.model)
    save_file(method.adapter_state(built), tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(method.adapter_config(built)))
    reference = Convs()
    reference.load_state_dict(original)
    peft_merged = PeftModel.from_pretrained(reference, tmp_path).merge_and_unload().eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        ours = built.model.eval()(x)
        assert (ours - peft_merged(x)).abs().max().item() <= 1e-5
        assert (method.merge(built).model.eval()(x) - ours).abs().max().item() <= 1e-5


def test_vera_draws_peft_projections_from_the_same_seed(bert_dir):
    config = VeraConfig(r=16, projection_prng_key=7, target_modules=TARGETS)
    peft_model = get_peft_model(peft_base(bert_dir), config)
    method = HOST.methods.get("vera")
    built = adapt_bert(bert_dir, "vera", validate_options(method, "m", {"r": 16, "seed": 7, "targets": TARGETS}, "m"))
    state = method.adapter_state(built)
    theirs = peft_model.base_model.vera_A["default"], peft_model.base_model.vera_B["default"]
    assert torch.equal(state["base_model.vera_A"], theirs[0]) and torch.equal(state["base_model.vera_B"], theirs[1])


def test_lokr_factorization_is_peft_s():
    from peft.tuners.lokr.layer import factorization as peft_factorization

    from adapt.plugins.methods.lycoris_layers import factorization

    for dimension in range(1, 400):
        for factor in (-1, 2, 4, 8):
            assert factorization(dimension, factor) == peft_factorization(dimension, factor), (dimension, factor)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"peft_type": "LOHA", "r": 4, "alpha": 4, "module_dropout": 0.1}, "module_dropout=0.1"),
        ({"peft_type": "LORA", "r": 4, "alpha": 4}, "not LOHA"),
    ],
)
def test_peft_options_adapt_lacks_are_refused_clearly(config, message):
    from adapt.errors import CheckpointError

    with pytest.raises(CheckpointError, match=message):
        loha.loha_options_from_peft(config)


def test_a_vera_adapter_without_its_projections_is_refused(bert_dir):
    from adapt.errors import CheckpointError

    method = HOST.methods.get("vera")
    options = validate_options(method, "m", {"r": 16, "targets": TARGETS}, "m")
    built = adapt_bert(bert_dir, "vera", options)
    state = {k: v for k, v in method.adapter_state(built).items() if not k.startswith("base_model.vera_")}
    with pytest.raises(CheckpointError, match="shared projections were not saved"):
        method.load_adapter_state(adapt_bert(bert_dir, "vera", options), state)


def test_an_oft_adapter_given_by_block_count_is_refused():
    from adapt.errors import CheckpointError

    with pytest.raises(CheckpointError, match="block count"):
        oft.options_from_peft({"peft_type": "OFT", "r": 4, "oft_block_size": 0})


def test_a_model_another_method_adapted_is_not_taken_for_this_method_s(bert_dir):
    """loha's layers are not lokr's: lokr's adapter_config on a loha model says none are there."""
    from adapt.errors import ConfigError

    built = adapt_bert(bert_dir, "loha", validate_options(HOST.methods.get("loha"), "m", {"targets": TARGETS}, "m"))
    assert HOST.methods.get("lokr").layers(built.model) == {}
    with pytest.raises(ConfigError, match="no LoKr layers in this model"):
        HOST.methods.get("lokr").adapter_config(built)
