"""The start-up line that names the parameters a checkpoint lacked stays one readable line."""

from adapt.pipeline import summarise


def test_a_few_modules_are_named_one_by_one():
    assert summarise(["model.classifier.weight", "model.classifier.bias"]) == "model.classifier (weight, bias)"


def test_many_modules_are_counted_under_their_top_module():
    names = [f"head.tower.{i}.conv.weight" for i in range(8)] + ["head.scales", "model.fc.weight", "model.fc.bias"]
    assert summarise(names) == "head (9 tensors in 9 modules), model (2 tensors in 1 module)"
