"""Adapter folders on disk: every method round-trips; damaged files give clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from adapt.adapter_io import CONFIG_FILE, WEIGHTS_FILE, load_adapter, save_adapter
from adapt.engine import freeze_frozen_norms
from adapt.errors import CheckpointError
from adapt.host import make_host
from adapt.plan import validate_options

HOST = make_host(autoload=False)


@pytest.mark.parametrize("method_name, raw", [("freeze", {"last_blocks": 1}), ("lora", {"r": 2}), ("adapters", {"reduction": 2})])
def test_every_method_round_trips_through_files(method_name, raw, tiny_backbone, tmp_path):
    method = HOST.methods.get(method_name)
    options = validate_options(method, "method", raw, "method.options")
    trained = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    method.apply(trained, options, tiny_backbone.default_targets(method_name))
    with torch.no_grad():
        for p in trained.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
        # a training-mode pass moves the running statistics of the normalisation layers that train
        trained.model.train()
        freeze_frozen_norms(trained.model)
        trained.model(torch.rand(8, 1, 8, 8) * 3)
    written = save_adapter(method, trained, tmp_path / "adapter")
    assert (tmp_path / "adapter" / WEIGHTS_FILE) in written
    assert ((tmp_path / "adapter" / CONFIG_FILE) in written) == (method_name == "lora")

    fresh = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    method.apply(fresh, options, tiny_backbone.default_targets(method_name))
    load_adapter(method, fresh, tmp_path / "adapter")
    x = torch.rand(2, 1, 8, 8)
    trained.model.eval(), fresh.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(x), trained.model(x), rtol=0, atol=0)


def test_lora_folder_is_in_peft_layout(tiny_backbone, tmp_path):
    lora = HOST.methods.get("lora")
    built = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    lora.apply(built, validate_options(lora, "m", {"r": 2, "alpha": 4}, "m"), ["blocks.1.0"])
    save_adapter(lora, built, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / WEIGHTS_FILE))
    assert keys == {"base_model.model.blocks.1.0.lora_A.weight", "base_model.model.blocks.1.0.lora_B.weight", "base_model.model.head.weight", "base_model.model.head.bias"}
    assert config["target_modules"] == ["blocks.1.0"] and config["modules_to_save"] == ["head"]


def test_truncated_or_missing_adapter_is_a_clear_error(tiny_backbone, tmp_path):
    freeze = HOST.methods.get("freeze")
    built = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    freeze.apply(built, validate_options(freeze, "m", {}, "m"), [])
    with pytest.raises(CheckpointError, match="no adapter weights"):
        load_adapter(freeze, built, tmp_path)
    save_adapter(freeze, built, tmp_path)
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    (tmp_path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read adapter weights"):
        load_adapter(freeze, built, tmp_path)
