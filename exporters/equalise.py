"""Two int8 remedies for depthwise-separable CNNs that change weights, not the graph's
precision (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019):

* Cross-layer equalisation: for two convolutions joined by a ReLU (or by nothing),
  output channel i of the first is divided by s_i and input channel i of the second
  multiplied by it, with s_i = sqrt(r1_i / r2_i) so both channels' weight ranges become
  sqrt(r1_i r2_i). ReLU(x / s) * s = ReLU(x) for s > 0, so the fp32 function is the
  same; per-channel int8 then wastes less of its range on depthwise kernels whose
  channels differ by orders of magnitude. ReLU6 is not scale-equivariant: as in the
  paper, a ReLU6 between an equalised pair becomes a ReLU, which the caller scores.
* Bias correction: rounding the weights to int8 shifts each output channel's mean by
  sum(eps * E[x]), eps = W_int8 - W. Measured on calibration inputs (E[x] per input
  channel) and subtracted from the bias, then the file is quantised again.

Both work on ONNX files in place of the torch model, so any exported CNN can use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adapt.exporters import onnx_files

if TYPE_CHECKING:
    import onnx

_JOINS = {"Relu", "Clip"}


def equalise(source: Path, out: Path, sweeps: int = 20, relu6_to_relu: bool = True) -> dict[str, Any]:
    """Write ``source`` with every equalisable conv pair rescaled to ``out``; returns
    ``{"pairs", "relu6_replaced", "sweeps"}``. ``relu6_to_relu=False`` equalises only
    the pairs joined by a ReLU or by nothing, so the fp32 function stays exactly the same."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    _materialise(graph)
    weights = {init.name: init for init in graph.initializer}
    pairs = conv_pairs(model, through_clip=relu6_to_relu)
    arrays = {
        name: numpy_helper.to_array(weights[name]).astype(np.float64) for pair in pairs for name in _names(pair) if name
    }
    done = 0
    while done < sweeps:  # a conv in two pairs moves twice: repeat towards a fixed point
        done += 1
        if max((_rescale(arrays, pair) for pair in pairs), default=0.0) < 1e-3:
            break
    for name, array in arrays.items():
        weights[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    replaced = sum(_relu6_to_relu(pair["join"]) for pair in pairs if pair["join"] is not None)
    onnx_files.save(model, out)
    return {"pairs": len(pairs), "relu6_replaced": replaced, "sweeps": done}


def conv_pairs(model: onnx.ModelProto, through_clip: bool = True) -> list[dict[str, Any]]:
    """Conv -> (Relu | Clip with lower bound 0, if ``through_clip`` | nothing) -> Conv
    chains whose middle tensors feed nothing else, with weights held by one conv each,
    the second conv ungrouped or depthwise."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    uses = {name: len(nodes) for name, nodes in consumers.items()}

    def only(tensor: str) -> Any:
        nodes = consumers.get(tensor, [])
        return nodes[0] if len(nodes) == 1 and tensor not in outputs else None

    pairs = []
    for first in graph.node:
        if not _plain_conv(first, weights, uses):
            continue
        join = only(first.output[0])
        if (
            join is not None
            and join.op_type in _JOINS
            and _from_zero(join, weights)
            and (through_clip or join.op_type == "Relu")
        ):
            second = only(join.output[0])
        else:
            join, second = None, join
        if second is None or not _plain_conv(second, weights, uses) or second.input[0] != (join or first).output[0]:
            continue
        channels = weights[first.input[1]].dims[0]
        group = _attribute(second, "group", 1)
        if group not in (1, channels) or (group == 1 and weights[second.input[1]].dims[1] != channels):
            continue
        pairs.append(
            {
                "first": first.input[1],
                "bias": first.input[2] if len(first.input) > 2 else "",
                "second": second.input[1],
                "depthwise": group != 1,
                "join": join,
            }
        )
    return pairs


def correct_bias(fp32: Path, int8: Path, calibration: list[dict[str, Any]], out: Path) -> int:
    """Write ``fp32`` with each conv's bias corrected for the weight rounding that
    ``int8`` (a QDQ file quantised from ``fp32``) made; returns how many were corrected."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model, quantised = onnx.load(str(fp32)), onnx.load(str(int8))
    _materialise(model.graph)
    rounded = _dequantised_conv_weights(quantised)
    weights = {init.name: init for init in model.graph.initializer}
    convs = [
        node
        for node in model.graph.node
        if node.op_type == "Conv" and node.name in rounded and node.input[1] in weights
    ]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(node.input[0] for node in convs if node.input[0] not in known):
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    for feed in calibration:
        for name, value in zip(names, session.run(None, feed)):
            if value.ndim == 4:
                sums[name] = sums.get(name, 0) + value.mean(axis=(0, 2, 3))
    convs = [node for node in convs if node.input[0] in sums]  # image convs (NCHW inputs) only
    for node in convs:
        mean_input = sums[node.input[0]] / len(calibration)
        weight = numpy_helper.to_array(weights[node.input[1]])
        shift = _output_shift(rounded[node.name] - weight, mean_input, _attribute(node, "group", 1))
        _set_bias(model, node, weights, -shift)
    onnx_files.save(model, out)
    return len(convs)


def _materialise(graph: Any) -> None:
    """Constant nodes and Identity copies of initializers (the exporter shares equal
    tensors, such as two biases, through Identity) as initializers of their own, so each
    conv owns its weights and a Clip's bounds can be read."""
    from onnx import numpy_helper

    inits = {init.name: init for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in inits:
            tensor = numpy_helper.to_array(inits[node.input[0]])
        else:
            kept.append(node)
            continue
        inits[node.output[0]] = numpy_helper.from_array(tensor, node.output[0])
        graph.initializer.append(inits[node.output[0]])
    del graph.node[:]
    graph.node.extend(kept)


def _names(pair: dict[str, Any]) -> list[str]:
    return [pair["first"], pair["bias"], pair["second"]]


def _rescale(arrays: dict[str, np.ndarray], pair: dict[str, Any]) -> float:
    """Equalise one pair in place; returns the largest |log s_i| (0 when balanced)."""
    first, second = arrays[pair["first"]], arrays[pair["second"]]
    r1 = np.abs(first).reshape(first.shape[0], -1).max(axis=1)
    inputs = second if pair["depthwise"] else np.swapaxes(second, 0, 1)
    r2 = np.abs(inputs).reshape(inputs.shape[0], -1).max(axis=1)
    scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
    shape = (-1,) + (1,) * (first.ndim - 1)
    arrays[pair["first"]] = first / scale.reshape(shape)
    if pair["bias"]:
        arrays[pair["bias"]] = arrays[pair["bias"]] / scale
    arrays[pair["second"]] = second * (
        scale.reshape(shape) if pair["depthwise"] else scale.reshape((1, -1) + (1,) * (second.ndim - 2))
    )
    return float(np.abs(np.log(scale)).max()) if scale.size else 0.0


def _output_shift(error: np.ndarray, mean_input: np.ndarray, group: int) -> np.ndarray:
    """E[conv(x; error)] per output channel, x's mean per channel spread over the kernel."""
    per_group_in = error.shape[1]
    out_per_group = error.shape[0] // group
    summed = error.reshape(error.shape[0], per_group_in, -1).sum(axis=2)
    shift = np.empty(error.shape[0])
    for channel in range(error.shape[0]):
        start = (channel // out_per_group) * per_group_in
        shift[channel] = summed[channel] @ mean_input[start : start + per_group_in]
    return shift


def _set_bias(model: onnx.ModelProto, node: Any, weights: dict[str, Any], delta: np.ndarray) -> None:
    from onnx import numpy_helper

    if len(node.input) > 2 and node.input[2]:
        current = numpy_helper.to_array(weights[node.input[2]])
        weights[node.input[2]].CopyFrom(numpy_helper.from_array((current + delta).astype(np.float32), node.input[2]))
        return
    name = node.input[1] + ".corrected_bias"
    model.graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), name))
    if len(node.input) == 2:
        node.input.append(name)
    else:
        node.input[2] = name


