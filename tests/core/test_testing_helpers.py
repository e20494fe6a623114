"""adapt.testing ships what its docs use: tiny image and text models with their
target families, batches for them, and check_method with the method's defaults."""

from __future__ import annotations

import pytest

from adapt.testing import check_method, make_test_host, tiny_image_batch, tiny_image_model, tiny_text_batch, tiny_text_model

HOST = make_test_host()


@pytest.mark.parametrize("name", ["lora", "adapters", "freeze"])
def test_builtin_methods_pass_with_their_defaults_on_the_tiny_image_model(name, tmp_path):
    merged = check_method(HOST.methods.get(name), build=tiny_image_model, batch=tiny_image_batch(), tmp_path=tmp_path)
    assert merged.model is not None


@pytest.mark.parametrize("name", ["lora", "adapters"])
def test_builtin_methods_pass_with_their_defaults_on_the_tiny_text_model(name, tmp_path):
    folder = tmp_path / "bert"
    built = tiny_text_model(folder)
    assert built.families["attention-qv"] and built.head == ("model.classifier",)
    check_method(HOST.methods.get(name), build=lambda: tiny_text_model(folder), batch=tiny_text_batch(built), tmp_path=tmp_path)
