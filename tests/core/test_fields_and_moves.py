"""Data sources serve tasks by the fields they give, not by the task's name (a task adapt has
never heard of too), csv and jsonl read a list-valued label column when a task asks for
``labels``; and the modules that moved into family packages keep their old names."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from adapt import hookimpl
from adapt.config import validate_config
from adapt.errors import ConfigError
from adapt.interfaces import DataRequest, Task
from adapt.plan import make_plan
from adapt.testing import make_test_host


class Tagged(Task):
    name = "tagged-text"
    fields = ("text", "labels")
    model_task = "text-classification"


class Pictures(Task):
    name = "pictures"
    fields = ("image", "label")
    model_task = "image-classification"


class Plugin:
    @hookimpl
    def adapt_register_tasks(self, register):
        register(Tagged())
        register(Pictures())


def config(task, source="csv"):
    return validate_config({"name": "t", "task": task, "backbone": {"name": "bert"}, "method": {"name": "lora"}, "data": {"source": source}})


def test_a_new_task_is_served_by_a_source_that_gives_its_fields(tmp_path):
    host = make_test_host(Plugin())
    raw = config("tagged-text").model_dump()
    raw["data"]["path"] = str(tmp_path)
    plan = make_plan(validate_config(raw), host)
    assert plan.data_request().fields == ("text", "labels")


def test_a_source_without_a_tasks_fields_is_refused_naming_them():
    host = make_test_host(Plugin())
    with pytest.raises(ConfigError) as info:
        make_plan(validate_config({"name": "t", "task": "pictures", "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050"}, "method": {"name": "lora"}, "data": {"source": "csv", "path": "x.csv"}}), host)
    assert "data source 'csv' gives the fields" in info.value.message and "(image missing)" in info.value.message


@pytest.mark.parametrize("suffix, rows", [
    (".csv", 'text,tags\nthe match and the market,sport|business\na quiet day,\n'),
    (".jsonl", '{"text": "the match and the market", "tags": ["sport", "business"]}\n{"text": "a quiet day", "tags": []}\n'),
])
def test_csv_and_jsonl_read_a_list_valued_label_column(tmp_path, suffix, rows):
    host = make_test_host(Plugin())
    path = tmp_path / f"data{suffix}"
    path.write_text(rows)
    source = host.data_sources.get(suffix[1:])
    options = source.options_schema() if source.options_schema else None
    request = DataRequest("tagged-text", path, label_column="tags", options=options, fields=("text", "labels"))
    examples = source.read(request)["train"]
    assert examples == [{"text": "the match and the market", "labels": ["sport", "business"]}, {"text": "a quiet day", "labels": []}]


def test_moved_modules_keep_their_old_names_with_a_warning():
    with pytest.warns(DeprecationWarning, match="adapt.hf_text moved to adapt.plugins.transformers.hf_text"):
        import adapt.hf_text as old
    import adapt.plugins.transformers.hf_text as new

    assert old is new
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from adapt.detector import Detector
        from adapt.testing import tiny_text_checkpoint
    assert Detector.__module__ == "adapt.plugins.detection.detector" and tiny_text_checkpoint.__module__ == "adapt.plugins.transformers.testing"
    done = subprocess.run([sys.executable, "-m", "adapt.detection_set", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--images" in done.stdout, done.stderr
