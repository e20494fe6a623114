"""Every method on every backbone kind: train a few steps, merge, and prove the merge exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.errors import ConfigError
from adapt.interfaces import BuiltModel
from adapt.plugins.transformers.hf_text import TextOptions
from adapt.host import make_host
from adapt.plan import validate_options
from adapt.plugins.timm.mobilenet import MobileNetOptions

from tests.tiny import bert_checkpoint

HOST = make_host(autoload=False)
LABELS = 3


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert"))


def build(kind: str, bert_dir: str):
    torch.manual_seed(0)
    if kind == "bert":
        backbone = HOST.backbones.get("bert")
        built = backbone.build("text-classification", LABELS, checkpoint=bert_dir, arch=None, options=TextOptions(max_length=16))
        examples = [{"text": t, "label": i % LABELS} for i, t in enumerate(["obama visited paris", "the market fell", "shares rose in london", "the team won the match"] * 2)]
        return backbone, built, backbone.collator(built, TextOptions(max_length=16))(examples)
    backbone = HOST.backbones.get("mobilenet")
    options = MobileNetOptions(image_size=32)
    built = backbone.build("image-classification", LABELS, checkpoint=None, arch=kind, options=options)
    rng = np.random.default_rng(0)
    examples = [{"image": rng.integers(0, 255, (16, 16), dtype=np.uint8), "label": i % LABELS} for i in range(8)]
    return backbone, built, backbone.collator(built, options)(examples)


CASES = [
    ("freeze", {}),
    ("freeze", {"last_blocks": 1, "biases": True}),
    ("lora", {"r": 4, "alpha": 8}),
    ("lora", {"r": 3, "alpha": 5, "rslora": True, "dropout": 0.1}),
    ("lora", {"r": 4, "alpha": 8, "init": "pissa"}),
    ("lora", {"r": 2, "alpha": 4, "init": "olora", "lr_ratio": 16}),
    ("dora", {"r": 4, "alpha": 8}),
    ("dora", {"r": 3, "alpha": 5, "rslora": True, "dropout": 0.1}),
    ("ia3", {}),
    ("ia3", {"feedforward": []}),
    ("loha", {"r": 3, "alpha": 4}),
    ("lokr", {"r": 2, "alpha": 4}),
    ("lokr", {"r": 1, "alpha": 2, "decompose_both": True, "decompose_factor": 2}),
    ("vera", {"r": 16}),
    ("oft", {"block_size": 4}),
    ("oft", {"block_size": 8, "neumann_terms": 5}),
    ("adapters", {"reduction": 4}),
    ("adapters", {"reduction": 4, "placement": "houlsby", "activation": "gelu"}),
    ("adapters", {"reduction": 4, "placement": "houlsby", "activation": "none"}),
]
BACKBONES = ["bert", "mobilenetv3_small_050", "mobilenetv2_050"]


def train_steps(built, method, batch, steps=3):
    params = [p for p in built.model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-2)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    built.model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(built.model(**inputs), batch["labels"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    built.model.eval()
    return inputs


def defaults(backbone, built, method):
    """The targets `adapt run` gives a method that names none (adapt.pipeline.chosen_targets)."""
    from adapt.families import default_target_names

    return default_target_names(built.families, tuple(method.default_families or ())) or backbone.default_targets(method.name)


def method_modules(model):
    from adapt.plugins.methods import adapter_layers as _adapter_layers, ia3_layers as _ia3_layers, lora_layers as _lora_layers
    from adapt.plugins.methods.weight_layers import MatrixLayer

    kinds = (*_lora_layers.LORA_LAYERS.values(), _adapter_layers.AdapterAfter, _ia3_layers.IA3Layer, MatrixLayer)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("method_name, raw", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_merge_equals_the_adapted_model(kind, method_name, raw, bert_dir):
    backbone, built, batch = build(kind, bert_dir)
    base_count = sum(p.numel() for p in built.model.parameters())
    method = HOST.methods.get(method_name)
    options = validate_options(method, "method", raw, "method.options")
    trainable = method.apply(built, options, defaults(backbone, built, method))
    assert trainable and set(built.new_parameters) <= set(trainable)

    with torch.no_grad():
        before = {n: p.clone() for n, p in built.model.named_parameters() if p.requires_grad}
    inputs = train_steps(built, method, batch)
    assert any(not torch.equal(before[n], p) for n, p in built.model.named_parameters() if n in before)

    merged = method.merge(built)
    with torch.no_grad():
        adapted_out, merged_out = built.model(**inputs), merged.model(**inputs)
    # in fp32 both forwards round: 1e-5 of the largest logit (PiSSA's larger factors on
    # MobileNetV2 round 1.0e-5 away from their own fp64 value at logits of 4.4) ...
    assert (adapted_out - merged_out).abs().max().item() <= 1e-5 * max(1.0, adapted_out.abs().max().item())
    assert torch.equal(adapted_out.argmax(-1), merged_out.argmax(-1))
    assert all(p.dtype == torch.float32 for p in merged.model.parameters())
    head = built.head[0]
    torch.testing.assert_close(merged.model.get_submodule(head).weight, built.model.get_submodule(head).weight)
    # ... and in fp64 the fold itself is gated: only the merged weights' one rounding to fp32 is left
    doubled = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        exact = built.model.double()(**doubled) - merged.model.double()(**doubled)
    assert exact.abs().max().item() <= 1e-5
    if merged.folded:
        assert method_modules(merged.model) == []
        assert sum(p.numel() for p in merged.model.parameters()) == base_count
    else:
        assert method_name == "adapters" and raw.get("activation", "relu") != "none"
        assert method_modules(merged.model)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("groups_of", ["one", "two", "depthwise"])
@pytest.mark.parametrize("r", [1, 3, 5])
def test_grouped_and_depthwise_conv_lora_folds_exactly(groups_of, r, dora):
    from adapt.plugins.methods import lora_layers as layers

    torch.manual_seed(r)
    channels = 6
    groups = {"one": 1, "two": 2, "depthwise": channels}[groups_of]
    conv = torch.nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, groups=groups)
    lora = layers.LoRAConv2d(conv, r, alpha=2 * r, dora=dora)
    with torch.no_grad():
        lora.lora_B.normal_()
        if dora:  # away from ||W||, where DoRA would only renormalise
            lora.lora_magnitude_vector.mul_(torch.rand_like(lora.lora_magnitude_vector) + 0.5)
    x = torch.randn(2, channels, 11, 11)
    with torch.no_grad():
        expected = lora(x)
        folded = layers.fold(lora)
    assert type(folded) is torch.nn.Conv2d and folded.groups == groups
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5)


def test_lora_starts_equal_to_the_base(bert_dir):
    backbone, built, batch = build("mobilenetv2_050", bert_dir)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    built.model.eval()
    with torch.no_grad():
        base = built.model(**inputs)
    HOST.methods.get("lora").apply(built, validate_options(HOST.methods.get("lora"), "m", {}, "m"), backbone.default_targets("lora"))
    with torch.no_grad():
        torch.testing.assert_close(built.model(**inputs), base)


def test_trainable_counts_follow_the_maths(bert_dir):
    backbone, built, _ = build("bert", bert_dir)
    lora = HOST.methods.get("lora")
    names = lora.apply(built, validate_options(lora, "m", {"r": 4}, "m"), ["query", "value"])
    count = sum(p.numel() for n, p in built.model.named_parameters() if n in names)
    # 2 layers x (query, value) x r * (in + out) = 4 * 4 * (32 + 32) = 1024, plus the head 32 * 3 + 3 = 99
    assert count == 1123

    from adapt.plugins.methods import lora_layers as layers

    depthwise = layers.LoRAConv2d(torch.nn.Conv2d(96, 96, 3, groups=96), r=4, alpha=8)
    # per group: A r x (1 * 3 * 3), B 1 x r  ->  96 * (4 * 9 + 4) = 3840
    assert sum(p.numel() for n, p in depthwise.named_parameters() if n.startswith("lora_")) == 3840

    _, built, _ = build("bert", bert_dir)
    adapters = HOST.methods.get("adapters")
    names = adapters.apply(built, validate_options(adapters, "m", {"reduction": 8, "placement": "houlsby"}, "m"), backbone.default_targets("adapters"))
    count = sum(p.numel() for n, p in built.model.named_parameters() if n in names)
    # 2 layers x 2 places x (down 32*4+4 + up 4*32+32) = 4 * 292 = 1168, plus the head 99
    assert count == 1267


def test_unmatched_targets_list_what_could_be_targeted(bert_dir):
    backbone, built, _ = build("bert", bert_dir)
    lora = HOST.methods.get("lora")
    with pytest.raises(ConfigError) as info:
        lora.apply(built, validate_options(lora, "m", {"targets": ["qkv"]}, "m"), [])
    assert "`method.options.targets` = ['qkv'] matches no Linear / Conv1D / Conv2d module" in info.value.message
    assert "query" in info.value.message and "dense" in info.value.message
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        lora.apply(built, validate_options(lora, "m", {"targets": "(query"}, "m"), [])


def test_a_regex_target_matches_full_names(bert_dir):
    backbone, built, _ = build("bert", bert_dir)
    lora = HOST.methods.get("lora")
    lora.apply(built, validate_options(lora, "m", {"targets": r".*layer\.1\.attention\.self\.(key|value)"}, "m"), [])
    assert method_modules(built.model) == ["model.bert.encoder.layer.1.attention.self.key", "model.bert.encoder.layer.1.attention.self.value"]


@pytest.mark.parametrize("method_name", ["lora", "dora", "ia3", "loha", "lokr", "vera", "oft", "adapters"])
def test_applying_a_method_twice_is_an_error(method_name, bert_dir):
    backbone, built, _ = build("bert", bert_dir)
    method = HOST.methods.get(method_name)
    options = validate_options(method, "m", {}, "m")
    method.apply(built, options, defaults(backbone, built, method))
    with pytest.raises(ConfigError, match=f"method '{method_name}' is already applied"):
        method.apply(built, options, defaults(backbone, built, method))


@pytest.mark.parametrize("feedforward", [False, True], ids=["output-scaled", "input-scaled"])
@pytest.mark.parametrize("groups_of", ["one", "two", "depthwise"])
def test_ia3_folds_exactly_on_grouped_and_depthwise_convs(groups_of, feedforward):
    from adapt.plugins.methods.ia3_layers import IA3Layer

    torch.manual_seed(1)
    channels = 6
    groups = {"one": 1, "two": 2, "depthwise": channels}[groups_of]
    layer = IA3Layer(torch.nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, groups=groups), feedforward)
    with torch.no_grad():
        layer.ia3_l.copy_(torch.rand_like(layer.ia3_l) * 2)  # away from ones, where the fold is trivially exact
    x = torch.randn(2, channels, 9, 9)
    with torch.no_grad():
        expected = layer(x)
        folded = layer.folded()
    assert type(folded) is torch.nn.Conv2d and folded.groups == groups
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5)


def test_ia3_feedforward_must_name_targets(bert_dir):
    backbone, built, _ = build("bert", bert_dir)
    method = HOST.methods.get("ia3")
    options = validate_options(method, "m", {"targets": "attention-kv", "feedforward": "mlp-output"}, "m")
    with pytest.raises(ConfigError, match="feedforward names layers that are not targets"):
        method.apply(built, options, [])


@pytest.mark.parametrize("method_name, raw, message", [("lora", {"r": 0}, "`method.options.r` = 0: input should be greater than or equal to 1"), ("adapters", {"activation": "swish"}, "`method.options.activation` = 'swish'"), ("lora", {"dropout": 1.0}, "less than 1"), ("lokr", {"decompose_factor": 0}, "0 splits nothing"), ("oft", {"neumann_terms": 1}, "a Neumann series of 1 term"), ("oft", {"block_size": 1}, "greater than or equal to 2")])
def test_option_out_of_range(method_name, raw, message):
    with pytest.raises(ConfigError, match=message):
        validate_options(HOST.methods.get(method_name), "method", raw, "method.options")


@pytest.mark.parametrize("method_name, raw", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_builtin_methods_pass_the_shipped_conformance_check(method_name, raw, tiny_backbone):
    """adapt.testing.check_method is what a plugin author runs; the built-ins pass it too."""
    from adapt.testing import check_method

    method = HOST.methods.get(method_name)
    batch = tiny_backbone.collator(None, None)([{"image": np.full((8, 8), 30 * i, np.uint8), "label": i % 3} for i in range(6)])
    bad = validate_options(method, "m", {"targets": ["no_such_layer"]}, "m") if "targets" in (method.options_schema.model_fields if method.options_schema else {}) else None
    check_method(method, build=lambda: tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None), batch=batch, options=validate_options(method, "m", {k: v for k, v in raw.items() if k != "placement"}, "m"), default_targets=tiny_backbone.default_targets(method_name), bad_options=bad)


MATRIX_METHODS = {
    "loha": {"r": 3, "alpha": 4},
    "lokr": {"r": 2, "alpha": 4},
    "vera": {"r": 8},
    "oft": {"block_size": 9},
    "oft-neumann": {"block_size": 9, "neumann_terms": 4},
}


@pytest.mark.parametrize("case", list(MATRIX_METHODS))
@pytest.mark.parametrize("groups_of", ["one", "two", "depthwise"])
def test_reparametrising_methods_fold_exactly_on_grouped_and_depthwise_convs(groups_of, case):
    """loha, lokr, vera, oft: the wrapped conv (trained tensors moved off their start) equals its fold."""
    from adapt.plugins.methods.weight_layers import MatrixLayer

    torch.manual_seed(2)
    channels = 6
    groups = {"one": 1, "two": 2, "depthwise": channels}[groups_of]
    conv = torch.nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, groups=groups)
    method = HOST.methods.get(case.split("-")[0])
    model = torch.nn.Sequential(conv)
    built = BuiltModel(model, "image-classification", 2)
    method.apply(built, validate_options(method, "m", {**MATRIX_METHODS[case], "targets": ["0"]}, "m"), [])
    layer = model[0]
    assert isinstance(layer, MatrixLayer)
    with torch.no_grad():
        for param in layer.parameters():
            if param.requires_grad:
                param.normal_(0, 0.3)
    x = torch.randn(2, channels, 9, 9)
    with torch.no_grad():
        expected = layer(x)
        assert (expected - conv(x)).abs().max() > 1e-2  # the update is not nothing
        folded = layer.folded()
    assert type(folded) is torch.nn.Conv2d and folded.groups == groups
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5)


def test_oft_rotations_are_orthogonal_with_the_exact_cayley_transform():
    from adapt.plugins.methods.oft_layers import OFTLayer

    torch.manual_seed(0)
    layer = OFTLayer(torch.nn.Linear(24, 5), block_size=8, neumann_terms=0)
    with torch.no_grad():
        layer.oft_R.weight.normal_(0, 0.5)
        rotations = layer.oft_R.rotations(torch.float64)
        weight = layer.base_layer.weight.double()
        adapted = layer.adapted_weight(torch.float64)
    assert rotations.shape == (3, 8, 8)
    torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), torch.eye(8, dtype=torch.float64).expand(3, 8, 8))
    # a rotation keeps each neuron's norm in every block: the angles between neurons are kept
    torch.testing.assert_close(adapted.norm(dim=1), weight.norm(dim=1))


def test_vera_trains_out_plus_r_numbers_per_layer_and_shares_its_projections(bert_dir):
    backbone, built, _ = build("bert", bert_dir)
    method = HOST.methods.get("vera")
    names = method.apply(built, validate_options(method, "m", {"r": 16, "targets": ["query", "value"]}, "m"), [])
    layers = method.layers(built.model)
    count = sum(p.numel() for n, p in built.model.named_parameters() if n in names and ".vera_" in n)
    assert count == len(layers) * (32 + 16)
    first, *rest = layers.values()
    assert all(torch.equal(layer.vera_A, first.vera_A) for layer in rest)
    assert not any(".vera_A" in key for key in method.adapter_state(built) if key != "base_model.vera_A")
