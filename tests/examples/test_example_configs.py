"""Every config in examples/ is valid against the plugins it names (their options
included), and the decoder examples run as written on the real BBC News data with a
tiny random checkpoint in place of the hub one (no network at test time)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.config import load_config
from adapt.host import make_host
from adapt.plan import make_plan
from tests.tiny import decoder_checkpoint

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_is_valid(path):
    make_plan(load_config(path), make_host())


@pytest.mark.slow
def test_the_generation_example_runs_on_the_real_bbc_articles(tmp_path):
    """examples/bbc-gpt2-generation.yaml as written (headline -> article, LoRA, int8 gated on
    perplexity), with a tiny GPT-2 in place of distilgpt2 and shorter texts."""
    checkpoint = decoder_checkpoint(tmp_path / "gpt2", "gpt2", causal_lm=True, texts=["US duo in first spam conviction", "A brother and sister in the US have been convicted"] * 4)
    overrides = [f"backbone.checkpoint={checkpoint}", "backbone.options.max_length=48", f"output_dir={tmp_path / 'runs'}", "data.split.test=0.02"]
    args = ["run", str(Path(__file__).resolve().parents[2] / "examples" / "bbc-gpt2-generation.yaml")] + [a for o in overrides for a in ("--set", o)]
    result = CliRunner().invoke(make_cli(lambda: make_host()), args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "bbc-gpt2-generation" / "report.json").read_text())
    assert report["data"]["sizes"]["train"] > 1900 and report["parity"]["onnx"]["generation_agreement"] == 1.0
    assert report["metrics"]["merged"]["perplexity"] < report["metrics"]["onnx_int8"]["perplexity"] * 1.5
    # each file's greedy continuations of the first test prompts, as text, in report.html
    onnx = report["samples"]["onnx"]
    assert len(onnx) == 3 and all(s["prompt"].strip() and isinstance(s["continuation"], str) for s in onnx)
    assert [s["continuation"] for s in onnx] == [s["continuation"] for s in report["samples"]["onnx_optimized"]]
    page = (tmp_path / "runs" / "bbc-gpt2-generation" / "report.html").read_text()
    assert "Sample generations" in page and html.escape(onnx[0]["continuation"]) in page
    assert "## Samples (" in (tmp_path / "runs" / "bbc-gpt2-generation" / "report.md").read_text()
