"""The merge and every exported form are gates, not numbers (docs/reliability.md,
"Verification gates"): a wrong merge fails the run naming the method's plugin,
NaN or Inf in any form's logits fails it, an approximate merge passes only within
the bound its method declares, and report.json says `verified` per form."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import yaml
from click.testing import CliRunner

from adapt import hookimpl
from adapt.cli import make_cli
from adapt.host import make_host
from adapt.interfaces import MergeResult, Parity
from adapt.parity import compare, verdict
from adapt.report_schema import Report
from tests.conftest import TinyPlugin


class ShiftedMerge:
    """The built-in freeze method, but its merge adds ``shift`` to the head's bias:
    the kind of bug a plugin author's merge has. ``declared`` is its MergeResult.tolerance."""

    def __init__(self, name: str, shift: float, declared: float | None = None, poison: bool = False) -> None:
        self.name, self.shift, self.declared, self.poison = name, shift, declared, poison
        self.freeze = make_host(autoload=False).methods.get("freeze")
        self.options_schema = self.freeze.options_schema

    def apply(self, built, options, targets):
        return self.freeze.apply(built, options, targets)

    def adapter_state(self, built):
        return self.freeze.adapter_state(built)

    def load_adapter_state(self, built, state):
        self.freeze.load_adapter_state(built, state)

    def merge(self, built) -> MergeResult:
        model = copy.deepcopy(built.model)
        with torch.no_grad():
            model.head.bias += self.shift
            if self.poison:
                model.head.bias[0] = float("nan")
        return MergeResult(model, folded=True, tolerance=self.declared)


class ShiftedPlugin:
    @hookimpl
    def adapt_register_methods(self, register):
        register(ShiftedMerge("shifted", 0.057))
        register(ShiftedMerge("approximate", 0.057, declared=0.5))
        register(ShiftedMerge("nan-merge", 0.0, poison=True))
        register(ShiftedMerge("tiny-error", 2e-3))


def run(tmp_path: Path, tiny_config: dict, method: str, **merge) -> tuple:
    tiny_config.update(output_dir=str(tmp_path / "runs"), method={"name": method}, export={"formats": []})
    if merge:
        tiny_config["merge"] = merge
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    result = CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin(), ShiftedPlugin()], autoload=False)), ["run", str(path)])
    report_path = tmp_path / "runs" / "tiny" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if report:
        Report.model_validate(report)  # failed runs' reports keep the schema too
    return result, report


def test_a_wrong_folded_merge_fails_the_run_and_names_the_plugin(tmp_path, tiny_config):
    result, report = run(tmp_path, tiny_config, "shifted")
    assert result.exit_code == 2, result.output
    assert "method 'shifted' (plugin 'ShiftedPlugin')" in result.output and "does not reproduce the adapted one" in result.output
    assert "max abs difference of the logits 0.057" in result.output and "Traceback" not in result.output
    assert report["parity"]["merged"]["verified"] is False and report["merge_check"]["verified"] is False
    assert not (tmp_path / "runs" / "tiny" / "merged").exists()  # a wrong model is not written as the merged one


def test_nan_in_the_merged_logits_is_a_failure_not_a_zero(tmp_path, tiny_config):
    result, report = run(tmp_path, tiny_config, "nan-merge")
    assert result.exit_code == 2, result.output
    assert "the logits of the merged model hold NaN or Inf" in result.output
    assert report["parity"]["merged"]["max_abs_diff"] is None and report["parity"]["merged"]["verified"] is False


def test_an_approximate_merge_passes_within_its_declared_bound_and_says_so(tmp_path, tiny_config):
    result, report = run(tmp_path, tiny_config, "approximate")
    assert result.exit_code == 0, result.output
    assert "(approximate) verified" in result.output
    assert report["merge_check"] == {**report["merge_check"], "approximate": True, "tolerance": 0.5, "verified": True}
    assert report["parity"]["merged"]["verified"] is True


def test_merge_tolerance_is_the_users_to_set(tmp_path, tiny_config):
    result, _ = run(tmp_path, tiny_config, "tiny-error")
    assert result.exit_code == 2, result.output  # 2e-3 is far beyond float32 rounding
    result, report = run(tmp_path / "again", tiny_config, "tiny-error", tolerance=0.01)
    assert result.exit_code == 0, result.output
    assert report["merge_check"]["tolerance"] == 0.01 and report["parity"]["merged"]["bound"] >= 0.01


def test_an_exact_merge_is_verified_in_the_report(tmp_path, tiny_config):
    result, report = run(tmp_path, tiny_config, "freeze")
    assert result.exit_code == 0, result.output
    assert report["parity"]["merged"]["verified"] is True and report["merge_check"]["approximate"] is False
    assert report["parity"]["merged"]["max_abs_diff"] <= report["parity"]["merged"]["bound"]


def test_compare_treats_nan_and_inf_as_failures():
    ok = torch.tensor([[1.0, -2.0]])
    for bad in (torch.tensor([[float("nan"), 0.0]]), torch.tensor([[float("inf"), 0.0]])):
        parity = compare([ok], [bad], [0], [0])
        assert parity.nonfinite == "candidate" and math.isnan(parity.max_abs_diff)
        assert "NaN or Inf" in verdict(parity, 1e9, reference="a", candidate="b")
        assert "NaN or Inf" in verdict(parity, None, reference="a", candidate="b")  # int8: no bound, still finite
        assert compare([bad], [ok], [0], [0]).nonfinite == "reference"
    assert verdict(compare([ok], [ok + 1e-6], [0], [0]), 1e-5, reference="a", candidate="b") == ""
    assert verdict(Parity(max_abs_diff=1e-3, label_agreement=1.0, examples=1), 1e-4, reference="a", candidate="b")


class NanOnnx:
    """The built-in ONNX exporter, whose file's logits come back as NaN (an int8 kernel gone wrong)."""

    name, suffix, options_schema = "nan-onnx", ".onnx", None

    def __init__(self) -> None:
        self.onnx = make_host(autoload=False).exporters.get("onnx")

    def export(self, model, inputs, io, path, options):
        return self.onnx.export(model, inputs, io, path, None)

    def load(self, path, threads=None):
        runner = self.onnx.load(path, threads)
        return lambda feed: runner(feed) * float("nan")


class NanPlugin:
    @hookimpl
    def adapt_register_exporters(self, register):
        register(NanOnnx())


def test_nan_in_an_exported_form_fails_the_export_and_keeps_the_previous_one(tmp_path, tiny_config):
    tiny_config.update(output_dir=str(tmp_path / "runs"), export={"formats": ["nan-onnx"], "quantize": "none", "mobile": False, "latency_runs": 2})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    result = CliRunner().invoke(make_cli(lambda: make_host([TinyPlugin(), NanPlugin()], autoload=False)), ["run", str(path)])
    assert result.exit_code == 2, result.output
    assert "model.onnx (exporter 'nan-onnx', plugin 'NanPlugin') does not reproduce the merged model: the logits of model.onnx hold NaN or Inf" in result.output
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "export.rejected" / "model.onnx").exists() and not (run_dir / "export").exists()
    report = json.loads((run_dir / "report.json").read_text())
    assert "deployable" not in report and report["parity"]["merged"]["verified"] is True
    assert report["rejected_export"]["parity"]["nan-onnx"]["verified"] is False
    Report.model_validate(report)
