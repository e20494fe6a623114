"""The start-up line that names the parameters a checkpoint lacked stays one readable line."""

from adapt.pipeline import summarise


def test_a_few_modules_are_named_one_by_one():
    assert summarise(["model.classifier.weight", "model.classifier.bias"]) == "model.classifier (weight, bias)"


def test_many_modules_are_counted_under_their_top_module():
    names = [f"head.tower.{i}.conv.weight" for i in range(8)] + ["head.scales", "model.fc.weight", "model.fc.bias"]
    assert summarise(names) == "head (9 tensors in 9 modules), model (2 tensors in 1 module)"


def test_the_latency_table_reads_the_runs_own_primary_metric_and_direction():
    """report.md's latency table names the task's primary metric from report.json (the task
    recorded it), so a plugin's task gets its column filled: no table of task names in core."""
    from adapt.report import latency_table

    report = {
        "primary_metric": "micro_f1", "lower_is_better": False, "forms": {"onnx": "export/model.onnx"}, "files": {"export/model.onnx": 123},
        "latency_ms": {"pytorch": {"median": 2.0, "p90": 2.5, "threads": 2}, "onnx": {"median": 1.0, "p90": 1.2, "threads": 2}},
        "metrics": {"merged": {"micro_f1": 0.75}, "onnx": {"micro_f1": 0.7421}},
    }
    table = latency_table(report)
    assert "test micro_f1 |" in table
    assert "| onnx | 1.00 | 1.20 |" in table and "| 0.7421 |" in table and "| 0.75 |" in table
    assert "(lower is better)" in latency_table({**report, "primary_metric": "perplexity", "lower_is_better": True})


def test_report_md_shows_a_tasks_own_parity_entries_by_their_names():
    """A task's agreement (its agreement_name) and its export check's entries reach report.md
    by their own names, with no list of built-in names in core."""
    from adapt.report import agreements_text

    shown = agreements_text({"max_abs_diff": 1e-6, "label_agreement": 1.0, "examples": 8, "bound": 1e-4, "verified": True, "box_agreement": 0.995, "min_cosine": 0.99998})
    assert shown == "; box agreement 99.50%; min cosine 0.99998"


def test_an_agreement_is_named_by_what_it_measured():
    """A task's own agreement is never called a label agreement: report.md and the run's
    line name it (a detector's box agreement, an embedding's smallest cosine)."""
    from adapt.report import agreements_text, agreement_text

    assert agreement_text("labels", 1.0) == "label agreement 100.00%"
    assert agreement_text("box_agreement", 0.995) == "box agreement 99.50%" and agreement_text("min_cosine", 0.99998) == "min cosine 0.99998"
    assert agreements_text({"label_agreement": 0.99, "agreement_of": "box_agreement", "box_agreement": 0.98}) == "; final outputs' box agreement 98.00%"
