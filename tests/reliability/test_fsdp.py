"""``train.strategy: fsdp`` under torchrun, on the CPU with gloo in 2 processes: the frozen
base sharded by FSDP2, LoRA trained whole on each process, the same adapter as one process
training on the same batches, rank 0 merging and exporting the model made whole again, and
`adapt train` resuming a sharded run from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.tiny import decoder_checkpoint

pytestmark = pytest.mark.slow  # two torchrun launches and a single-process run: about a minute

ADAPT = str(Path(sys.executable).with_name("adapt"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TEXTS = [f"the team won the match {i % 7}" if i % 2 else f"shares fell in the market {i % 5}" for i in range(64)]


def _config(root: Path, name: str, checkpoint: Path, **train) -> Path:
    (root / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    config = {
        "name": name, "output_dir": str(root / "runs"), "task": "text-generation",
        "backbone": {"name": "transformers", "checkpoint": str(checkpoint), "options": {"max_length": 32}},
        "method": {"name": "lora", "options": {"r": 4, "targets": "all-linear", "dropout": 0.0}},
        "data": {"source": "jsonl", "path": str(root / "data.jsonl")},
        "train": {"epochs": 1, "lr": 3e-3, "seed": 0, **train},
        "export": {"quantize": "none", "mobile": False, "latency_runs": 2},
    }  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", ADAPT, *args]
    return subprocess.run(launch, env=ENV, capture_output=True, text=True, timeout=600)


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_fsdp_in_two_processes_trains_the_adapter_one_process_trains_and_resumes(tmp_path):
    checkpoint = decoder_checkpoint(tmp_path / "llama", "llama", causal_lm=True, texts=TEXTS)
    single = subprocess.run([ADAPT, "run", str(_config(tmp_path, "single", checkpoint, batch_size=16))], env=ENV, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = _torchrun("run", str(_config(tmp_path, "fsdp", checkpoint, batch_size=8, strategy="fsdp", checkpoint_every=1)))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout.count("run directory:") == 1 and "fsdp:" in sharded.stdout  # rank 0 speaks

    run = tmp_path / "runs" / "fsdp"
    report = json.loads((run / "report.json").read_text())
    assert report["training"]["processes"] == 2 and report["training"]["strategy"] == "fsdp"
    assert report["training"]["sharded_mib"] > 0
    # the same examples per step (two shards of 8 = one batch of 16); only the order of float sums differs
    one, two = _adapter(tmp_path / "runs" / "single"), _adapter(run)
    assert one.keys() == two.keys() and max(float((one[k] - two[k]).abs().max()) for k in one) < 5e-3
    assert report["merge"] == "folded" and report["parity"]["merged"]["verified"]
    assert report["parity"]["onnx"]["verified"] and report["parity"]["onnx"]["generation_agreement"] == 1.0

    saved = run / "config.yaml"
    data = yaml.safe_load(saved.read_text())
    data["train"]["epochs"] = 2
    saved.write_text(yaml.safe_dump(data))
    resumed = _torchrun("train", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 2" in resumed.stdout
    again = json.loads((run / "report.json").read_text())
    assert again["training"]["epochs_run"] == 2 and again["training"]["strategy"] == "fsdp"
