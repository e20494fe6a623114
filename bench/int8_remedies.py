"""Every int8 remedy on one finished CNN run, each measured on its own (the run's gate
stops at the first attempt that passes, so it scores only those it needed): the run's
fp32 ONNX file; post-training static int8 (100 calibration inputs); more calibration
data (200); cross-layer equalisation + bias correction; quantisation-aware fine-tuning
(1 epoch, lr 1e-5, from the run's merged model); the first conv, depthwise convs and
head in fp32. Each file's validation and test accuracy and size. Files are written to
a temporary folder, never into the run.

Usage: python bench/int8_remedies.py RUN_DIR [--activations int8|uint8] [--qat-epochs N] [--qat-lr LR] [--skip-qat]
The last line printed is one JSON object with every attempt and the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from adapt.latency import machine


def file_accuracy(path: Path, batches: list[dict[str, Any]], names: list[str]) -> float:
    """Top-1 accuracy of an ONNX file on collated batches."""
    import onnxruntime as ort

    runner = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hits = total = 0
    for batch in batches:
        logits = runner.run(None, {n: batch[n].numpy() for n in names})[0]
        hits += int((logits.argmax(1) == batch["labels"].numpy()).sum())
        total += len(batch["labels"])
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--activations", choices=["int8", "uint8"], default="int8", help="int8: S8S8, the choice for ARM devices; uint8: U8S8")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-lr", type=float, default=1e-5)
    parser.add_argument("--skip-qat", action="store_true", help="leave out the quantisation-aware fine-tuning row (minutes at 224 px)")
    args = parser.parse_args()

    from adapt.export_stage import DeriveContext
    from adapt.exporters.onnx_exporter import OnnxExporter, _StaticInt8
    from adapt.host import make_host
    from adapt.pipeline import restore
    from adapt import qat

    session = restore(args.run_dir, make_host())
    names = session.plan.backbone.onnx_io(session.built).input_names
    split = {s: [session.collate(getattr(session.splits, s)[i : i + 64]) for i in range(0, len(getattr(session.splits, s)), 64)] for s in ("val", "test")}
    calibration = [{n: v.numpy() for n, v in session.collate([e]).items() if n in names} for e in session.splits.train[:400]]

    def accuracy(path: Path, which: str) -> float:
        return file_accuracy(path, split[which], names)

    exporter = OnnxExporter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "model.onnx"
        shutil.copyfile(args.run_dir / "export" / "model.onnx", plain)
        merged = session.plan.method.merge(session.built).model.eval()
        train = session.config.train

        def fine_tune_and_export(path: Path) -> dict[str, Any]:
            tuned, info = qat.finetune(merged, session.splits.train, session.collate, session.plan.task, epochs=args.qat_epochs, lr=args.qat_lr, batch_size=train.batch_size, seed=0, device="cpu", say=lambda text: print(text, file=sys.stderr))
            backbone, inputs, io = session.plan.backbone, session.plan.backbone.example_inputs(session.built, 2), session.plan.backbone.onnx_io(session.built)
            exporter.export(backbone.export_form(tuned, inputs, io), inputs, io, path, None)  # as the export stage does
            return info

        ctx = DeriveContext(Path(folder), {}, "int8", False, 0.01, calibration, lambda p: accuracy(p, "val"), lambda p: {"median": 0.0, "p90": 0.0, "threads": 1}, None, qat=fine_tune_and_export)
        static = _StaticInt8(plain, ctx, baseline=accuracy(plain, "val"))
        static.activation = args.activations
        attempts = {
            "fp32 ONNX": lambda out: shutil.copyfile(plain, out) and None,
            "static int8, 100 calibration inputs": static.maker(100),
            "more calibration data (200)": static.maker(200),
            "cross-layer equalisation + bias correction (200)": static.equalised(200),
            f"quantisation-aware fine-tuning ({args.qat_epochs} epoch, lr {args.qat_lr:g}) (200)": static.after_qat(200),
            "first conv, depthwise convs, head in fp32 (200)": static.maker(200, keep_sensitive_in_fp32=True),
        }
        if args.skip_qat:
            attempts = {k: v for k, v in attempts.items() if not k.startswith("quantisation-aware")}
        for number, (label, make) in enumerate(attempts.items()):
            out = Path(folder) / f"model.int8.try{number}.onnx"
            extra = make(out) or {}
            row = {"attempt": label, "val": accuracy(out, "val"), "test": accuracy(out, "test"), "bytes": out.stat().st_size, **{k: v for k, v in extra.items() if k in ("equalisation", "qat")}}
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"run": str(args.run_dir), "activations": args.activations, "attempts": results, "machine": machine()}, default=lambda x: float(x) if isinstance(x, np.floating) else str(x)))


if __name__ == "__main__":
    main()
