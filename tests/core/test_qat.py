"""Quantisation-aware fine-tuning (adapt.qat, ``export.qat``) on a tiny timm MobileNetV2:
the rounding it simulates is ONNX Runtime's, it leaves an ordinary model behind, and the
int8 gate tries it before leaving layers in fp32."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from adapt import qat
from adapt.export_stage import DeriveContext
from adapt.host import make_host
from adapt.interfaces import OnnxIO
from adapt.plan import validate_options

HOST = make_host(autoload=False)
ONNX = HOST.exporters.get("onnx")
IO = OnnxIO(("pixel_values",), ("logits",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})


class CrossEntropy:
    """The task contract finetune uses: ``loss(logits, labels)``."""

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)


def tiny_model() -> torch.nn.Module:
    """The mobilenet backbone's model (it takes ``pixel_values``), tiny and random."""
    from adapt.plugins.timm.mobilenet import MobileNetOptions

    torch.manual_seed(0)
    built = HOST.backbones.get("mobilenet").build("image-classification", 3, checkpoint=None, arch="mobilenetv2_050", options=MobileNetOptions(image_size=32))
    return built.model.eval()


def examples(n: int = 24) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": i % 3} for i in range(n)]


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in batch]), "labels": torch.tensor([e["labels"] for e in batch])}


def test_simulated_weights_are_onnx_runtimes_per_channel_int8_and_removal_leaves_a_plain_model():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    remove = qat.simulate_int8(model)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    raw = conv.parametrizations.weight.original.detach().numpy()
    model(torch.randn(2, 3, 32, 32))  # the observers see the weights once
    scale = np.abs(raw).reshape(raw.shape[0], -1).max(axis=1).reshape(-1, 1, 1, 1) / 127  # symmetric over [-127, 127], as ONNX Runtime's QInt8 weights
    np.testing.assert_allclose(conv.weight.detach().numpy(), np.clip(np.round(raw / scale), -127, 127) * scale, rtol=0, atol=1e-6)
    assert remove() == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert model.state_dict().keys() == before.keys() and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "input_rounding") or hasattr(m, "parametrizations") for m in model.modules())


def test_finetune_trains_a_copy_and_leaves_the_merged_model_untouched():
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    said = []
    tuned, info = qat.finetune(model, examples(), collate, CrossEntropy, epochs=2, lr=1e-3, batch_size=8, seed=0, device="cpu", say=said.append)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items() if k.endswith("weight"))
    assert info["epochs"] == 2 and len(info["train_loss"]) == 2 and info["layers"] > 10 and len(said) == 2
    assert not tuned.training and tuned.state_dict().keys() == before.keys()
    for module in tuned.modules():  # BatchNorm statistics stay as the export will fold them
        if isinstance(module, torch.nn.BatchNorm2d):
            name = next(n for n, m in tuned.named_modules() if m is module)
            assert torch.equal(module.running_mean, before[f"{name}.running_mean"])


def test_the_int8_gate_tries_qat_after_equalisation_and_before_fp32_layers(tmp_path):
    model = tiny_model()
    plain = ONNX.export(model, {"pixel_values": torch.randn(2, 3, 32, 32)}, IO, tmp_path / "model.onnx", None)
    calibration = [{"pixel_values": e["pixel_values"].unsqueeze(0).numpy()} for e in examples(8)]
    made = []

    def fine_tune_and_export(path: Path) -> dict:
        tuned, info = qat.finetune(model, examples(), collate, CrossEntropy, epochs=1, lr=1e-4, batch_size=8, seed=0, device="cpu", say=lambda text: None)
        ONNX.export(tuned, {"pixel_values": torch.randn(2, 3, 32, 32)}, IO, path, None)
        made.append(path.name)
        return info

    def score(candidate: Path) -> float:  # scripted: only the QAT attempt (the fourth) keeps the accuracy
        return 0.9 if candidate.name in ("model.optimized.onnx", "model.int8.try4.onnx") or "qat" in candidate.name else 0.5

    options = validate_options(ONNX, "e", {"calibration_examples": 4, "calibration_method": "minmax"}, "e")
    ctx = DeriveContext(tmp_path, {}, "int8", False, 0.01, calibration, score, lambda p: {"median": 1.0, "p90": 1.0, "threads": 1}, options, qat=fine_tune_and_export)
    derived = ONNX.derive(plain, ctx)
    labels = [a["attempt"] for a in derived.attempts]
    assert len(labels) == 4 and "quantisation-aware fine-tuning" in labels[3] and "equalisation" in labels[2]
    assert made == ["model.int8.try4.qat-fp32.onnx"] and not (tmp_path / made[0]).exists()
    assert derived.attempts[3]["qat"]["epochs"] == 1 and derived.attempts[3]["qat"]["fp32_val_score"] == 0.9
    assert derived.info["int8_remedy"] == labels[3] and derived.deployable.name == "model.int8.try4.onnx"


def test_export_qat_in_a_run_config_gives_the_exporter_a_working_qat_callable(tmp_path):
    """The pipeline's wiring: a real (tiny CNN, digits) run with `export.qat` set hands the
    ONNX exporter a `qat(path)` that fine-tunes the merged model on the run's own training
    split and writes an fp32 ONNX file ONNX Runtime runs; without `export.qat`, None."""
    import onnxruntime as ort
    import yaml
    from click.testing import CliRunner

    from adapt.cli import make_cli
    from adapt.export_stage import _ExportJob
    from adapt.pipeline import restore
    from tests.conftest import TinyPlugin

    def tiny_host():
        return make_host([TinyPlugin()], autoload=False)

    config = {"name": "tiny", "output_dir": str(tmp_path / "runs"), "task": "image-classification", "backbone": {"name": "tiny-cnn"}, "data": {"source": "digits"}, "train": {"epochs": 1, "batch_size": 64}, "export": {"formats": [], "qat": {"epochs": 1, "lr": 1e-4}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(tiny_host), ["run", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    session = restore(tmp_path / "runs" / "tiny", tiny_host())
    merged = session.plan.method.merge(session.built).model.eval()
    staging = tmp_path / "staging"
    staging.mkdir()
    job = _ExportJob(session, merged, None, staging)
    qat_export = job.qat(ONNX, None)
    assert qat_export is not None
    info = qat_export(staging / "qat.onnx")
    assert info["epochs"] == 1 and info["lr"] == 1e-4 and info["layers"] >= 2 and len(info["train_loss"]) == 1
    feed = {"pixel_values": session.collate(session.splits.test[:4])["pixel_values"].numpy()}
    assert ort.InferenceSession(str(staging / "qat.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0].shape == (4, 10)
    session.config.export.qat = None
    assert job.qat(ONNX, None) is None
