"""Meta-tests: every hook is documented with its exact signature, and tested."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from adapt import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("adapt_")]


def signature_text(fn) -> str:
    return f"def {fn.__name__}{inspect.signature(fn)}".replace("'", "")


def test_there_are_hooks():
    assert len(HOOKS) >= 9


@pytest.mark.parametrize("hook", HOOKS, ids=lambda f: f.__name__)
def test_hook_is_documented_with_its_exact_signature(hook):
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert f"### {hook.__name__}\n" in docs
    assert signature_text(hook) in docs, f"docs/plugins.md must show: {signature_text(hook)}"


@pytest.mark.parametrize("hook", HOOKS, ids=lambda f: f.__name__)
def test_hook_is_exercised_by_a_test(hook):
    this = Path(__file__).resolve()
    uses = [p for p in (ROOT / "tests").rglob("test_*.py") if p.resolve() != this and f"def {hook.__name__}(" in p.read_text()]
    assert uses, f"no test implements {hook.__name__}"


@pytest.mark.parametrize("hook", HOOKS, ids=lambda f: f.__name__)
def test_hook_has_a_docstring(hook):
    assert (hook.__doc__ or "").strip()


def config_keys(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from config_keys(annotation, path + ".")
        else:
            yield path


def test_every_config_key_is_documented():
    from adapt.config import RunConfig

    docs = (ROOT / "docs" / "config.md").read_text()
    missing = [k for k in config_keys(RunConfig) if f"| `{k}` |" not in docs]
    assert not missing, f"docs/config.md lacks rows for: {missing}"


def test_every_cli_command_is_documented():
    from adapt.cli import make_cli
    from adapt.host import make_host

    docs = (ROOT / "docs" / "cli.md").read_text()
    for name in make_cli(lambda: make_host(autoload=False)).commands:
        assert f"`adapt {name}" in docs, f"docs/cli.md lacks `adapt {name}`"


# -- the walkthrough's plugins, run exactly as docs/plugins.md shows them ----------------


def doc_example(title: str):
    """The python block after ``<!-- example: TITLE -->`` in docs/plugins.md, as a module."""
    import re
    import types

    docs = (ROOT / "docs" / "plugins.md").read_text()
    code = re.search(rf"<!-- example: {re.escape(title)} -->\n```python\n(.*?)```", docs, re.S).group(1)
    module = types.ModuleType(f"doc_example_{title.replace(' ', '_')}")
    exec(compile(code, f"docs/plugins.md ({title})", "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module


def test_the_walkthrough_backbone_meets_the_contract_and_runs(tmp_path):
    import json

    import numpy as np
    import yaml
    from click.testing import CliRunner

    from adapt.cli import make_cli
    from adapt.testing import check_backbone, make_test_host

    plugin = doc_example("backbone")
    host = make_test_host(plugin)
    examples = [{"image": np.full((8, 8), 200, np.uint8), "label": 2}, {"image": np.zeros((12, 10, 3), np.uint8), "label": 0}]
    built = check_backbone(host.backbones.get("tv-mobilenet"), task="image-classification", examples=examples, methods=host.methods.names())
    assert built.families["depthwise-conv"] and built.families["pointwise-conv"]
    config = {"name": "doc", "output_dir": str(tmp_path / "runs"), "task": "image-classification", "backbone": {"name": "tv-mobilenet"}, "method": {"name": "lora"}, "data": {"source": "digits"}, "train": {"epochs": 1, "batch_size": 64}, "export": {"quantize": "none", "mobile": False, "latency_runs": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_test_host(plugin)), ["run", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "doc" / "report.json").read_text())
    assert report["merge"] == "folded" and report["parity"]["merged"]["verified"] and report["parity"]["onnx"]["verified"]


def test_the_walkthrough_method_meets_the_contract(tmp_path):
    from adapt.testing import check_method, make_test_host, tiny_image_batch, tiny_image_model

    method = make_test_host(doc_example("method")).methods.get("scale")
    schema = method.options_schema
    merged = check_method(method, build=tiny_image_model, batch=tiny_image_batch(), tmp_path=tmp_path, bad_options=schema(targets=["no_such_layer"]))
    assert merged.folded
    check_method(method, build=tiny_image_model, batch=tiny_image_batch(), options=schema(targets="depthwise-conv"))


def test_the_walkthrough_data_source_meets_the_contract(tmp_path):
    from adapt.interfaces import DataRequest
    from adapt.testing import check_data_source, make_test_host

    source = make_test_host(doc_example("data source")).data_sources.get("tsv")
    (tmp_path / "train.tsv").write_text("text\tlabel\nthe team won\tsport\n\tsport\nshares fell\tmoney\n")
    (tmp_path / "test.tsv").write_text("text\tlabel\nthe match\tsport\n")
    request = DataRequest("text-classification", tmp_path)
    splits = check_data_source(source, request)
    assert [len(splits[s]) for s in ("train", "test")] == [2, 1] and request.skipped == [f"{tmp_path / 'train.tsv'}, line 3: empty text"]


def test_the_walkthrough_task_meets_the_contract_and_predicts_on_every_path(tmp_path):
    """The regression task from the docs: check_task, a whole run on a tiny BERT, then
    `adapt predict` (PyTorch) and `--onnx` print the same named outputs by default."""
    import json

    import torch
    import yaml
    from click.testing import CliRunner

    from adapt.cli import make_cli
    from adapt.plugins.transformers.testing import tiny_text_checkpoint
    from adapt.testing import check_task, make_test_host

    plugin = doc_example("task")
    examples = [{"text": f"text {i}", "label": str(i / 4)} for i in range(4)]
    check_task(plugin.TextRegression(), examples=examples, logits=torch.tensor([[0.1], [0.2], [0.6], [0.7]]), labels=torch.tensor([0.0, 0.25, 0.5, 0.75]))
    rows = "\n".join(f"{'good ' * (i % 4)}news item {i},{i % 4}" for i in range(64))
    (tmp_path / "scores.csv").write_text("text,label\n" + rows + "\n")
    config = {
        "name": "doc", "output_dir": str(tmp_path / "runs"), "task": "text-regression",
        "backbone": {"name": "transformers", "checkpoint": str(tiny_text_checkpoint(tmp_path / "tiny")), "options": {"max_length": 16}},
        "method": {"name": "lora"}, "data": {"source": "csv", "path": str(tmp_path / "scores.csv")},
        "train": {"epochs": 2, "batch_size": 16}, "export": {"quantize": "none", "mobile": False, "latency_runs": 2},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    cli = make_cli(lambda: make_test_host(plugin))
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "doc"
    report = json.loads((run / "report.json").read_text())
    assert report["parity"]["merged"]["verified"] and report["parity"]["onnx"]["verified"] and report["postprocess"] == {"kind": "outputs"}
    outputs = []
    for extra in ([], ["--onnx"]):
        result = CliRunner().invoke(cli, ["predict", str(run), *extra, "good good news"])
        assert result.exit_code == 0, result.output
        row = json.loads(result.output.strip().splitlines()[-1])
        assert row["input"] == "good good news" and list(row["outputs"]) == ["logits"]
        outputs.append(row["outputs"]["logits"][0][0])
    assert abs(outputs[0] - outputs[1]) <= 1e-4
