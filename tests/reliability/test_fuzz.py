"""Property-based tests: whatever a user feeds the config loader or a data source's
parser, adapt returns a valid result or raises its own clear error (an AdaptError
with a message), never another exception. Case counts are fixed by ``CASES``
(docs/reliability.md states the total)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapt.config import SplitConfig, parse_yaml, validate_config
from adapt.data import load_splits
from adapt.errors import AdaptError
from adapt.host import make_host
from adapt.interfaces import DataRequest
from adapt.plan import validate_options

CASES = 150
FUZZ = settings(max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
HOST = make_host(autoload=False)

# -- the config loader -------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=12))
KEYS = ["name", "task", "backbone", "method", "data", "train", "export", "output_dir", "checkpoint", "options", "epochs", "lr", "batch_size", "source", "path", "split", "val", "test", "formats", "quantize", "fast", "compile", "attention", "r", "targets"]
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5)), max_leaves=20)


def must_be_clean(action) -> None:
    try:
        action()
    except AdaptError as exc:
        assert str(exc).strip()


@FUZZ
@given(st.text(max_size=300))
def test_any_text_as_a_config_file(text):
    must_be_clean(lambda: validate_config(parse_yaml(text, "config.yaml")))


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_any_yaml_mapping_as_a_config(data):
    must_be_clean(lambda: validate_config(parse_yaml(yaml.safe_dump(data), "config.yaml")))


@FUZZ
@given(st.fixed_dictionaries({"task": st.sampled_from(["text-classification", "image-classification", "nope"]), "backbone": st.fixed_dictionaries({"name": st.sampled_from(["bert", "mobilenet", "x"])}), "data": st.fixed_dictionaries({"source": st.sampled_from(["csv", "digits"])}), "train": st.dictionaries(st.sampled_from(["epochs", "lr", "batch_size", "warmup", "device", "precision", "fast"]), values, max_size=3)}))
def test_nearly_valid_configs(data):
    must_be_clean(lambda: validate_config(data))


def alias_config(anchors: list[tuple[int, int]], use: int) -> str:
    """A config whose values are built from YAML anchors and aliases: each level ``i``
    repeats an earlier level ``fanout`` times (a "billion laughs" when deep and wide)."""
    lines = ["l0: &l0 [lol, lol]"]
    for level, (earlier, fanout) in enumerate(anchors, 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{min(earlier, level - 1)}'] * fanout)}]")
    lines.append(f"task: *l{min(use, len(anchors))}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 12)), max_size=12), st.integers(0, 12))
def test_configs_made_of_yaml_aliases(anchors, use):
    """Whatever the aliases expand to, loading answers within a bounded time and memory:
    a config, or a ConfigError when it expands past the limit."""
    import time

    start = time.perf_counter()
    must_be_clean(lambda: validate_config(parse_yaml(alias_config(anchors, use), "config.yaml")))
    assert time.perf_counter() - start < 5


# -- the data sources ----------------------------------------------------------------

SOURCES = {"csv": ("text-classification", "data.csv"), "jsonl": ("text-classification", "data.jsonl"), "conll": ("token-classification", "data.conll")}


def read_file(source_name: str, content: bytes) -> None:
    task_name, filename = SOURCES[source_name]
    source, task = HOST.data_sources.get(source_name), HOST.tasks.get(task_name)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        path.write_bytes(content)
        request = DataRequest(task_name, path, options=validate_options(source, "data", {}, "data.options"))
        must_be_clean(lambda: load_splits(source, request, task, SplitConfig()))


csv_like = st.lists(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=8), min_size=1, max_size=4), max_size=12).map(lambda rows: "\n".join(",".join(r) for r in rows).encode())


@FUZZ
@given(st.one_of(st.binary(max_size=400), csv_like, csv_like.map(lambda b: b"text,label\n" + b)))
def test_csv_parser(content):
    read_file("csv", content)


json_lines = st.lists(st.one_of(st.dictionaries(st.sampled_from(["text", "label", "x"]), scalars, max_size=3).map(lambda d: yaml.safe_dump(d, default_flow_style=True).strip()), st.text(max_size=20)), max_size=10).map(lambda lines: "\n".join(lines).encode())


@FUZZ
@given(st.one_of(st.binary(max_size=400), json_lines))
def test_jsonl_parser(content):
    read_file("jsonl", content)


conll_like = st.lists(st.one_of(st.just(""), st.lists(st.text(alphabet="abcBIO-PER \t", max_size=6), min_size=1, max_size=3).map(" ".join)), max_size=30).map(lambda lines: "\n".join(lines).encode())


@FUZZ
@given(st.one_of(st.binary(max_size=400), conll_like))
def test_conll_parser(content):
    read_file("conll", content)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.binary(max_size=200)), min_size=1, max_size=6))
def test_text_and_image_folders(files):
    """Folders of arbitrary bytes as text files and as images: read, skipped and counted, or refused."""
    for source_name, task_name, suffix in (("text-folder", "text-classification", ".txt"), ("image-folder", "image-classification", ".png")):
        source, task = HOST.data_sources.get(source_name), HOST.tasks.get(task_name)
        with tempfile.TemporaryDirectory() as folder:
            for i, (label, content) in enumerate(files):
                (Path(folder) / label).mkdir(exist_ok=True)
                (Path(folder) / label / f"{i}{suffix}").write_bytes(content)
            request = DataRequest(task_name, Path(folder), options=validate_options(source, "data", {}, "data.options"))
            must_be_clean(lambda: load_splits(source, request, task, SplitConfig()))  # noqa: B023 - called at once
