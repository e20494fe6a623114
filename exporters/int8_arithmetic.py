"""Which int8 settings are numerically safe on the CPU an export is for.

ONNX Runtime's int8 products on x86 CPUs without VNNI (AVX2, AVX-512 before
Cascade Lake) multiply pairs of uint8 x int8 values and add each pair into a 16-bit
lane (``VPMADDUBSW``); two products of 255 x 127 make 64,770, past 32,767, and
the sum saturates. int8 activations take the same path after an offset. With 7-bit
weights (ONNX Runtime's ``reduce_range``: [-64, 63]) no pair can pass 32,767.
VNNI CPUs (``VPDPBUSD`` adds into 32 bits) and ARM have no such limit.

Whether a machine saturates is not read from a flag: :func:`saturation_probe` runs
ONNX Runtime's own kernels on worst-case inputs (every activation and weight at its
extreme) and compares with the exact integer answer, so it tells the truth on any
CPU, including one that an emulator or a hypervisor describes wrongly. The
settings an export uses follow from the CPU it is for (``export.target``):

* ``auto``: this machine, as its probe says;
* ``x86``: any x86 CPU, VNNI or not: 7-bit weights, safe everywhere;
* ``x86-vnni``: x86 CPUs with VNNI: 8-bit weights;
* ``arm``: 8-bit weights.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

ACTIVATIONS = ("int8", "uint8")
#: Per-activation-type ``reduce_range`` for targets that do not saturate.
FULL_RANGE = {"int8": False, "uint8": False}
SEVEN_BIT = {"int8": True, "uint8": True}


def machine_family() -> str:
    """``arm`` or ``x86``: the family of the CPU this process runs on."""
    return "arm" if platform.machine().lower().startswith(("arm", "aarch")) else "x86"


@functools.cache
def saturation_probe() -> dict[str, Any]:
    """For each activation type: does a 1x1 QDQ convolution (ONNX Runtime fuses it into
    its int8 convolution) give the exact answer on this CPU with 8-bit weights, and with
    7-bit weights? ``{"int8": {"8bit": ok, "7bit": ok, "got": .., "want": ..}, ...}``."""
    found: dict[str, Any] = {}
    for activation in ACTIVATIONS:
        row: dict[str, Any] = {}
        for bits, weight in (("8bit", 127), ("7bit", 63)):
            got, want = _worst_case_conv(activation, weight)
            row[bits] = abs(got - want) <= 1e-3 * want
            if bits == "8bit":
                row.update(got=got, want=want)
        found[activation] = row
    return found


def settings(target: str) -> dict[str, Any]:
    """The ``reduce_range`` per activation type that is exact on ``target``'s CPUs, whether
    this machine can time the candidates (it is of the target's family), and why."""
    here = machine_family()
    family = here if target == "auto" else target.split("-")[0]
    measurable = family == here
    if target == "auto" and here == "x86":
        probe = saturation_probe()
        reduce = {a: not probe[a]["8bit"] for a in ACTIVATIONS}
        saturated = [
            f"{'U8S8' if a == 'uint8' else 'S8S8'} gave {probe[a]['got']:.0f} for {probe[a]['want']:.0f}"
            for a in ACTIVATIONS
            if reduce[a]
        ]
        why = (
            f"this CPU's int8 products saturate with 8-bit weights ({'; '.join(saturated)}): 7-bit weights "
            "(reduce_range) for those"
            if saturated
            else "this CPU's int8 products are exact with 8-bit weights (probe)"
        )
        return {"reduce_range": reduce, "measurable": True, "why": why, "probe": probe}
    if target == "x86":
        return {
            "reduce_range": dict(SEVEN_BIT),
            "measurable": measurable,
            "why": (
                "export.target x86: any x86 CPU, with or without VNNI, "
                "so 7-bit weights (reduce_range), which cannot saturate"
            ),
        }
    if target == "x86-vnni":
        return {
            "reduce_range": dict(FULL_RANGE),
            "measurable": measurable,
            "why": "export.target x86-vnni: 8-bit weights (VNNI adds products in 32 bits)",
        }
    return {
        "reduce_range": dict(FULL_RANGE),
        "measurable": measurable,
        "why": f"export.target {target} ({family}): 8-bit weights (ONNX Runtime's ARM kernels do not saturate)",
    }


def _worst_case_conv(activation: str, weight: int, channels: int = 32) -> tuple[float, float]:
    """One QDQ 1x1 convolution with every quantised input at its maximum and every weight
    at ``weight``: the output ONNX Runtime computes on this CPU, and the exact one."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    unsigned = activation == "uint8"
    itype, top = (np.uint8, 255) if unsigned else (np.int8, 127)
    want = float(channels * top * weight)
    tensors: dict[str, np.ndarray] = {
        "sx": np.array(1.0, np.float32),
        "zx": np.array(0, itype),
        "wq": np.full((8, channels, 1, 1), weight, np.int8),
        "sw": np.ones(8, np.float32),
        "zw": np.zeros(8, np.int8),
        "sy": np.array(want / 100.0, np.float32),
        "zy": np.array(0, itype),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "sy", "zy"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "saturation_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": np.full((1, channels, 4, 4), float(top), np.float32)})[0]
    return float(got.max()), want
