"""The onnx exporter on real ONNX Runtime sessions: parity, dynamic axes, no extra
nodes after a folded merge, inline adapters in one graph, the int8 gate, .ort."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from adapt.export_stage import DeriveContext
from adapt.plugins.transformers.hf_text import TextOptions
from adapt.host import make_host
from adapt.plan import validate_options
from adapt.plugins.timm.mobilenet import MobileNetOptions

from tests.tiny import bert_checkpoint

HOST = make_host(autoload=False)
ONNX = HOST.exporters.get("onnx")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(bert_checkpoint(tmp_path_factory.mktemp("bert") / "bert"))


def build(kind, bert_dir):
    torch.manual_seed(0)
    if kind == "bert":
        backbone = HOST.backbones.get("bert")
        return backbone, backbone.build("text-classification", 3, checkpoint=bert_dir, arch=None, options=TextOptions(max_length=16))
    backbone = HOST.backbones.get("mobilenet")
    return backbone, backbone.build("image-classification", 3, checkpoint=None, arch="mobilenetv2_050", options=MobileNetOptions(image_size=32))


def adapt_and_perturb(backbone, built, method_name, raw):
    method = HOST.methods.get(method_name)
    method.apply(built, validate_options(method, "m", raw, "m"), backbone.default_targets(method_name))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    built.model.eval()
    return method.merge(built)


def other_inputs(kind):
    """A batch size and sequence length the export never saw."""
    if kind == "bert":
        return {"input_ids": torch.randint(5, 60, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long), "token_type_ids": torch.zeros(3, 11, dtype=torch.long)}
    return {"pixel_values": torch.randn(5, 3, 32, 32)}


def op_histogram(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("kind", ["bert", "mobilenet"])
@pytest.mark.parametrize("method_name, raw", [("lora", {"r": 4}), ("adapters", {"reduction": 4, "activation": "gelu"}), ("adapters", {"reduction": 4, "activation": "none"})])
def test_export_reproduces_the_merged_model_on_new_shapes(kind, method_name, raw, bert_dir, tmp_path):
    backbone, built = build(kind, bert_dir)
    merged = adapt_and_perturb(backbone, built, method_name, raw)
    path = ONNX.export(merged.model, backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "model.onnx", None)
    inputs = other_inputs(kind)
    with torch.no_grad():
        expected = merged.model(**inputs).numpy()
    got = ONNX.load(path)({k: v.numpy() for k, v in inputs.items()})
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert [i.name for i in onnx.load(str(path)).graph.input] == list(backbone.onnx_io(built).input_names)


@pytest.mark.parametrize("kind", ["bert", "mobilenet"])
def test_a_folded_merge_leaves_no_extra_nodes(kind, bert_dir, tmp_path):
    backbone, base = build(kind, bert_dir)
    base.model.eval()
    base_path = ONNX.export(base.model, backbone.example_inputs(base, 2), backbone.onnx_io(base), tmp_path / "base.onnx", None)
    _, built = build(kind, bert_dir)
    merged = adapt_and_perturb(backbone, built, "lora", {"r": 4})
    merged_path = ONNX.export(merged.model, backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "merged.onnx", None)
    assert op_histogram(merged_path) == op_histogram(base_path)


def test_inline_adapters_stay_in_the_one_graph(bert_dir, tmp_path):
    backbone, built = build("bert", bert_dir)
    merged = adapt_and_perturb(backbone, built, "adapters", {"reduction": 4, "activation": "relu", "placement": "houlsby"})
    assert not merged.folded
    path = ONNX.export(merged.model, backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "model.onnx", None)
    _, base = build("bert", bert_dir)
    base_path = ONNX.export(base.model.eval(), backbone.example_inputs(base, 2), backbone.onnx_io(base), tmp_path / "base.onnx", None)
    # 2 layers x 2 places: each adapter adds one Relu and two MatMul+Add pairs (and its residual Add)
    assert op_histogram(path)["Relu"] - op_histogram(base_path)["Relu"] == 4
    assert len(onnx.load(str(path)).graph.output) == 1


def test_the_int8_gate_tries_every_remedy_and_keeps_fp32_when_all_fail(tmp_path):
    backbone, built = build("mobilenet", "")
    merged = adapt_and_perturb(backbone, built, "freeze", {})
    path = ONNX.export(merged.model, backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "model.onnx", None)
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    scored = []

    def score(candidate: Path) -> float:  # scripted: fp32 scores 0.9, every int8 file 0.5
        scored.append(candidate.name)
        return 0.5 if "int8" in candidate.name else 0.9

    ctx = DeriveContext(tmp_path, {}, "int8", True, 0.01, calibration, score, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1}, validate_options(ONNX, "e", {"calibration_examples": 4}, "e"))
    derived = ONNX.derive(path, ctx)
    assert [a["passed"] for a in derived.attempts] == [False, False, False, False]
    assert "cross-layer equalisation" in derived.attempts[2]["attempt"] and derived.attempts[2]["equalisation"]["pairs"] > 0
    assert "first conv, depthwise convs and head in fp32" in derived.attempts[3]["attempt"]
    assert derived.info["int8_remedy"] is None
    assert derived.deployable.name == "model.optimized.onnx"
    assert any("not recommended" in note for note in derived.notes)
    assert (tmp_path / "model.int8.onnx").exists()
    names = [f.name for f in derived.forms]
    assert names[:2] == ["onnx_optimized", "onnx_int8"] and "ort_mobile" in names
    assert (tmp_path / "mobile" / "model.ort").exists() and (tmp_path / "mobile" / "model.required_operators.config").exists()
    # the last attempt really keeps the depthwise convs in fp32
    third = onnx.load(str(tmp_path / "model.int8.try4.onnx"))
    float_convs = [n for n in third.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    inputs_from_dq = {o for n in third.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert float_convs and not all(n.input[0] in inputs_from_dq for n in float_convs)


def test_the_int8_gate_recommends_a_passing_attempt(tmp_path, bert_dir):
    backbone, built = build("bert", bert_dir)
    merged = adapt_and_perturb(backbone, built, "lora", {"r": 4})
    path = ONNX.export(merged.model, backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "model.onnx", None)
    ctx = DeriveContext(tmp_path, backbone.onnx_optimizer_options(built), "int8", False, 0.01, [], lambda p: 0.8, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1})
    derived = ONNX.derive(path, ctx)
    assert derived.deployable.name == "model.int8.onnx" and derived.attempts[0]["passed"]
    assert derived.info["fusions"].get("Attention") == 2  # both layers' attention fused
    assert derived.attempts[0]["bytes"] < path.stat().st_size


def test_onnx_passes_the_shipped_conformance_check(tmp_path, bert_dir):
    from adapt.testing import check_exporter

    backbone, built = build("bert", bert_dir)
    merged = adapt_and_perturb(backbone, built, "lora", {"r": 2})
    check_exporter(ONNX, model=merged.model, inputs=backbone.example_inputs(built, 3), io=backbone.onnx_io(built), path=tmp_path / "m.onnx")


def test_static_int8_leaves_the_shape_arithmetic_of_same_padding_exact(tmp_path):
    """The EfficientNet-Lite0 collapse (98% -> 21%): timm's tf_* models compute "same"
    padding from the input's shape inside the graph, and ONNX Runtime's static quantiser
    put QDQ pairs on the float steps and the Concat of that arithmetic, so every strided
    convolution was padded wrongly. int8 must agree with fp32 on the calibration inputs
    themselves (this random EfficientNet-Lite0 agreed on 0 of 16 before the fix)."""
    import timm

    from adapt.exporters.onnx_exporter import shape_nodes
    from adapt.interfaces import OnnxIO

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=4).eval()
    # height and width dynamic: the padding stays computed in the graph (a fixed size pads by constants, below)
    io = OnnxIO(("pixel_values",), ("logits",), {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    path = ONNX.export(model, {"pixel_values": torch.randn(2, 3, 64, 64)}, io, tmp_path / "model.onnx", None)
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)} for _ in range(16)]
    assert {"Shape", "Concat"} <= {n.split("/")[-1].split("_")[0] for n in shape_nodes(path)}
    ctx = DeriveContext(tmp_path, {}, "int8", False, 1.0, calibration, lambda p: 1.0, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1}, validate_options(ONNX, "e", {"calibration_examples": 16}, "e"))
    ONNX.derive(path, ctx)
    fp32, int8 = (ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]) for name in ("model.onnx", "model.int8.onnx"))
    inputs = np.concatenate([c["pixel_values"] for c in calibration])
    want, got = fp32.run(None, {"pixel_values": inputs})[0], int8.run(None, {"pixel_values": inputs})[0]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9 and np.abs(got - want).max() <= 0.25 * np.abs(want).max(), (np.abs(got - want).max(), np.abs(want).max())
    quantised = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    pads = {n.input[1] for n in quantised.node if n.op_type == "Pad"}
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] in pads for n in quantised.node), "a Pad's pads come through a DequantizeLinear"


def test_a_fixed_image_size_exports_same_padding_as_constants_with_the_same_outputs(tmp_path):
    """timm's Conv2dSame computes its padding from the input's shape; with height and
    width fixed in the graph (how adapt exports images) it is a constant Pad: no shape
    arithmetic left, the same logits, also at a size whose padding is asymmetric."""
    import timm

    from adapt.interfaces import OnnxIO

    from adapt.plugins.timm.mobilenet import MobileNet

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=4).eval()
    io = OnnxIO(("pixel_values",), ("logits",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
    for size in (64, 67):
        inputs = {"pixel_values": torch.randn(2, 3, size, size)}
        path = ONNX.export(MobileNet().export_form(model, inputs, io), inputs, io, tmp_path / f"model{size}.onnx", None)
        ops = op_histogram(path)
        assert not {"Shape", "Ceil", "Gather"} & set(ops) and ops["Pad"] == 5, ops
        x = torch.randn(3, 3, size, size)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    assert type(model.conv_stem).__name__ == "Conv2dSame"  # the model itself is left as it was


@pytest.mark.parametrize("target", ["auto", "arm"])
def test_static_int8_activation_type_is_measured_for_this_cpu_and_stated_for_another(tmp_path, target):
    """U8S8 or S8S8: both are timed where the export is for this machine's CPU family and
    the faster is used; for another family (arm from this x86 machine) S8S8, unmeasured."""
    import platform

    backbone, built = build("mobilenet", "")
    path = ONNX.export(built.model.eval(), backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "model.onnx", None)
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    timed = {}

    def latency(candidate: Path) -> dict:  # scripted timings: U8S8 twice as fast as S8S8
        timed[candidate.name] = 2.0 if candidate.name == "model.int8-activations.onnx" else 1.0
        return {"median": timed[candidate.name], "p90": timed[candidate.name], "threads": 1}

    ctx = DeriveContext(tmp_path, {}, "int8", False, 1.0, calibration, lambda p: 1.0, latency, validate_options(ONNX, "e", {"calibration_examples": 4}, "e"), target=target)
    derived = ONNX.derive(path, ctx)
    choice = derived.info["int8_activations"]
    here = "arm" if platform.machine().lower().startswith(("arm", "aarch")) else "x86"
    if target == "auto" or target == here:
        assert choice["chosen"] == "uint8" and choice["latency_ms"] == {"int8": 2.0, "uint8": 1.0} and isinstance(choice["cpu_flags"], list)
        assert {"model.int8-activations.onnx", "model.uint8-activations.onnx"} <= set(timed) and not (tmp_path / "model.uint8-activations.onnx").exists()
    else:
        assert choice["chosen"] == "int8" and "not measured" in choice["why"] and "model.uint8-activations.onnx" not in timed
        assert derived.info["int8_format"]["chosen"] == "qdq" and "the export is for arm" in derived.info["int8_format"]["why"] and "model.qoperator-format.onnx" not in timed
    weights = ", 7-bit weights" if choice["reduce_range"] else ""  # 7-bit on a CPU whose int8 products saturate
    assert f"({choice['chosen']} activations, minmax ranges{weights})" in derived.attempts[0]["attempt"]
    quantised = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    zero_points = {t.data_type for t in quantised.initializer if t.name.endswith("zero_point")}
    assert (onnx.TensorProto.UINT8 in zero_points) == (choice["chosen"] == "uint8"), zero_points  # weights stay int8; activations say the type


def test_the_int8_format_is_measured_too_and_qoperator_files_hold_qlinear_operators(tmp_path):
    """QDQ or QOperator, timed like the activation type (scripted here: QOperator faster)."""
    backbone, built = build("mobilenet", "")
    path = ONNX.export(built.model.eval(), backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "model.onnx", None)
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]

    def latency(candidate: Path) -> dict:
        ms = 1.0 if candidate.name == "model.qoperator-format.onnx" else 2.0
        return {"median": ms, "p90": ms, "threads": 1}

    ctx = DeriveContext(tmp_path, {}, "int8", False, 1.0, calibration, lambda p: 1.0, latency, validate_options(ONNX, "e", {"calibration_examples": 4, "calibration_method": "minmax"}, "e"))
    derived = ONNX.derive(path, ctx)
    assert derived.info["int8_format"] == {"chosen": "qoperator", "latency_ms": {"qdq": 2.0, "qoperator": 1.0}, "why": "more than 10% faster at batch 1 on this CPU"}
    assert derived.attempts[0]["attempt"].startswith("static QOperator per-channel")
    assert "QLinearConv" in op_histogram(tmp_path / "model.int8.onnx") and not list(tmp_path.glob("*-format.onnx"))


@pytest.mark.parametrize("prefer", ["size", "speed"])
def test_prefer_speed_deploys_fp32_where_int8_is_slower_and_size_keeps_the_smaller_file(tmp_path, prefer):
    """At tiny inputs int8 can be slower than fp32: `export.prefer` decides, and says so."""
    backbone, built = build("mobilenet", "")
    path = ONNX.export(built.model.eval(), backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "model.onnx", None)
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]

    def latency(candidate: Path) -> dict:  # scripted: every int8 file slower than fp32
        ms = 2.0 if "int8" in candidate.name else 1.0
        return {"median": ms, "p90": ms, "threads": 1}

    options = validate_options(ONNX, "e", {"calibration_examples": 4, "calibration_method": "percentile"}, "e")
    ctx = DeriveContext(tmp_path, {}, "int8", False, 1.0, calibration, lambda p: 1.0, latency, options, prefer=prefer)
    derived = ONNX.derive(path, ctx)
    assert "percentile ranges" in derived.attempts[0]["attempt"] and derived.attempts[0]["passed"]
    if prefer == "size":
        assert derived.deployable.name == "model.int8.onnx" and any("slower than fp32" in n for n in derived.notes)
    else:
        assert derived.deployable.name == "model.optimized.onnx" and any("export.prefer: speed" in n for n in derived.notes)
        assert derived.info["prefer_speed"] == {"model.optimized.onnx": 1.0, "model.int8.onnx": 2.0}


def test_a_failed_activation_probe_falls_back_to_s8s8_and_leaves_no_file(tmp_path):
    from adapt.exporters.onnx_exporter import _choose_activations

    plain = tmp_path / "model.onnx"

    def works(out: Path) -> None:
        out.write_bytes(b"probe")

    def fails(out: Path) -> None:
        out.write_bytes(b"half a file")
        raise RuntimeError("quantiser broke")

    ctx = DeriveContext(tmp_path, {}, "int8", False, 1.0, [], lambda p: 1.0, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1})
    choice = _choose_activations({"int8": works, "uint8": fails}, plain, ctx)
    assert choice["chosen"] == "int8" and "quantiser broke" in choice["why"]
    assert not list(tmp_path.iterdir())  # both probes removed, the failed one too


def test_calibration_auto_measures_each_calibrator_and_every_attempt_uses_the_best(tmp_path):
    """`calibration_method: auto` (the default) makes one int8 file per calibrator and
    scores each on validation; here the score is scripted (percentile best) to check
    the choice, the probes' removal and the report entry; real scores are in bench/."""
    backbone, built = build("mobilenet", "")
    path = ONNX.export(built.model.eval(), backbone.example_inputs(built, 2), backbone.onnx_io(built), tmp_path / "model.onnx", None)
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    scored = []

    def score(candidate: Path) -> float:
        scored.append(candidate.name)
        return {"model.percentile-ranges.onnx": 0.9, "model.entropy-ranges.onnx": 0.7}.get(candidate.name, 0.8)

    def latency(candidate: Path) -> dict:
        return {"median": 1.0, "p90": 1.0, "threads": 1}

    ctx = DeriveContext(tmp_path, {}, "int8", False, 1.0, calibration, score, latency, validate_options(ONNX, "e", {"calibration_examples": 4}, "e"))
    derived = ONNX.derive(path, ctx)
    chosen = derived.info["int8_calibration"]
    assert chosen["chosen"] == "percentile" and chosen["val_score"] == {"minmax": 0.8, "percentile": 0.9, "entropy": 0.7}
    assert {"model.minmax-ranges.onnx", "model.percentile-ranges.onnx", "model.entropy-ranges.onnx"} <= set(scored)
    assert not list(tmp_path.glob("*-ranges.onnx"))
    assert "percentile ranges" in derived.attempts[0]["attempt"]
