"""freeze: what it leaves trainable, adapter save/load, and its identity merge."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapt.errors import CheckpointError, ConfigError
from adapt.plugins.methods.freeze import Freeze, FreezeOptions


def trainable(built):
    return {n for n, p in built.model.named_parameters() if p.requires_grad}


def test_head_only_is_a_linear_probe(tiny_backbone):
    built = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    names = Freeze().apply(built, FreezeOptions(), [])
    assert set(names) == trainable(built) == {"head.weight", "head.bias"}


def test_last_blocks_and_biases(tiny_backbone):
    built = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    Freeze().apply(built, FreezeOptions(last_blocks=1), [])
    assert {n for n in trainable(built) if n.startswith("blocks.")} == {n for n, _ in built.model.named_parameters() if n.startswith("blocks.1.")}
    Freeze().apply(built, FreezeOptions(biases=True), [])
    assert {"stem.bias", "blocks.0.0.bias", "head.weight"} <= trainable(built)
    assert "stem.weight" not in trainable(built)


def test_too_many_blocks_is_a_config_error(tiny_backbone):
    built = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    with pytest.raises(ConfigError, match="this model has 2 blocks"):
        Freeze().apply(built, FreezeOptions(last_blocks=3), [])


def test_new_parameters_stay_trainable(tiny_backbone):
    built = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    built.head, built.new_parameters = (), ("stem.bias",)
    assert Freeze().apply(built, FreezeOptions(), []) == ["stem.bias"]


def test_adapter_state_round_trips_through_safetensors(tiny_backbone, tmp_path):
    method = Freeze()
    trained = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    method.apply(trained, FreezeOptions(last_blocks=1), [])
    with torch.no_grad():
        for p in trained.model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    save_file(method.adapter_state(trained), tmp_path / "adapter.safetensors")

    fresh = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    method.apply(fresh, FreezeOptions(last_blocks=1), [])
    method.load_adapter_state(fresh, load_file(tmp_path / "adapter.safetensors"))
    x = torch.rand(4, 1, 8, 8)
    trained.model.eval(), fresh.model.eval()
    torch.testing.assert_close(fresh.model(x), trained.model(x), rtol=0, atol=0)


def test_loading_an_adapter_of_another_shape_names_the_tensor(tiny_backbone):
    built = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    Freeze().apply(built, FreezeOptions(), [])
    with pytest.raises(CheckpointError, match=r"'head.weight' has shape \(5, 8\), the model expects \(3, 8\)"):
        Freeze().load_adapter_state(built, {"head.weight": torch.zeros(5, 8)})
    with pytest.raises(CheckpointError, match="'nothing' has no counterpart"):
        Freeze().load_adapter_state(built, {"nothing": torch.zeros(1)})


def test_merge_is_the_identity_in_fp32(tiny_backbone):
    built = tiny_backbone.build("image-classification", 3, checkpoint=None, arch=None, options=None)
    Freeze().apply(built, FreezeOptions(), [])
    built.model.eval()
    result = Freeze().merge(built)
    assert result.folded and result.model is not built.model
    assert type(result.model) is type(built.model)
    assert sum(p.numel() for p in result.model.parameters()) == sum(p.numel() for p in built.model.parameters())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in result.model.parameters())
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(result.model(x), built.model(x), rtol=0, atol=0)
