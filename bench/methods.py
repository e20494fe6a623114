"""Every built-in method against PEFT's implementation of the same method, on the same
model and data, in one run: trainable parameters, training speed, peak memory, test
metric, merge difference and exported latency.

Jobs: ``text``, the built-in default (`adapt run` without a config: MiniLM on BBC News,
2 epochs at 48 tokens), and ``digits``, MobileNetV2 (ImageNet weights) on the digits
(examples/digits-mobilenetv2-lora.yaml, 5 epochs at 64 px). Each method runs with the
job's data, schedule and learning rate; only ``method.*`` changes (METHODS below: the
LoRA-like methods on the same layers as the job's LoRA).

* adapt: ``adapt run JOB --set method.name=... --set method.options=...`` in its own
  process (``export.quantize: none``); the figures come from its report.json and
  metrics.jsonl.
* PEFT: in its own process, the same base model built by adapt's backbone plugin, the
  same splits and collator, PEFT's config read from the adapter_config.json adapt wrote
  (same targets, rank and scale; PEFT's own initialisation), trained in the loop a PEFT
  user writes with the job's optimiser settings (AdamW, the job's lr, weight decay,
  warm-up and linear decay, clipping, batch size, epochs, shuffled by the job's seed;
  ``model.train()``, so BatchNorm statistics move, as they do in a PEFT user's loop),
  then merged with ``merge_and_unload`` and exported with ``torch.onnx.export``. Where
  PEFT refuses a step (a method it does not define on a layer kind, a merge it does not
  support) the table shows its message. ``freeze`` and ``adapters`` have no PEFT
  counterpart.

Figures per side: ``trainable``; ``samples_per_s`` (median over epochs, training only);
``train_peak_mib`` (the process's peak RSS during training, the model included: adapt's
``memory.peak_mib.train``, and the same /proc high-water mark reset before PEFT's
loop); ``test`` (the job's primary metric on the test split, after the merge); ``merge_diff``
(the largest |logit| difference between the adapted and the merged model on the test
split: adapt's ``parity.merged``); ``latency_ms`` (batch 1, fp32 ONNX in ONNX Runtime, 2
threads, adapt's and PEFT's files taking turns round by round, median and the per-round
spread). The CPU and its flags are recorded.

Usage: python bench/methods.py [--jobs text digits] [--methods lora dora ...] [--out DIR] [--set KEY=VALUE]
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LORA_LIKE = ("lora", "dora", "loha", "lokr", "vera", "oft")
#: Per job, each method's options (the LoRA-like methods on the job's LoRA layers).
METHODS: dict[str, dict[str, dict[str, Any]]] = {
    "text": {
        "freeze": {},
        "lora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
        "dora": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
        "ia3": {},
        "loha": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
        "lokr": {"r": 8, "alpha": 16, "targets": ["query", "value"]},
        "vera": {"r": 256, "targets": ["query", "value"]},
        "oft": {"block_size": 32, "targets": ["query", "value"]},
        "adapters": {},
    },
    "digits": {
        "freeze": {},
        "lora": {"r": 4, "alpha": 8},
        "dora": {"r": 4, "alpha": 8},
        "ia3": {},
        "loha": {"r": 4, "alpha": 8},
        "lokr": {"r": 4, "alpha": 8},
        "vera": {"r": 64},
        "oft": {"block_size": 16},
        "adapters": {},
    },
}
#: Per job, the example latency is measured on (read from the job's first run).
FEEDS: dict[str, dict[str, Any]] = {}
JOB_CONFIGS = {"text": None, "digits": "examples/digits-mobilenetv2-lora.yaml"}


def adapt_side(job: str, method: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """``adapt run`` with this method; the figures from the run's files."""
    name = f"{job}-{method}"
    command = [sys.executable, "-m", "adapt.cli", "run"]
    if JOB_CONFIGS[job]:
        command.append(JOB_CONFIGS[job])
    command += [
        "--overwrite",
        "--set", f"name={name}",
        "--set", f"output_dir={out}",
        "--set", f"method.name={method}",
        "--set", f"method.options={json.dumps(METHODS[job][method])}",
        "--set", "export.quantize=none",
        *[arg for item in extra for arg in ("--set", item)],
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1][:300]}
    run = out / name
    report = json.loads((run / "report.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    primary = report["primary_metric"]
    return {
        "run": str(run),
        "trainable": report["params"]["trainable"],
        "total": report["params"]["total"],
        "samples_per_s": median([e["samples_per_s"] for e in epochs if "samples_per_s" in e]),
        "train_peak_mib": report["memory"]["peak_mib"].get("train"),
        "test": report["metrics"]["merged"][primary],
        "metric": primary,
        "merge": report.get("merge"),
        "merge_diff": report["parity"]["merged"]["max_abs_diff"],
        "onnx": str(run / report["forms"]["onnx"]),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def peft_side(adapt_run: str, out: Path) -> dict[str, Any]:
    """PEFT on the same job, in its own process (``_peft_worker``)."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, __file__, "--peft-worker", adapt_run, str(out)], capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1][:300]}
    return json.loads(lines[-1])


def median(values: list[float]) -> float | None:
    import statistics

    return round(statistics.median(values), 2) if values else None


def latency(files: dict[str, str], job: str, job_run: str) -> dict[str, Any]:
    """Batch-1 latency of each ONNX file, the files taking turns round by round."""
    import numpy as np
    import onnxruntime as ort

    from adapt.latency import summary, take_turns

    if job not in FEEDS:  # the same example for every method of a job: restore one run per job
        FEEDS[job] = _example_feed(job_run)
    feed = FEEDS[job]
    sessions = {}
    for side, path in files.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        sessions[side] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def runner(session: Any) -> Any:
        names = [i.name for i in session.get_inputs()]
        inputs = {n: np.ascontiguousarray(feed[n]) for n in names}
        return lambda: session.run(None, inputs)

    per_round = take_turns({side: runner(s) for side, s in sessions.items()}, rounds=5, runs=30)
    return summary(per_round, "adapt")


def _example_feed(job_run: str) -> dict[str, Any]:
    """One test example of the job, collated as the model takes it, by input name."""
    from adapt.host import make_host
    from adapt.pipeline import restore

    session = restore(Path(job_run), make_host())
    assert session.splits is not None
    batch = session.collate(session.splits.test[:1])
    return {k: v.numpy() for k, v in batch.items() if k != "labels"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-methods"))
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="KEY=VALUE for every job (a smoke test: train.epochs=1)",
    )
    parser.add_argument("--peft-worker", nargs=2, metavar=("RUN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peft_worker:
        from bench.methods_peft import run_peft

        print(json.dumps(run_peft(Path(args.peft_worker[0]), Path(args.peft_worker[1]))))
        return
    from adapt.latency import machine

    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "jobs": {}}
    for job in args.jobs:
        for method in args.methods or list(METHODS[job]):
            row: dict[str, Any] = {"adapt": adapt_side(job, method, args.out, args.extra)}
            has_peft = method not in ("freeze", "adapters") and "error" not in row["adapt"]
            if has_peft:
                row["peft"] = peft_side(row["adapt"]["run"], args.out / f"{job}-{method}-peft")
            files = {"adapt": row["adapt"].get("onnx"), "peft": row.get("peft", {}).get("onnx")}
            files = {side: path for side, path in files.items() if path}
            if "adapt" in files:
                row["latency"] = latency(files, job, row["adapt"]["run"])
            results["jobs"].setdefault(job, {})[method] = row
            print(f"{job} {method}: {json.dumps(row)}", file=sys.stderr, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