def _dequantised_conv_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each Conv's weight as the QDQ file computes it: DequantizeLinear of the int8 initializer."""
    from onnx import numpy_helper

    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for node in model.graph.node:
        dq = producers.get(node.input[1]) if node.op_type == "Conv" else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        q = inits[dq.input[0]].astype(np.float64)
        scale = inits[dq.input[1]].astype(np.float64)
        zero = inits[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[_attribute(dq, "axis", 1)] = -1
        found[node.name] = (q - zero.reshape(shape)) * scale.reshape(shape)
    return found


def _plain_conv(node: Any, weights: dict[str, Any], uses: dict[str, int]) -> bool:
    return (
        node.op_type == "Conv"
        and len(node.input) > 1
        and node.input[1] in weights
        and uses.get(node.input[1], 0) == 1
        and (len(node.input) < 3 or not node.input[2] or (node.input[2] in weights and uses.get(node.input[2], 0) == 1))
    )


def _from_zero(node: Any, weights: dict[str, Any]) -> bool:
    """Relu, or a Clip whose lower bound is 0 (ReLU6 and the like)."""
    if node.op_type == "Relu":
        return True
    from onnx import numpy_helper

    bound = node.input[1] if len(node.input) > 1 else ""
    return bool(bound) and bound in weights and float(numpy_helper.to_array(weights[bound])) == 0.0


def _relu6_to_relu(node: Any) -> int:
    if node.op_type != "Clip":
        return 0
    node.op_type = "Relu"
    del node.input[1:]
    return 1


def _attribute(node: Any, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default
