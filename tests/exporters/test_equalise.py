"""Cross-layer equalisation and bias correction (adapt.exporters.equalise) on real
exported timm MobileNetV2 graphs, run by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from adapt.exporters.equalise import conv_pairs, correct_bias, equalise
from adapt.host import make_host
from adapt.interfaces import OnnxIO

ONNX = make_host(autoload=False).exporters.get("onnx")
IO = OnnxIO(("pixel_values",), ("logits",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})


def export(tmp_path: Path, act: str) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_050", num_classes=4, act_layer=act).eval()
    with torch.no_grad():  # channels of very different ranges, as trained BatchNorms leave them
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.mul_(torch.exp(1.5 * torch.randn_like(module.weight)) / 3)
    return ONNX.export(model, {"pixel_values": torch.randn(2, 3, 32, 32)}, IO, tmp_path / f"{act}.onnx", None)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]


def channel_spread(path: Path) -> float:
    """The median over convs of (largest / smallest) per-output-channel weight range."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    spreads = []
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits:
            ranges = np.abs(inits[node.input[1]]).reshape(inits[node.input[1]].shape[0], -1).max(axis=1)
            spreads.append(ranges.max() / max(ranges.min(), 1e-12))
    return float(np.median(spreads))


def test_equalisation_leaves_a_relu_network_the_same_function_with_balanced_channels(tmp_path):
    plain = export(tmp_path, "relu")
    out = tmp_path / "equalised.onnx"
    info = equalise(plain, out)
    assert info["pairs"] >= 10 and info["relu6_replaced"] == 0
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    want, got = run(plain, x), run(out, x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), np.abs(got - want).max()
    assert channel_spread(out) < 0.7 * channel_spread(plain), (channel_spread(out), channel_spread(plain))


def test_equalisation_turns_only_the_relu6_between_equalised_pairs_into_relu(tmp_path):
    plain = export(tmp_path, "relu6")
    clips = sum(n.op_type == "Clip" for n in onnx.load(str(plain)).graph.node)
    out = tmp_path / "equalised.onnx"
    info = equalise(plain, out)
    graph = onnx.load(str(out)).graph
    assert info["relu6_replaced"] > 0 and sum(n.op_type == "Relu" for n in graph.node) == info["relu6_replaced"]
    assert sum(n.op_type == "Clip" for n in graph.node) == clips - info["relu6_replaced"]  # the others stay ReLU6
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_pairs_skip_a_conv_whose_output_also_feeds_something_else(tmp_path):
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 1)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(pixel_values))
            return self.c(torch.relu(self.b(h))) + h  # a's output also feeds the add

    path = ONNX.export(Branchy().eval(), {"pixel_values": torch.randn(2, 3, 8, 8)}, IO, tmp_path / "branchy.onnx", None)
    pairs = conv_pairs(onnx.load(str(path)))
    assert [(p["first"], p["second"]) for p in pairs] == [("b.weight", "c.weight")]


def test_bias_correction_removes_the_mean_shift_that_weight_rounding_causes(tmp_path):
    """After bias correction the int8 file's mean error per logit over the calibration
    inputs is smaller than before, and only the biases changed."""
    from adapt.export_stage import DeriveContext
    from adapt.exporters.onnx_exporter import _StaticInt8
    from adapt.plan import validate_options

    plain = export(tmp_path, "relu")
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(32)]
    ctx = DeriveContext(tmp_path, {}, "int8", False, 1.0, calibration, lambda p: 1.0, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1}, validate_options(ONNX, "e", {}, "e"))
    static = _StaticInt8(plain, ctx, baseline=1.0)
    first, corrected, second = tmp_path / "first.onnx", tmp_path / "corrected.onnx", tmp_path / "second.onnx"
    static.quantise(plain, first, 32)
    assert correct_bias(plain, first, calibration, corrected) >= 10
    static.quantise(corrected, second, 32)
    x = np.concatenate([c["pixel_values"] for c in calibration])
    want = run(plain, x)
    before, after = (np.abs((run(f, x) - want).mean(axis=0)).mean() for f in (first, second))
    assert after < 0.8 * before, (before, after)
    old, new = ({i.name: numpy_helper.to_array(i) for i in onnx.load(str(f)).graph.initializer} for f in (plain, corrected))
    conv_weights = {n.input[1] for n in onnx.load(str(plain)).graph.node if n.op_type == "Conv"}
    assert all(np.array_equal(old[w], new[w]) for w in conv_weights)


@pytest.mark.parametrize("act", ["relu"])
def test_the_int8_gate_tries_equalisation_before_leaving_layers_in_fp32(tmp_path, act):
    from adapt.export_stage import DeriveContext
    from adapt.plan import validate_options

    plain = export(tmp_path, act)
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(plain.read_bytes())
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]

    def score(candidate: Path) -> float:  # scripted: only the equalised attempt (the third) keeps the accuracy
        return 0.9 if candidate.name in ("model.optimized.onnx", "model.int8.try3.onnx") or "equalised" in candidate.name else 0.5

    ctx = DeriveContext(tmp_path, {}, "int8", False, 0.01, calibration, score, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1}, validate_options(ONNX, "e", {"calibration_examples": 4, "calibration_method": "minmax"}, "e"))
    derived = ONNX.derive(model_path, ctx)
    labels = [a["attempt"] for a in derived.attempts]
    assert len(labels) == 3 and "cross-layer equalisation and bias correction" in labels[2]
    third = derived.attempts[2]
    assert third["passed"] and third["equalisation"]["pairs"] >= 10 and third["equalisation"]["fp32_val_score"] == 0.9
    assert derived.info["int8_remedy"] == labels[2] and derived.deployable.name == "model.int8.try3.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["relu.onnx", "model.onnx", "model.optimized.onnx", "model.int8.onnx", "model.int8.try2.onnx", "model.int8.try3.onnx"])


def test_where_relu6_to_relu_costs_accuracy_only_the_exact_pairs_are_equalised(tmp_path):
    """EfficientNet-Lite0 lost 30 points of fp32 validation accuracy when its ReLU6s
    between equalised pairs became ReLUs: then the attempt equalises only the pairs that
    keep the function (ReLU or nothing between them), and says so."""
    from adapt.export_stage import DeriveContext
    from adapt.plan import validate_options

    plain = export(tmp_path, "relu6")
    clips = sum(n.op_type == "Clip" for n in onnx.load(str(plain)).graph.node)

    def score(candidate: Path) -> float:  # scripted: a graph that lost ReLU6s scores 0.3
        kept = sum(n.op_type == "Clip" for n in onnx.load(str(candidate)).graph.node)
        return 0.3 if "equalised" in candidate.name and kept < clips else 0.9

    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    ctx = DeriveContext(tmp_path, {}, "int8", False, 0.01, calibration, score, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1}, validate_options(ONNX, "e", {}, "e"))
    from adapt.exporters.onnx_exporter import _StaticInt8

    info = _StaticInt8(plain, ctx, baseline=score(plain)).equalised(4)(tmp_path / "model.int8.try3.onnx")["equalisation"]
    assert info["relu6_to_relu_val_score"] == 0.3 and info["relu6_replaced"] == 0 and info["fp32_val_score"] == 0.9
    assert (tmp_path / "model.int8.try3.onnx").exists() and not list(tmp_path.glob("*equalised*"))
