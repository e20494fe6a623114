"""No traceback from predict, bench and the new sources: generation stays within the model's
positions with the same note in `adapt predict`, `--onnx` and predict.py, every setting is
bounded, a bad input or a bad --draw folder is one message, bench checks a request before
allocating it, and the interactions files' bad lines are named. Fixtures are built here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.errors import DataError
from adapt.host import make_host
from adapt.interfaces import DataRequest
from adapt.onnx_predict import InputError, PredictError, check_settings, draw_path, read_gallery
from adapt.plugins.embeddings.interactions_source import InteractionsOptions
from tests.conftest import TinyPlugin, exported_tiny_run
from tests.tiny import decoder_checkpoint

TEXTS = [f"the team won the match {i % 7}" if i % 2 else f"shares fell in the market {i % 5}" for i in range(40)]
POSITIONS = 128  # the tiny GPT-2's n_positions (tests/tiny.py)


def cli():
    return make_cli(lambda: make_host([TinyPlugin()], autoload=False))


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    """A finished text-generation run of the tiny GPT-2, exported (fp32 only)."""
    folder = tmp_path_factory.mktemp("lm")
    checkpoint = decoder_checkpoint(folder / "gpt2", "gpt2", causal_lm=True, texts=TEXTS)
    (folder / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    config = {"name": "lm", "output_dir": str(folder / "runs"), "task": "text-generation", "backbone": {"name": "transformers", "checkpoint": str(checkpoint), "options": {"max_length": 32}},
              "method": {"name": "lora", "options": {"r": 2}}, "data": {"source": "jsonl", "path": str(folder / "data.jsonl")}, "train": {"epochs": 1, "batch_size": 8}, "export": {"quantize": "none", "mobile": False, "latency_runs": 2}}
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli(), ["run", str(folder / "c.yaml")])
    assert result.exit_code == 0, result.output
    return folder / "runs" / "lm"


def three_ways(run: Path, *args: str) -> list[list[dict]]:
    """The rows of `adapt predict`, `adapt predict --onnx` and the standalone predict.py."""
    torch_out = CliRunner().invoke(cli(), ["predict", str(run), *args])
    onnx_out = CliRunner().invoke(cli(), ["predict", str(run), "--onnx", *args])
    export = run / "export"
    standalone = subprocess.run([sys.executable, str(export / "predict.py"), str(export / "model.onnx"), *args], capture_output=True, text=True, timeout=120)
    assert torch_out.exit_code == 0 and onnx_out.exit_code == 0 and standalone.returncode == 0, torch_out.output + onnx_out.output + standalone.stderr
    return [[json.loads(line) for line in text.splitlines()] for text in (torch_out.output, onnx_out.output, standalone.stdout)]


def test_generation_stops_at_the_models_positions_with_the_same_note_everywhere(lm):
    assert json.loads((lm / "export" / "preprocess.json").read_text())["positions"] == POSITIONS
    prompt = "the team won"
    rows = three_ways(lm, prompt, "--max-new-tokens", str(POSITIONS * 2))
    assert rows[0] == rows[1] == rows[2], rows
    row = rows[0][0]
    prompt_tokens = len(__import__("tokenizers").Tokenizer.from_file(str(lm / "export" / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids)
    assert row["notes"] == [f"stopped at the model's {POSITIONS} positions after {POSITIONS - prompt_tokens} new tokens (asked for {POSITIONS * 2})"]


def test_a_prompt_longer_than_the_models_positions_is_cut_with_a_note_everywhere(lm):
    prompt = " ".join(["shares fell in the market"] * 60)  # far more than 128 tokens
    rows = three_ways(lm, prompt, "--max-new-tokens", "4")
    assert rows[0] == rows[1] == rows[2], rows
    notes = rows[0][0]["notes"]
    assert notes[0].startswith("the prompt has ") and f"the model {POSITIONS} positions: its first" in notes[0]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--temperature", "nan", "--temperature is nan: give a number from 0 to 100"),
    ("--seed", str(2**70), "--seed is 1180591620717411303424: give a whole number from 0 to 4294967295"),
    ("--temperature", "1e9", "--temperature is 1000000000.0: give a number from 0 to 100"),
])
def test_generation_settings_are_bounded_in_adapt_and_in_predict_py(lm, flag, value, message):
    for args in (["predict", str(lm), "a", flag, value], ["predict", str(lm), "--onnx", "a", flag, value]):
        result = CliRunner().invoke(cli(), args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    export = lm / "export"
    standalone = subprocess.run([sys.executable, str(export / "predict.py"), str(export / "model.onnx"), "a", flag, value], capture_output=True, text=True, timeout=120)
    assert standalone.returncode == 2 and message in standalone.stderr, standalone.stderr
    top_p = subprocess.run([sys.executable, str(export / "predict.py"), str(export / "model.onnx"), "a", "--top-p", "0"], capture_output=True, text=True, timeout=120)
    assert top_p.returncode == 2 and "--top-p is 0.0" in top_p.stderr, top_p.stderr


def test_every_setting_bound_is_checked():
    check_settings({"max_new_tokens": 64, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 2**32 - 1, "min_score": 0.3})
    for bad in ({"max_new_tokens": 0}, {"top_k": -1}, {"top_p": 1.5}, {"seed": -1}, {"min_score": float("inf")}, {"max_new_tokens": 2.5}, {"temperature": "hot"}):
        with pytest.raises(InputError):
            check_settings(bad)


def test_a_chat_template_that_reaches_for_globals_is_stopped_with_one_message(tmp_path):
    from adapt.plugins.transformers.causal_lm import encode
    from adapt.plugins.transformers.testing import tiny_text_checkpoint
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_text_checkpoint(tmp_path / "t", 2, words=["a", "b"]))
    tokenizer.chat_template = "{{ cycler.__init__.__globals__.os.popen('echo owned').read() }}"
    with pytest.raises(DataError, match="jinja's sandbox forbids"):
        encode(tokenizer, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 32)


# -- predict's --draw and gallery (a detection run's bad inputs: tests/cli/test_detection_e2e.py) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return exported_tiny_run(tmp_path_factory.mktemp("edges"))


def test_draw_paths_of_inputs_with_the_same_name_do_not_collide(tmp_path):
    out = tmp_path / "boxes.png"
    sources = ["a/cat.jpg", "b/cat.jpg", "c/dog.jpg"]
    paths = [draw_path(out, s, sources) for s in sources]
    assert len(set(paths)) == 3 and paths[2].name == "boxes_dog.png" and paths[0].name == "boxes_1_cat.png"
    assert draw_path(out, "x.jpg", ["x.jpg"]) == out and draw_path(out, "x.jpg", ["x.jpg", "x.jpg"]) == out


def test_a_gallery_shorter_than_its_embeddings_is_named(tmp_path):
    import numpy as np

    np.save(tmp_path / "gallery.npy", np.zeros((5, 4), np.float32))
    (tmp_path / "gallery.json").write_text(json.dumps({"ids": ["a", "b"]}))
    with pytest.raises(PredictError, match="gallery.npy has 5 vectors, gallery.json 2 ids"):
        read_gallery(tmp_path)


# -- bench -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage that is no protobuf"], ids=["empty", "truncated"])
def test_bench_on_an_empty_or_truncated_onnx_file_is_one_message(finished, tmp_path, content):
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    (run / "export" / "model.onnx").write_bytes(content)
    result = CliRunner().invoke(cli(), ["bench", str(run), "--rounds", "1", "--runs", "1"])
    assert result.exit_code == 2 and "model.onnx" in result.output and "export the run again" in result.output, result.output
    assert "Traceback" not in result.output


def test_bench_refuses_a_size_the_graph_fixes_and_a_request_memory_cannot_hold_before_allocating(finished):
    fixed = CliRunner().invoke(cli(), ["bench", str(finished), "--image-size", "16", "--rounds", "1", "--runs", "1"])
    assert fixed.exit_code == 2 and "fixes input 'pixel_values' at 8 along axis 2; the bench asked for 16" in fixed.output, fixed.output
    import time

    started = time.perf_counter()
    huge = CliRunner().invoke(cli(), ["bench", str(finished), "--batch-size", "100000000", "--rounds", "1", "--runs", "1"])
    assert huge.exit_code == 2 and "GiB with the model's activations" in huge.output and "is available" in huge.output, huge.output
    assert time.perf_counter() - started < 60  # refused, not allocated


# -- interactions and items files ---------------------------------------------------------------


def read_interactions(tmp_path: Path, rows: str, items: str | None = None, items_name: str = "items.csv"):
    (tmp_path / "log.csv").write_text(rows)
    if items is not None:
        (tmp_path / items_name).write_text(items)
    source = make_host().data_sources.get("interactions")
    request = DataRequest("recommendation", tmp_path / "log.csv", items=tmp_path / items_name if items is not None else None, options=InteractionsOptions())
    return source.read(request)


LOG = "user,item\n" + "".join(f"u{u},i{k}\n" for u in range(2) for k in range(4))


def test_an_items_line_that_is_not_an_object_is_named(tmp_path):
    with pytest.raises(DataError, match=r"items.jsonl, line 2: a JSON list, not an object"):
        read_interactions(tmp_path, LOG, '{"item": "i0", "text": "a"}\n[1, 2]\n', "items.jsonl")


def test_an_item_with_two_texts_is_an_error_naming_both_entries(tmp_path):
    items = "item,text\n" + "".join(f"i{k},text {k}\n" for k in range(4)) + "i2,another text\n"
    with pytest.raises(DataError, match=r"item 'i2' has two different texts \(entries 3 and 5\)"):
        read_interactions(tmp_path, LOG, items)


def test_an_item_text_longer_than_the_csv_modules_limit_is_read(tmp_path):
    long = "word " * 40_000  # 200 KB, past the csv module's 128 KiB default
    items = "item,text\n" + "".join(f"i{k},{long if k == 1 else f'text {k}'}\n" for k in range(4))
    splits = read_interactions(tmp_path, LOG, items)
    assert len(splits["test"][0]["catalogue"].texts[1]) == len(long.strip())
