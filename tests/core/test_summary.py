"""The start-up line that names the parameters a checkpoint lacked stays one readable line."""

from adapt.pipeline import summarise


def test_a_few_modules_are_named_one_by_one():
    assert summarise(["model.classifier.weight", "model.classifier.bias"]) == "model.classifier (weight, bias)"


def test_many_modules_are_counted_under_their_top_module():
    names = [f"head.tower.{i}.conv.weight" for i in range(8)] + ["head.scales", "model.fc.weight", "model.fc.bias"]
    assert summarise(names) == "head (9 tensors in 9 modules), model (2 tensors in 1 module)"


def test_the_report_names_each_built_in_tasks_own_primary_metric():
    """`adapt bench` and report.md read the primary metric from report.PRIMARY_METRICS (a
    report names no task plugin): it must agree with every built-in task."""
    from adapt.host import make_host
    from adapt.report import PRIMARY_METRICS

    tasks = make_host().tasks
    for name in tasks.names():
        assert PRIMARY_METRICS.get(name, "accuracy") == tasks.get(name).primary_metric, name
