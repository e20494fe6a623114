"""The linear probe on MiniLM (the default job with `method: freeze`: only the
classifier trains): wall time of 3 and of 30 epochs with the features cached
(`train.cache_features`, the default), 3 epochs uncached for reference, and the test
accuracy against a probe trained on the same features in a plain PyTorch loop
(nn.Linear, AdamW, the same epochs, batch size and learning rate, constant rate).
Export is off in these runs: the times are load + train + merge. Runs one after
another on this machine; docs/results.md ("Linear probes") is written from the output.

Usage: python bench/probe.py [--out DIR] [--lr LR]
The last line printed is one JSON object with every figure and the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adapt.latency import machine


def adapt_run(out: Path, name: str, epochs: int, lr: float, *extra: str) -> dict[str, Any]:
    adapt = str(Path(sys.executable).with_name("adapt"))
    overrides = [f"output_dir={out}", f"name={name}", "method={name: freeze}", f"train.epochs={epochs}", f"train.lr={lr}", "export.formats=[]", *extra]
    started = time.perf_counter()
    subprocess.run([adapt, "run", "--overwrite", *[x for o in overrides for x in ("--set", o)]], check=True, capture_output=True)
    wall = time.perf_counter() - started
    report = json.loads((out / name / "report.json").read_text())
    return {"wall_s": round(wall, 1), "timings": report["timings"], "test_accuracy": report["metrics"]["merged"]["accuracy"], "feature_cache": report["training"]["fast_path"].get("feature_cache")}


def plain_probe(run_dir: Path, epochs: int, lr: float) -> dict[str, Any]:
    """The same head on the same features, trained by a plain loop."""
    from adapt.feature_cache import build, probe_head
    from adapt.host import make_host
    from adapt.pipeline import restore

    session = restore(run_dir, make_host())
    model = session.built.model.eval()
    found = probe_head(model)
    assert found is not None, "the default job with method: freeze is not a probe"
    cache = build(model, found[0], {"train": session.splits.train, "val": session.splits.test}, session.collate, batch_size=64, device=torch.device("cpu"), dtype=None)
    assert not isinstance(cache, str), cache
    x, y = torch.stack([e["features"] for e in cache.train]), torch.stack([e["labels"] for e in cache.train])
    tx, ty = torch.stack([e["features"] for e in cache.val]), torch.stack([e["labels"] for e in cache.val])
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr)
    batch = session.config.train.batch_size
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    accuracy = float((head(tx).argmax(1) == ty).float().mean())
    return {"test_accuracy": round(accuracy, 6), "features": list(x.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/probe"))
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    for name, epochs, extra in (("cached-3", 3, ()), ("cached-30", 30, ()), ("uncached-3", 3, ("train.cache_features=false",))):
        figures[name] = adapt_run(args.out, name, epochs, args.lr, *extra)
        print(f"{name}: {json.dumps(figures[name])}", file=sys.stderr)
    figures["plain-loop-30"] = plain_probe(args.out / "cached-30", 30, args.lr)
    figures["ratio_30_to_3_wall"] = round(figures["cached-30"]["wall_s"] / figures["cached-3"]["wall_s"], 3)
    print(json.dumps({"figures": figures, "lr": args.lr, "machine": machine()}))


if __name__ == "__main__":
    main()
