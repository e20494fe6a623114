"""The object-detection target of issue 17, measured: MobileNetV2 (real ImageNet weights) +
LoRA + the FCOS head on the real-pixel detection set (adapt.plugins.detection.example_set), on this CPU.

Usage: python bench/detection.py [--out runs/bench-detection] [--images 1500] [--set KEY=VALUE ...]

Builds the data set (unless it is already in OUT/data), runs
examples/detection-mobilenetv2-lora.yaml on it with `adapt run`, and prints one JSON
object: training seconds, each form's test mAP@.5 and mAP@[.5:.95], box agreement of
every exported form, the deployable file, batch-1 latencies, and the machine (CPU model,
flags, threads). Target: test mAP@.5 >= 0.9 with under 10 minutes of training on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "detection-mobilenetv2-lora.yaml"


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-detection"))
    parser.add_argument("--images", type=int, default=1500, help="images in the built detection set")
    parser.add_argument("--set", action="append", default=[], help="config overrides passed to adapt run")
    args = parser.parse_args()
    data = args.out / "data"
    if not (data / "annotations.json").exists():
        subprocess.run([sys.executable, "-m", "adapt.plugins.detection.example_set", str(data), "--images", str(args.images)], check=True)
    adapt = str(Path(sys.executable).with_name("adapt"))
    overrides = [f"data.path={data}", f"output_dir={args.out}", *args.set]
    started = time.perf_counter()
    subprocess.run([adapt, "run", str(EXAMPLE), "--overwrite", *[a for o in overrides for a in ("--set", o)]], check=True)
    wall = time.perf_counter() - started
    report = json.loads((args.out / "detection-mobilenetv2-lora" / "report.json").read_text())
    from adapt.latency import cpu_flags

    result = {
        "train_seconds": round(report["training"]["seconds"], 1),
        "wall_seconds": round(wall, 1),
        "epochs": report["training"]["epochs_run"],
        "data": report["data"]["sizes"],
        "test": {form: {k: round(m[k], 4) for k in ("map50", "map", "map75")} for form, m in report["metrics"].items()},
        "box_agreement": {form: p.get("box_agreement") for form, p in report["parity"].items() if "box_agreement" in p},
        "deployable": report.get("deployable"),
        "latency_ms": {form: v["median"] for form, v in report.get("latency_ms", {}).items()},
        "machine": {"cpu": cpu_model(), "flags": cpu_flags(), "cpus": os.cpu_count(), "threads": report.get("latency_ms", {}).get("pytorch", {}).get("threads")},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
