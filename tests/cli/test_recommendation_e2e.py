"""`adapt run` for recommendation end to end: interactions and item texts on disk (users
who read within one topic), a tiny random BERT item tower with LoRA, the popularity
baseline, the export of both towers and the item index, and the same recommendations
from PyTorch's `adapt predict`, `--onnx` and the standalone predict.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.host import make_host

TOPICS = ["sport", "market", "music", "garden", "space"]


def invoke(args, code=0):
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), args)
    assert result.exit_code == code, result.output
    return result


def write_data(folder):
    """Ten items per topic; each user reads 6 items of one topic; a few items are read by
    many users whatever their topic (what popularity can find)."""
    from tests.tiny import WORDS

    rng = np.random.default_rng(0)
    items = {f"{t}{k}": f"{t} {t} " + " ".join(rng.choice(WORDS, 3)) for t in TOPICS for k in range(10)}
    rows = ["user,item,timestamp"]
    for user in range(60):
        topic = TOPICS[user % len(TOPICS)]
        reads = [f"{topic}{k}" for k in rng.permutation(10)[:6]]
        rows += [f"u{user},{item},{step}" for step, item in enumerate(reads)]
    (folder / "log.csv").write_text("\n".join(rows) + "\n")
    (folder / "items.jsonl").write_text("".join(json.dumps({"item": i, "text": t}) + "\n" for i, t in items.items()))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.tiny import bert_checkpoint

    tmp_path = tmp_path_factory.mktemp("rec")
    write_data(tmp_path)
    config = {
        "name": "rec",
        "task": "recommendation",
        "backbone": {"name": "transformers", "checkpoint": str(bert_checkpoint(tmp_path / "bert")), "options": {"max_length": 12, "pooling": "mean"}},
        "method": {"name": "lora", "options": {"r": 2, "alpha": 4}},
        "data": {"source": "interactions", "path": str(tmp_path / "log.csv"), "items": str(tmp_path / "items.jsonl")},
        "head": {"dim": 16, "temperature": 0.1, "history": 4},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3},
        "export": {"latency_runs": 3, "mobile": False},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    invoke(["run", str(path)])
    return tmp_path / "runs" / "rec"


def test_the_report_ranks_users_targets_next_to_popularity(run):
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["sizes"] == {"train": 60 * 3, "val": 60 + 50, "test": 60 + 50}  # 3 training targets a user; users + catalogue
    for form in ("baseline", "adapted", "merged", "onnx", "onnx_int8"):
        assert {"recall@10", "mrr", "ndcg@10"} <= set(report["metrics"][form]), form
        assert report["metrics"][form]["users"] == 60
    # the readers stay in their topic and the topic's word is in each item's text: the towers find it, popularity cannot
    assert report["metrics"]["merged"]["recall@10"] > 2 * report["metrics"]["baseline"]["recall@10"]
    assert report["parity"]["onnx"]["min_cosine"] >= 0.9999
    timings = report["timings"]  # where the run's time went, stage by stage
    stages = sum(v for k, v in timings.items() if k != "total")
    assert set(timings) == {"load", "train", "merge", "export", "total"} and 0 < stages <= timings["total"] + 0.05  # each rounded to 0.01 s


def test_the_export_holds_the_item_index_and_the_user_tower(run):
    export = run / "export"
    index = np.load(export / "gallery.npy")
    ids = json.loads((export / "gallery.json").read_text())
    assert index.shape == (50, 16) and len(ids["ids"]) == 50 and ids["kind"] == "items" and ids["history"] == 4
    assert np.allclose(np.linalg.norm(index, axis=1), 1.0, atol=1e-5)
    assert (export / "user_tower.onnx").stat().st_size > 0


def test_pytorch_onnx_and_predict_py_recommend_the_same_items(run):
    history = "sport1,sport2,sport3"
    eager = json.loads(invoke(["predict", str(run), history]).output)
    onnx = json.loads(invoke(["predict", str(run), "--onnx", history]).output)
    model = str(run / "export" / "model.onnx")
    device = json.loads(subprocess.run([sys.executable, str(run / "export" / "predict.py"), model, history], capture_output=True, text=True, check=True).stdout)
    assert eager == onnx == device
    assert len(device["recommended"]) == 10 and not {"sport1", "sport2", "sport3"} & {r["item"] for r in device["recommended"]}
    assert sum(r["item"].startswith("sport") for r in device["recommended"]) >= 5  # the reader's topic comes first
    result = invoke(["predict", str(run), "sport1,nothing"], code=2)
    assert "unknown item 'nothing'" in result.output and "hint" in result.output


@pytest.fixture(scope="module")
def id_run(tmp_path_factory):
    """The same readers without item texts: the item-table tower (one learnt vector per id)."""
    tmp_path = tmp_path_factory.mktemp("rec-ids")
    write_data(tmp_path)
    config = {
        "name": "rec-ids",
        "task": "recommendation",
        "backbone": {"name": "item-table", "options": {"width": 16, "buckets": 4096}},
        "method": {"name": "freeze"},
        "data": {"source": "interactions", "path": str(tmp_path / "log.csv")},
        "head": {"temperature": 0.1, "history": 4},
        "train": {"epochs": 15, "batch_size": 16, "lr": 5e-2},
        "export": {"latency_runs": 3, "mobile": False},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    invoke(["run", str(path)])
    return tmp_path / "runs" / "rec-ids"


def test_the_id_table_tower_learns_which_items_go_together(id_run):
    report = json.loads((id_run / "report.json").read_text())
    assert report["metrics"]["merged"]["recall@10"] > 2 * report["metrics"]["baseline"]["recall@10"]  # co-reads, no text
    assert report["parity"]["onnx"]["min_cosine"] >= 0.9999 and np.load(id_run / "export" / "gallery.npy").shape == (50, 16)
    history = "music1,music2"
    eager = json.loads(invoke(["predict", str(id_run), history]).output)
    device = json.loads(subprocess.run([sys.executable, str(id_run / "export" / "predict.py"), str(id_run / "export" / "model.onnx"), history], capture_output=True, text=True, check=True).stdout)
    assert eager == device and sum(r["item"].startswith("music") for r in device["recommended"]) >= 5
    figures = json.loads(invoke(["bench", str(id_run), "--rounds", "1", "--runs", "2"]).output.strip().splitlines()[-1])
    assert {"pytorch", "onnx"} <= set(figures["ms"]) and "seq_len" not in figures  # ids in, neither tokens nor pixels
