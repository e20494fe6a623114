"""Shared test fixtures: a tiny real backbone plugin built inside the tests.

No hub, no downloads: the tiny CNN below is a genuine torch model that runs
through the same host, method and pipeline code as the built-in backbones.
"""

from __future__ import annotations

import os

# No test reaches a model hub: libraries that would ask one (bitsandbytes' CPU kernels,
# transformers) answer from the local cache at once instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from adapt import hookimpl
from adapt.host import Host, make_host
from adapt.interfaces import BuiltModel, OnnxIO
from adapt.testing import TinyCNN


class TinyBackbone:
    """A real backbone plugin for tests: grey images, random init (no checkpoint)."""

    name = "tiny-cnn"
    tasks = ("image-classification",)
    options_schema = None

    def build(self, task: str, num_labels: int, *, checkpoint: str | None, arch: str | None, options: Any) -> BuiltModel:
        torch.manual_seed(0)
        model = TinyCNN(num_labels, channels=1)  # the digits are grey
        families = {"pointwise-conv": ["blocks.1.0"]}  # the 1x1 conv; what LoRA adapts by default
        return BuiltModel(model, task, num_labels, head=("head",), new_parameters=("head.weight", "head.bias"), blocks=("blocks.0", "blocks.1"), families=families)

    def collator(self, built: BuiltModel, options: Any):
        def collate(examples: Sequence[dict]) -> dict[str, torch.Tensor]:
            images = torch.stack([torch.as_tensor(e["image"], dtype=torch.float32) / 255.0 for e in examples]).unsqueeze(1)
            return {"pixel_values": images, "labels": torch.tensor([e["label"] for e in examples])}

        return collate

    def example_inputs(self, built: BuiltModel, batch_size: int = 2) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.rand(batch_size, 1, 8, 8)}

    def onnx_io(self, built: BuiltModel) -> OnnxIO:
        return OnnxIO(("pixel_values",), ("logits",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})

    def default_targets(self, method: str) -> list[str]:
        return ["blocks.1.0"] if method in ("lora", "dora", "ia3", "loha", "lokr", "vera", "oft") else []


class TinyPlugin:
    """An inline plugin object, as a test or a script would register it."""

    @hookimpl
    def adapt_register_backbones(self, register):
        register(TinyBackbone())


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


@pytest.fixture
def host_with_tiny() -> Host:
    return make_host([TinyPlugin()])


@pytest.fixture
def tiny_config() -> dict:
    """A valid config dict for the tiny backbone on the real digits data."""
    return {
        "name": "tiny",
        "task": "image-classification",
        "backbone": {"name": "tiny-cnn"},
        "method": {"name": "freeze"},
        "data": {"source": "digits"},
        "train": {"epochs": 1, "batch_size": 64},
    }


def exported_tiny_run(folder: Path) -> Path:
    """A finished run of the tiny CNN on digits with an ONNX export, made through the CLI."""
    import yaml
    from click.testing import CliRunner

    from adapt.cli import make_cli

    config = {"name": "tiny", "output_dir": str(folder / "runs"), "task": "image-classification", "backbone": {"name": "tiny-cnn"}, "data": {"source": "digits"}, "train": {"epochs": 1, "batch_size": 64}, "export": {"formats": ["onnx"], "quantize": "none", "mobile": False, "latency_runs": 2}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin()], autoload=False)), ["run", str(folder / "config.yaml")])
    assert result.exit_code == 0, result.output
    return folder / "runs" / "tiny"
