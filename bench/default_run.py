"""The default job's operating point: `adapt run` without a config, once per setting,
one after another on this machine, with the report's test accuracy (merged, int8, the
deployed file) and stage timings. docs/results.md ("The default run's operating point"
and the pooling table) is written from this output.

Usage: python bench/default_run.py [--out DIR] [SETTING ...], a setting being a
comma-separated list of --set overrides, e.g. backbone.options.max_length=64.
Default: the max_length sweep 128, 64, 48, 32 and mean pooling at 48. The last line
printed is one JSON object with every run and the machine (CPU model and flags).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from adapt.latency import machine

SETTINGS = [f"backbone.options.max_length={n}" for n in (128, 64, 48, 32)] + ["backbone.options.max_length=48,backbone.options.pooling=mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", default=SETTINGS)
    parser.add_argument("--out", type=Path, default=Path("runs/default-sweep"))
    args = parser.parse_args()
    adapt = str(Path(sys.executable).with_name("adapt"))
    results = {}
    for number, setting in enumerate(args.settings):
        folder = args.out / str(number)
        overrides = [f"output_dir={folder}", *setting.split(",")]
        subprocess.run([adapt, "run", "--overwrite", *[x for o in overrides for x in ("--set", o)]], check=True, capture_output=True)
        report = json.loads(next(folder.glob("*/report.json")).read_text())
        metrics = report["metrics"]
        results[setting] = {
            "test_accuracy": metrics["merged"]["accuracy"],
            "int8_accuracy": metrics.get("onnx_int8", {}).get("accuracy"),
            "deployable": report.get("deployable"),
            "val": report["training"]["best_val"],
            "timings": report["timings"],
        }
        print(f"{setting}: {json.dumps(results[setting])}", file=sys.stderr)
    print(json.dumps({"runs": results, "machine": machine()}))


if __name__ == "__main__":
    main()
