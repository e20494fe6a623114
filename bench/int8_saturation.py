"""int8 on a CPU without VNNI: the saturation probe and its effect on a real network.

Prints this CPU's probe (adapt.exporters.int8_arithmetic.saturation_probe) and, for a
random EfficientNet-Lite0 at 64 px (the shape-arithmetic test's model), the largest
difference of int8 logits from fp32 on 16 calibration inputs for each export.target
setting, against the test's bound (a quarter of the largest fp32 logit).

Run it on the CPU in question, or on an emulated one (QEMU's user mode gives the
CPU ONNX Runtime sees, e.g. Haswell: AVX2, no AVX-512, no VNNI):

    qemu-x86_64 -cpu Haswell .venv/bin/python bench/int8_saturation.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def logits_gap(target: str, folder: Path) -> dict[str, float]:
    import numpy as np
    import onnxruntime as ort
    import timm
    import torch

    from adapt.export_stage import DeriveContext
    from adapt.exporters.onnx_exporter import OnnxExporter
    from adapt.interfaces import OnnxIO
    from adapt.plan import validate_options

    onnx = OnnxExporter()
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=4).eval()
    io = OnnxIO(("pixel_values",), ("logits",), {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    path = onnx.export(model, {"pixel_values": torch.randn(2, 3, 64, 64)}, io, folder / "model.onnx", None)
    rng = np.random.default_rng(0)
    calibration = [{"pixel_values": rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)} for _ in range(16)]
    options = validate_options(onnx, "e", {"calibration_examples": 16, "calibration_method": "minmax"}, "e")
    ctx = DeriveContext(folder, {}, "int8", False, 1.0, calibration, lambda p: 1.0, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1}, options, target=target)
    derived = onnx.derive(path, ctx)
    inputs = np.concatenate([c["pixel_values"] for c in calibration])
    fp32, int8 = (ort.InferenceSession(str(folder / n), providers=["CPUExecutionProvider"]) for n in ("model.onnx", "model.int8.onnx"))
    want, got = fp32.run(None, {"pixel_values": inputs})[0], int8.run(None, {"pixel_values": inputs})[0]
    activations = derived.info["int8_activations"]
    return {"max_abs_diff": round(float(np.abs(got - want).max()), 3), "bound": round(float(0.25 * np.abs(want).max()), 3), "label_agreement": float((got.argmax(1) == want.argmax(1)).mean()), "activations": activations["chosen"], "reduce_range": activations["reduce_range"]}


def main(targets: list[str]) -> None:
    from adapt.exporters.int8_arithmetic import saturation_probe

    print("probe:", json.dumps(saturation_probe()))
    for target in targets:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"export.target={target}:", json.dumps(logits_gap(target, Path(tmp))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["auto", "x86-vnni", "x86"])
