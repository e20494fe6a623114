"""recommendation: the ranking against hand-worked answers, the batch layout, the loss
against a hand-computed InfoNCE, the user tower's ONNX graph against numpy, the
interactions source's leave-last-out splits and its errors, and the generated BBC set."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from adapt.plugins.embeddings.bbc_interactions import make_bbc_interactions
from adapt.plugins.embeddings.metrics import rank_metrics
from adapt.errors import DataError
from adapt.host import make_host
from adapt.interfaces import DataRequest
from adapt.plugins.embeddings.interactions_source import Catalogue, InteractionsOptions
from adapt.plugins.embeddings.recommendation import HISTORY, TARGET, RecommendationOptions
from adapt.plugins.embeddings.recommend import export_user_tower, popularity_scores, rank_of_targets, user_vectors


def task(**options):
    plugin = make_host().tasks.get("recommendation")
    return plugin.configure(RecommendationOptions(**options))


CATALOGUE = Catalogue(ids=("a", "b", "c", "d"), texts=("apple pie", "banana bread", "cherry tart", "date cake"))


def test_rank_counts_ties_ahead_only_when_their_column_comes_first():
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0], [0.2, 0.8, 0.9, 0.1]])
    ranks = rank_of_targets(scores, seen=[[], [0], [2]], targets=[2, 3, 1])
    # row 0: 0.9 ahead, 0.5 tied at column 1 < 2 ahead -> 3; row 1: all tied, column 0 seen -> columns 1, 2 ahead -> 3;
    # row 2: column 2 (0.9) seen, nothing else above 0.8 -> 1
    assert ranks.tolist() == [3, 3, 1]
    assert rank_of_targets(scores[:1], [[]], [-1]).tolist() == [5]  # a target outside the catalogue ranks last
    metrics = rank_metrics(np.array([1, 3, 20]))
    assert metrics["recall@1"] == pytest.approx(1 / 3) and metrics["recall@5"] == pytest.approx(2 / 3) and metrics["recall@10"] == pytest.approx(2 / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 20) / 3)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / np.log2(4)) / 3)


def test_popularity_counts_each_user_once():
    counts = popularity_scores([("u1", 0), ("u1", 0), ("u2", 0), ("u2", 2)], 3)
    assert counts.tolist() == [2, 0, 1]


def test_flatten_lays_out_one_text_per_item_with_each_users_roles():
    users = [{"user": "u1", "history": [0, 1], "target": 2, "catalogue": CATALOGUE}, {"user": "u2", "history": [2], "target": 0, "catalogue": CATALOGUE}]
    rows = task(history=1).flatten(users + [{"item": 3, "catalogue": CATALOGUE}])
    by_text = {r["text"]: r["label"] for r in rows}
    assert len(rows) == 4  # items 1, 2, 0 (only the last history item pools: history=1) and catalogue item 3
    assert by_text["banana bread"] == [1, 0, HISTORY, 0]
    assert by_text["cherry tart"] == [2, 0, TARGET, HISTORY]
    assert by_text["apple pie"] == [0, 0, 0, TARGET]
    assert by_text["date cake"] == [3, 1, 0, 0]


def test_loss_is_each_users_target_against_the_batch_with_its_history_masked():
    recommend = task(temperature=0.5)
    logits = torch.randn(4, 6)
    labels = torch.tensor([[0, 0, HISTORY, 0], [1, 0, HISTORY, TARGET], [2, 0, TARGET, 0], [3, 0, 0, HISTORY]])
    items = F.normalize(logits, dim=-1)
    user1 = F.normalize(items[0] + items[1], dim=-1)  # history rows 0 and 1, target row 2
    user2 = F.normalize(items[3], dim=-1)  # history row 3, target row 1
    scores1 = (items @ user1) / 0.5
    scores2 = (items @ user2) / 0.5
    scores1[[0, 1]] = -float("inf")
    scores2[3] = -float("inf")
    expected = (F.cross_entropy(scores1[None], torch.tensor([2])) + F.cross_entropy(scores2[None], torch.tensor([1]))) / 2
    assert float(recommend.loss(logits, labels)) == pytest.approx(float(expected), rel=1e-5)


def test_metrics_rank_each_users_target_among_the_catalogue():
    """Items 0..3 on the axes; a user who read item 0 is nearest item 0 (left out) and then
    item 1, placed 30 degrees away; the target decides the rank."""
    recommend = task()
    angle = np.deg2rad(30)
    vectors = [[1, 0, 0], [np.cos(angle), np.sin(angle), 0], [0, 1, 0], [0, 0, 1]]
    references = [{"item": i, "catalogue": True, "users": []} for i in range(4)]
    references[1]["users"].append([0])  # a user who read 0, target 1: rank 1
    references[3]["users"].append([0])  # another, target 3: behind 1 and 2 -> rank 3
    metrics = recommend.metrics(vectors, references, [])
    assert metrics["users"] == 2 and metrics["recall@1"] == 0.5 and metrics["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_the_user_tower_graph_ranks_like_numpy():
    rng = np.random.default_rng(0)
    index = rng.normal(size=(7, 5)).astype(np.float32)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    session = ort.InferenceSession(export_user_tower(index), providers=["CPUExecutionProvider"])
    history = np.array([[0, 3, -1], [6, 6, 2]], dtype=np.int64)
    user, scores = session.run(None, {"history": history})
    expected = user_vectors(index, [[0, 3], [6, 6, 2]])
    assert np.allclose(user, expected, atol=1e-6)
    assert np.isneginf(scores[0, [0, 3]]).all() and np.isneginf(scores[1, [2, 6]]).all()
    finite = np.isfinite(scores)
    assert np.allclose(scores[finite], (expected @ index.T)[finite], atol=1e-6)


def read(tmp_path, rows, items=None, **options):
    (tmp_path / "log.csv").write_text(rows)
    if items is not None:
        (tmp_path / "items.csv").write_text(items)
    source = make_host().data_sources.get("interactions")
    request = DataRequest("recommendation", tmp_path / "log.csv", items=tmp_path / "items.csv" if items is not None else None, options=InteractionsOptions(**options))
    return source.read(request), request


ITEMS = "item,text\n" + "".join(f"i{k},text of item {k}\n" for k in range(6))


def test_interactions_split_leave_last_out_in_time_order(tmp_path):
    rows = "user,item,timestamp\nu1,i3,30\nu1,i1,10\nu1,i2,20\nu1,i4,40\nu1,i5,50\nu2,i1,5\nu2,i1,6\nu2,i2,7\n"
    splits, request = read(tmp_path, rows, ITEMS)
    assert [(e["history"], e["target"]) for e in splits["train"]] == [([1], 2), ([1, 2], 3)]  # u1 read i1 i2 i3 i4 i5
    assert [(e["history"], e["target"]) for e in splits["val"] if "target" in e] == [([1, 2, 3], 4)]
    assert [(e["history"], e["target"]) for e in splits["test"] if "target" in e] == [([1, 2, 3, 4], 5)]
    assert sorted(e["item"] for e in splits["test"] if "item" in e) == list(range(6))  # the whole catalogue, i0 never read included
    assert len(request.skipped) == 1 and "u2" in request.skipped[0]  # two distinct items: too few


def test_without_an_item_file_each_items_text_is_its_id(tmp_path):
    splits, _ = read(tmp_path, "user,item\n" + "".join(f"u1,i{k}\n" for k in range(4)))
    catalogue = splits["test"][0]["catalogue"]
    assert catalogue.ids == catalogue.texts == ("i0", "i1", "i2", "i3")


def test_the_item_table_hashes_ids_stably_into_its_rows():
    from adapt.plugins.embeddings.item_table import row_of

    assert row_of("", 2**64) == 0xCBF29CE484222325 and row_of("a", 2**64) == 0xAF63DC4C8601EC8C  # FNV-1a 64 test vectors
    rows = [row_of(f"item-{k}", 65536) for k in range(1000)]
    assert all(0 <= r < 65536 for r in rows) and len(set(rows)) > 990


def test_interactions_min_rating_keeps_the_liked_ones(tmp_path):
    rows = "user,item,rating\n" + "".join(f"u1,i{k},{5 if k != 2 else 1}\n" for k in range(6))
    splits, _ = read(tmp_path, rows, ITEMS, min_rating=3)
    assert 2 not in [i for e in splits["train"] + splits["test"] if "target" in e for i in (*e["history"], e["target"])]


@pytest.mark.parametrize(
    ("rows", "items", "message"),
    [
        ("user,item\nu1,i9\nu1,i1\nu1,i2\nu1,i3\n", ITEMS, "have no text"),
        ("person,item\nu1,i1\n", ITEMS, "no 'user' column"),
        ("user,item,timestamp\nu1,i1,yesterday\n", ITEMS, "not a number"),
        ("user,item\nu1,i1\nu1,i2\nu1,i3\n", ITEMS, "leaves no training example"),
    ],
)
def test_interactions_errors_name_the_problem(tmp_path, rows, items, message):
    with pytest.raises(DataError, match=message) as caught:
        read(tmp_path, rows, items)
    assert caught.value.hint


def test_the_generated_bbc_set_is_the_same_each_time_and_never_writes_over_files(tmp_path):
    first = make_bbc_interactions(tmp_path / "a", users=20, items=50)
    second = make_bbc_interactions(tmp_path / "b", users=20, items=50)
    assert (first / "interactions.csv").read_bytes() == (second / "interactions.csv").read_bytes()
    items = [json.loads(line) for line in (first / "items.jsonl").read_text().splitlines()]
    assert len(items) == 50 and len({i["item"].split("/")[0] for i in items}) == 5 and all(i["text"] for i in items)
    with pytest.raises(DataError, match="not an empty folder"):
        make_bbc_interactions(first, users=5, items=50)
    assert (first / "items.jsonl").read_text().count("\n") == 50  # untouched
