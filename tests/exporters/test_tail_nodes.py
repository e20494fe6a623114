"""Static int8 keeps a graph's tail in fp32: the nodes after its last weighted layer (a
detector's box decoding and NMS) gain nothing from int8 and lose accuracy in it."""

from __future__ import annotations

import torch
from torch import nn

from adapt.exporters.onnx_exporter import tail_nodes


class Decoder(nn.Module):
    """A conv, a linear layer, then cheap arithmetic on their outputs (the tail)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.linear = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.conv(x)).mean(dim=(2, 3))
        out = self.linear(pooled)
        return torch.cat([torch.exp(out[:, :2]) * 8.0, torch.sigmoid(out[:, 2:])], dim=1)


def test_only_nodes_after_the_last_weighted_layer_are_the_tail(tmp_path):
    import onnx

    path = tmp_path / "m.onnx"
    torch.onnx.export(Decoder().eval(), (torch.randn(1, 3, 8, 8),), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    graph = onnx.load(str(path)).graph
    kinds = {n.name: n.op_type for n in graph.node}
    tail = tail_nodes(path)
    assert {kinds[n] for n in tail} >= {"Exp", "Sigmoid", "Concat", "Mul"}
    assert not {kinds[n] for n in tail} & {"Conv", "Gemm", "MatMul", "Relu", "ReduceMean"}
    last_weighted = max(i for i, n in enumerate(graph.node) if n.op_type in ("Gemm", "MatMul"))
    assert all(list(kinds).index(n) > last_weighted for n in tail)


def test_the_operators_a_reduced_build_needs_are_read_from_the_converters_config(tmp_path):
    from adapt.exporters.onnx_exporter import required_operators

    (tmp_path / "model.required_operators.config").write_text("# Generated from model/s:\n# - model.ort\nai.onnx;13;Conv,QuantizeLinear,DequantizeLinear\nai.onnx;11;TopK,NonMaxSuppression\ncom.microsoft;1;QLinearConv,QLinearAdd\n")
    assert required_operators(tmp_path) == {"ai.onnx 13": ["Conv", "DequantizeLinear", "QuantizeLinear"], "ai.onnx 11": ["NonMaxSuppression", "TopK"], "com.microsoft 1": ["QLinearAdd", "QLinearConv"]}
