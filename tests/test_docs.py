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
