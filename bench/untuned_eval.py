"""The untuned model of a LoRA run, measured like the tuned one: a copy of RUN_DIR with
every LoRA B matrix set to zero (LoRA's own initialisation, so the model is exactly the
pretrained one), then `adapt eval --split test` on the copy. docs/results.md's
"untuned MiniLM towers" row of the recommendation table comes from this script.

Usage: python bench/untuned_eval.py RUN_DIR [--split test]. Prints the eval's JSON.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adapt-untuned-") as work:
        copy = Path(work) / args.run_dir.name
        shutil.copytree(args.run_dir, copy, ignore=shutil.ignore_patterns("export", "export.*", "merged", "checkpoints"))
        weights = copy / "adapter" / "adapter_model.safetensors"
        tensors = load_file(weights)
        zeroed = [name for name in tensors if "lora_B" in name]
        if not zeroed:
            sys.exit(f"{args.run_dir} holds no LoRA B matrix: not a LoRA run")
        save_file({name: t * 0 if name in zeroed else t for name, t in tensors.items()}, weights)
        done = subprocess.run([str(Path(sys.executable).with_name("adapt")), "eval", str(copy), "--split", args.split], capture_output=True, text=True, check=True)
        print(done.stdout.strip())


if __name__ == "__main__":
    main()
