"""CUDA paths of this round's CPU-built features, checked where a GPU is lent: a linear
probe on cached features trains like the uncached loop on CUDA (same losses), and
quantisation-aware fine-tuning runs on CUDA and hands back a CPU model. Prints one JSON line."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.core.test_feature_cache import train  # noqa: E402
from tests.core.test_qat import CrossEntropy, collate, examples, tiny_model  # noqa: E402


def main() -> None:
    from adapt import qat

    assert torch.cuda.is_available(), "no CUDA device"
    result = {"device": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory() as folder:
        cached, with_cache = train(Path(folder) / "cached", device="cuda")
        plain, without = train(Path(folder) / "plain", device="cuda", cache_features=False)
        a, b = ([row["train_loss"] for row in r.history] for r in (with_cache, without))
        result["probe"] = {"cached": cached.cache is not None, "losses_cached": a, "losses_uncached": b, "same": all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) for x, y in zip(a, b))}
    model = tiny_model()
    tuned, info = qat.finetune(model, examples(), collate, CrossEntropy, epochs=2, lr=1e-3, batch_size=8, seed=0, device="cuda", say=lambda text: None)
    result["qat"] = {**info, "returned_on": str(next(tuned.parameters()).device)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
