"""The exported detection graph returns final boxes: decoding and class-aware NMS run inside
ONNX Runtime and give what the task's PyTorch decoding gives, for every image of a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.host import make_host
from adapt.interfaces import OnnxIO


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    host = make_host()
    backbone, task, exporter = host.backbones.get("mobilenet"), host.tasks.get("object-detection"), host.exporters.get("onnx")
    options = backbone.options_schema(image_size=64, head={"channels": 16, "depth": 1})
    torch.manual_seed(0)
    built = task.wrap_model(backbone.build("object-detection", 3, checkpoint=None, arch="mobilenetv3_small_050", options=options), 3)  # the task puts its head on the features
    with torch.no_grad():  # confident scores, so that many boxes survive the threshold and NMS has work to do
        built.model.head.classes.bias.fill_(2.0)
        built.model.head.centerness.bias.fill_(2.0)
        built.model.head.boxes.bias.normal_(0.5, 0.5)
    model = built.model.eval()
    module, names = task.graph_outputs(model)
    io = backbone.onnx_io(built)
    io = OnnxIO(io.input_names, (*io.output_names, *names), {**io.dynamic_axes, **{n: {0: "detections"} for n in names}})
    path = exporter.export(module, backbone.example_inputs(built, 2), io, tmp_path_factory.mktemp("det") / "model.onnx", None)
    return model, task, exporter.load_outputs(path), names


def test_the_graph_has_the_final_outputs_by_name(exported):
    _, _, run, names = exported
    outputs = run({"pixel_values": np.zeros((1, 3, 64, 64), dtype=np.float32)})
    assert list(outputs) == ["logits", *names] == ["logits", "boxes", "scores", "labels", "batch_index"]
    assert outputs["boxes"].shape[1] == 4 and len(outputs["boxes"]) == len(outputs["scores"]) == len(outputs["labels"]) > 0


@pytest.mark.parametrize("batch", [1, 3])
def test_in_graph_detections_equal_the_tasks_decoding(exported, batch):
    model, task, run, _ = exported
    pixels = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        logits = model(pixels)
    expected, _ = task.decode(logits, torch.full((batch, 1, 5), -100.0))
    outputs = run({"pixel_values": pixels.numpy()})
    got = task.final_predictions(outputs, {"pixel_values": pixels.numpy()})
    assert len(got) == batch and all(len(e["boxes"]) == len(g["boxes"]) > 5 for e, g in zip(expected, got))
    for e, g in zip(expected, got):
        assert e["labels"] == g["labels"]
        np.testing.assert_allclose(g["boxes"], e["boxes"], atol=1e-4)
        np.testing.assert_allclose(g["scores"], e["scores"], atol=1e-5)
    assert task.agreement(expected, got) == 1.0
    assert np.abs(outputs["boxes"]).max() > 1.0  # the graph's boxes are in input pixels, decode's in fractions
