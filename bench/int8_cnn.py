"""int8 for the mobile CNNs at a real input size: MobileNetV2 and EfficientNet-Lite0
(real ImageNet weights) fine-tuned with LoRA on the digits at 224 px, one `adapt run`
each, one after another. For every run it prints each int8 attempt (validation score,
drop, size, batch-1 latency against the fp32 file, both measured by the run's export
taking turns), which remedy won, the test accuracy of fp32 and of the deployed file,
and the stage timings. docs/results.md and docs/benchmarks.md ("int8 for the mobile
CNNs at 224 px") are written from this output.

Usage: python bench/int8_cnn.py [--out DIR] [--image-size N] [--epochs N] [--set KEY=VALUE ...]
The last line printed is one JSON object with every run and the machine (CPU model and flags).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from adapt.latency import machine

LORA = "method={name: lora, options: {r: 4, alpha: 8}}"
NETWORKS = {
    "mobilenetv2": ["examples/digits-mobilenetv2-lora.yaml"],
    "efficientnet-lite0": ["examples/digits-efficientnet-lite0-freeze.yaml", LORA],
    # the remedies at work: at 64 px, S8S8 activations (export.target: arm, as for a phone)
    # lost 4-5 points on MobileNetV2 before equalisation and QAT existed
    "mobilenetv2-s8s8-64px": ["examples/digits-mobilenetv2-lora.yaml", "backbone.options.image_size=64", "train.epochs=5", "export.target=arm", "export.qat={epochs: 1}"],
}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the tables need from one run's report.json."""
    onnx = report["export"]["onnx"]
    metrics = report["metrics"]
    return {
        "attempts": [{k: a.get(k) for k in ("attempt", "file", "val_score", "val_drop", "passed", "bytes", "error")} | {"latency_ms": (a.get("latency_ms") or {}).get("median")} for a in onnx.get("attempts", [])],
        "calibration": onnx.get("int8_calibration"),
        "activations": {k: v for k, v in (onnx.get("int8_activations") or {}).items() if k != "flags"},
        "remedy": onnx.get("int8_remedy"),
        "equalisation": next((a["equalisation"] for a in onnx.get("attempts", []) if "equalisation" in a), None),
        "qat": next((a["qat"] for a in onnx.get("attempts", []) if "qat" in a), None),
        "test": {form: m.get("accuracy") for form, m in metrics.items() if isinstance(m, dict) and "accuracy" in m},
        "deployable": report.get("deployable"),
        "latency_ms": {form: {k: v.get(k) for k in ("median", "spread")} for form, v in report.get("latency_ms", {}).items() if isinstance(v, dict)},
        "timings": report.get("timings"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("networks", nargs="*", default=list(NETWORKS), help=f"any of {list(NETWORKS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/int8-cnn"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    adapt = str(Path(sys.executable).with_name("adapt"))
    results = {}
    for name in args.networks:
        if name not in NETWORKS:
            parser.error(f"unknown network {name!r}; choose from {list(NETWORKS)}")
        config, *extra = NETWORKS[name]
        folder = args.out / name
        overrides = [f"output_dir={folder}", f"backbone.options.image_size={args.image_size}", f"train.epochs={args.epochs}", *extra, *args.overrides]
        subprocess.run([adapt, "run", config, "--overwrite", *[x for o in overrides for x in ("--set", o)]], check=True)
        report = json.loads(next(folder.glob("*/report.json")).read_text())
        results[name] = summary(report)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
    print(json.dumps({"runs": results, "image_size": args.image_size, "epochs": args.epochs, "machine": machine()}))


if __name__ == "__main__":
    main()
