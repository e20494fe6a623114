"""A method that declares no default target families (a plugin written before they
existed, as the issue's DoRA plugin was) gets the backbone's recommended families, and
`adapt run --dry-run` says so; a method with its own defaults keeps them."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from adapt import hookimpl
from adapt.cli import make_cli
from adapt.host import make_host
from adapt.plugins.methods.lora import LoRA
from tests.tiny import bert_checkpoint


class OldStyle:
    """LoRA's maths under another name, written before methods had ``default_families``."""

    name = "old-style"

    def __init__(self) -> None:
        self.lora = LoRA()
        self.options_schema = self.lora.options_schema

    def apply(self, built, options, default_targets):
        return self.lora.apply(built, options, default_targets)

    def adapter_state(self, built):
        return self.lora.adapter_state(built)

    def load_adapter_state(self, built, state):
        self.lora.load_adapter_state(built, state)

    def merge(self, built):
        return self.lora.merge(built)


class OldStylePlugin:
    @hookimpl
    def adapt_register_methods(self, register):
        register(OldStyle())


def dry_run(tmp_path, method: str):
    (tmp_path / "data.csv").write_text("text,label\n" + "".join(f"the team won {i},{'a' if i % 2 else 'b'}\n" for i in range(20)))
    config = {"name": "r", "output_dir": str(tmp_path / "runs"), "task": "text-classification", "backbone": {"name": "bert", "checkpoint": str(bert_checkpoint(tmp_path / "bert"))},
              "method": {"name": method}, "data": {"source": "csv", "path": str(tmp_path / "data.csv")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return CliRunner().invoke(make_cli(lambda: make_host([OldStylePlugin()], autoload=False)), ["run", str(tmp_path / "c.yaml"), "--dry-run"])


def test_a_method_without_default_families_gets_the_backbones_recommended_ones_and_is_told(tmp_path):
    result = dry_run(tmp_path, "old-style")
    assert result.exit_code == 0, result.output
    assert "method 'old-style' declares no default target families: it gets backbone 'bert''s recommended attention-qv" in result.output
    assert "old-style trains 5 module(s): query, value, classifier" in result.output  # q and v of both layers, and the head
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["adapters", "freeze"])
def test_a_method_with_its_own_defaults_or_none_by_design_is_not_redirected(tmp_path, method):
    """adapters has its own families; freeze declares () (it adapts none: it trains the head)."""
    result = dry_run(tmp_path, method)
    assert result.exit_code == 0, result.output
    assert "declares no default target families" not in result.output
