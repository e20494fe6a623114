"""The TorchScript exporter passes adapt's exporter contract (adapt.testing.check_exporter)
on a real built-in backbone: the file it writes runs and matches the model."""

from __future__ import annotations

import torch

import adapt_torchscript
from adapt.testing import check_exporter, make_test_host


def test_the_host_finds_the_exporter():
    assert make_test_host(adapt_torchscript).exporters.get("torchscript").suffix == ".pt"


def test_mobilenet_exports_with_parity(tmp_path):
    host = make_test_host(adapt_torchscript)
    backbone = host.backbones.get("mobilenet")
    options = backbone.options_schema(image_size=32)
    built = backbone.build("image-classification", 3, checkpoint=None, arch="mobilenetv3_small_050", options=options)
    inputs = backbone.example_inputs(built, batch_size=2)
    for freeze in (True, False):
        exporter = host.exporters.get("torchscript")
        path = check_exporter(
            exporter,
            model=built.model,
            inputs=inputs,
            io=backbone.onnx_io(built),
            path=tmp_path / f"model-{freeze}.pt",
            options=adapt_torchscript.TorchScriptOptions(freeze=freeze),
        )
        assert path.stat().st_size > 0
    batch_of_five = {k: torch.cat([v] * 3)[:5] for k, v in inputs.items()}  # traced with batch 2, run with 5
    got = host.exporters.get("torchscript").load(path)({k: v.numpy() for k, v in batch_of_five.items()})
    assert got.shape == (5, 3)
