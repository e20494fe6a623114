"""Run every config in examples/ for real and collect their reports.

Usage: python bench/run_examples.py [--out DIR] [NAME ...]

Prints one line per example as it finishes and, last, one JSON object with each
example's test metrics (and the untuned baseline's, where the task measures one),
parity, trainable fraction and wall time, plus the machine. docs/results.md is written from this output.
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
#: Examples whose data is generated first (into the folder their config names, if missing).
GENERATED = {
    "detection-mobilenetv2-lora": ("digits-detection", ["-m", "adapt.plugins.detection.example_set", "digits-detection", "--images", "1500"]),
    "bbc-minilm-recommend": ("bbc-interactions", ["-m", "adapt.plugins.embeddings.bbc_interactions", "bbc-interactions"]),
    "bbc-itemtable-recommend": ("bbc-interactions", ["-m", "adapt.plugins.embeddings.bbc_interactions", "bbc-interactions"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="example names (file stems); default: all")
    parser.add_argument("--out", default="runs/examples", help="output_dir for the runs")
    args = parser.parse_args()
    adapt = str(Path(sys.executable).with_name("adapt"))
    configs = sorted((ROOT / "examples").glob("*.yaml"))
    results = {}
    for config in configs:
        if args.names and config.stem not in args.names:
            continue
        folder, command = GENERATED.get(config.stem, (None, []))
        if folder and not Path(folder).exists():
            subprocess.run([sys.executable, *command], check=True)
        started = time.perf_counter()
        done = subprocess.run([adapt, "run", str(config), "--set", f"output_dir={args.out}", "--overwrite"], capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            results[config.stem] = {"error": done.stderr.strip().splitlines()[-3:]}
            print(f"{config.stem}: FAILED", file=sys.stderr)
            continue
        report = json.loads((Path(args.out) / config.stem / "report.json").read_text())
        results[config.stem] = {
            "task": report["task"],
            "method": report["method"],
            "merge": report["merge"],
            "test": report["metrics"]["adapted"],
            "merged_test": report["metrics"]["merged"],
            "baseline_test": report["metrics"].get("baseline"),  # text-embedding: the untuned model; recommendation: popularity; same run
            "parity": report["parity"]["merged"],
            "trainable": report["params"]["trainable"],
            "total": report["params"]["total"],
            "trainable_fraction": report["params"]["trainable"] / report["params"]["total"],
            "train_seconds": report["training"]["seconds"],
            "wall_seconds": round(wall, 1),
        }
        print(f"{config.stem}: {json.dumps(results[config.stem]['test'])} in {wall:.0f} s", file=sys.stderr)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps({"examples": results, "machine": machine}))


if __name__ == "__main__":
    main()
