"""The (IA)^3 plugin passes adapt's method contract (adapt.testing.check_method):
trains, merges exactly into the base architecture, and round-trips its adapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapt.errors import ConfigError
from adapt.interfaces import BuiltModel
from adapt.testing import check_method, make_test_host
from adapt_ia3 import IA3Options
import adapt_ia3


class Tiny(nn.Module):
    """A linear layer, a convolution and a head: both kinds of layer (IA)^3 scales."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(self.conv(pixel_values).mean(dim=(2, 3)))))


def build() -> BuiltModel:
    torch.manual_seed(0)
    return BuiltModel(Tiny(), "image-classification", 4, head=("head",))


BATCH = {
    "pixel_values": torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)),
    "labels": torch.tensor([0, 1, 2, 3, 0, 1]),
}


def test_the_host_finds_the_method():
    host = make_test_host(adapt_ia3)
    assert host.methods.get("ia3-outputs").name == "ia3-outputs"


def test_ia3_meets_the_method_contract(tmp_path):
    merged = check_method(
        make_test_host(adapt_ia3).methods.get("ia3-outputs"),
        build=build,
        batch=BATCH,
        options=IA3Options(targets=["conv", "proj"]),
        tmp_path=tmp_path,
        bad_options=IA3Options(targets=["no_such_layer"]),
    )
    assert merged.folded


def test_only_scales_and_head_train():
    built = build()
    trained = adapt_ia3.IA3().apply(built, IA3Options(targets=["conv", "proj"]), [])
    assert sorted(trained) == ["conv.scale", "head.bias", "head.weight", "proj.scale"]


def test_no_targets_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs target layers"):
        adapt_ia3.IA3().apply(build(), IA3Options(), [])
