"""adapt.testing ships what its docs use: tiny image and text models with their
target families, batches for them, and check_method with the method's defaults."""

from __future__ import annotations

import pytest

from adapt.plugins.transformers.testing import tiny_text_batch, tiny_text_model
from adapt.testing import check_method, make_test_host, tiny_image_batch, tiny_image_model

HOST = make_test_host()


#: Every method adapt registers: a new built-in joins the conformance run by registering.
BUILTIN_METHODS = HOST.methods.names()


def test_the_conformance_run_covers_the_built_in_methods():
    assert {"freeze", "lora", "dora", "ia3", "loha", "lokr", "vera", "oft", "adapters"} <= set(BUILTIN_METHODS)


@pytest.mark.parametrize("name", BUILTIN_METHODS)
def test_builtin_methods_pass_with_their_defaults_on_the_tiny_image_model(name, tmp_path):
    merged = check_method(HOST.methods.get(name), build=tiny_image_model, batch=tiny_image_batch(), tmp_path=tmp_path)
    assert merged.model is not None


@pytest.mark.parametrize("name", [n for n in BUILTIN_METHODS if n != "freeze"])
def test_builtin_methods_pass_with_their_defaults_on_the_tiny_text_model(name, tmp_path):
    folder = tmp_path / "bert"
    built = tiny_text_model(folder)
    assert built.families["attention-qv"] and built.head == ("model.classifier",)
    check_method(HOST.methods.get(name), build=lambda: tiny_text_model(folder), batch=tiny_text_batch(built), tmp_path=tmp_path)


def over_folded_lora():
    """LoRA whose merge folds 10% too much of each delta: the LoHa bug the issue met."""
    import torch

    from adapt.plugins.methods.lora import LoRA

    class OverFolded(LoRA):
        name = "over-folded"

        def merge(self, built):
            result = super().merge(built)
            layers = dict(result.model.named_modules())
            with torch.no_grad():
                for name, module in self._lora_modules(built.model).items():
                    layers[name].weight += 0.1 * module.delta_weight().to(layers[name].weight.dtype)
            return result

    return OverFolded()


@pytest.mark.parametrize("steps", [0, 3])
def test_check_method_catches_a_fold_10_percent_too_large_because_it_perturbs_the_adapter_first(monkeypatch, steps):
    """Even with no training step at all: the perturbation moves LoRA's B off zero."""
    import adapt.testing

    with pytest.raises(AssertionError, match="merged model differs from the adapted one"):
        check_method(over_folded_lora(), build=tiny_image_model, batch=tiny_image_batch(), steps=steps)
    if steps == 0:  # without the perturbation, B is still zero and a wrong fold of it is no fold at all
        monkeypatch.setattr(adapt.testing, "perturb", lambda model: None)
        check_method(over_folded_lora(), build=tiny_image_model, batch=tiny_image_batch(), steps=0)
