"""adapt.offload: a model's tensors parked on disk and back bit for bit, whatever happens meanwhile."""

from __future__ import annotations

import pytest
import torch

from adapt.errors import ExportError
from adapt.offload import OFFLOAD_FILE, model_bytes, offloaded


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    model[2].weight = torch.nn.Parameter(torch.randn(4, 16))
    return model.eval()


def test_the_tensors_leave_memory_and_come_back_bit_for_bit(tmp_path):
    model, x = _model(), torch.randn(3, 8)
    before = model(x)
    assert model_bytes(model) == sum(t.numel() * 4 for t in [*model.parameters(), *model.buffers()] if t.dtype == torch.float32) + 8
    with offloaded(model, tmp_path):
        assert all(p.numel() == 0 for p in model.parameters()) and (tmp_path / OFFLOAD_FILE).is_file()
    assert torch.equal(model(x), before) and not (tmp_path / OFFLOAD_FILE).exists()


def test_an_error_inside_still_brings_the_tensors_back(tmp_path):
    model, x = _model(), torch.randn(3, 8)
    before = model(x)
    with pytest.raises(RuntimeError, match="boom"), offloaded(model, tmp_path):
        raise RuntimeError("boom")
    assert torch.equal(model(x), before) and not (tmp_path / OFFLOAD_FILE).exists()


def test_a_write_that_fails_frees_nothing(tmp_path):
    model = _model()
    with pytest.raises(ExportError, match="could not write the merged model"), offloaded(model, tmp_path / "missing-folder"):
        pass
    assert all(p.numel() > 0 for p in model.parameters())
