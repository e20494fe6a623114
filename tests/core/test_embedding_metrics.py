"""Embedding metrics against answers worked out by hand, and against scikit-learn where it
has the same figure; the margin losses against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adapt.plugins.embeddings.embedding import info_nce, margin_loss
from adapt.plugins.embeddings.metrics import identification, retrieval, verification


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_retrieval_ranks_by_hand():
    queries = unit([[1, 0], [0, 1], [1, 0.5]])
    documents = unit([[1, 0.1], [0.1, 1], [-1, 0]])
    # query 0 -> doc 0 is first; query 1 -> doc 2 is last (rank 3); query 2 -> doc 1 is second
    found = retrieval(queries, documents, np.array([0, 2, 1]))
    assert found["recall@1"] == pytest.approx(1 / 3)
    assert found["recall@5"] == 1.0
    assert found["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert found["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3)) / 3)


def test_ndcg_agrees_with_scikit_learn():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    queries, documents = unit(rng.normal(size=(20, 8))), unit(rng.normal(size=(30, 8)))
    relevant = rng.integers(0, 30, 20)
    truth = np.zeros((20, 30))
    truth[np.arange(20), relevant] = 1
    assert retrieval(queries, documents, relevant)["ndcg@10"] == pytest.approx(ndcg_score(truth, queries @ documents.T, k=10))


def test_identification_by_hand():
    # identity a: gallery [1, 0]; b: gallery [0, 1]; queries: an a near a, an a near b, a b near b
    embeddings = unit([[1, 0], [0, 1], [0.9, 0.1], [0.2, 0.9], [0.1, 1]])
    ids = np.array([0, 1, 0, 0, 1])
    found = identification(embeddings, ids)
    assert found == {"top1": pytest.approx(2 / 3), "top5": 1.0}


def test_verification_separable_and_random():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(6), 10)
    centres = unit(rng.normal(size=(6, 16)))
    tight = unit(centres[ids] + 0.05 * rng.normal(size=(60, 16)))
    found = verification(tight, ids)
    assert found["auc"] == 1.0 and found["tar@far1e-3"] == 1.0 and found["verification_accuracy"] == 1.0
    noise = verification(unit(rng.normal(size=(60, 16))), ids)
    assert 0.3 < noise["auc"] < 0.7 and noise["pairs"] == 2 * min(3000, 6 * 45)


def test_verification_auc_is_scikit_learns_on_the_drawn_pairs():
    from sklearn.metrics import roc_auc_score

    from adapt.plugins.embeddings.metrics import _pairs

    rng = np.random.default_rng(2)
    ids = rng.integers(0, 5, 40)
    embeddings = unit(rng.normal(size=(40, 4)) + np.eye(5)[ids][:, :4])
    a, b, same = _pairs(ids, 6000, 0)
    assert same.sum() == (~same).sum()  # balanced
    assert verification(embeddings, ids)["auc"] == pytest.approx(roc_auc_score(same, np.sum(embeddings[a] * embeddings[b], 1)))


def test_arcface_and_cosface_move_only_the_true_logit():
    cosines = torch.tensor([[0.8, 0.1, -0.3], [0.2, 0.5, 0.4]])
    labels = torch.tensor([0, 2])
    plain = torch.nn.functional.cross_entropy(cosines * 10, labels)
    assert float(margin_loss(cosines, labels, "arcface", 0.0, 10.0)) == pytest.approx(float(plain), rel=1e-5)
    arc = cosines.clone()
    arc[0, 0], arc[1, 2] = math.cos(math.acos(0.8) + 0.5), math.cos(math.acos(0.4) + 0.5)
    assert float(margin_loss(cosines, labels, "arcface", 0.5, 10.0)) == pytest.approx(float(torch.nn.functional.cross_entropy(arc * 10, labels)), rel=1e-5)
    cos = cosines.clone()
    cos[0, 0], cos[1, 2] = 0.8 - 0.35, 0.4 - 0.35
    assert float(margin_loss(cosines, labels, "cosface", 0.35, 10.0)) == pytest.approx(float(torch.nn.functional.cross_entropy(cos * 10, labels)), rel=1e-5)
    # an identity unseen in training (-1) carries no loss
    assert float(margin_loss(cosines, torch.tensor([0, -1]), "cosface", 0.35, 10.0)) == pytest.approx(float(torch.nn.functional.cross_entropy(cos[:1] * 10, labels[:1])), rel=1e-5)


def test_info_nce_is_cross_entropy_over_in_batch_documents():
    queries, documents = torch.eye(3), torch.eye(3)
    expected = torch.nn.functional.cross_entropy(torch.eye(3) / 0.1, torch.arange(3))
    assert float(info_nce(queries, documents, 0.1)) == pytest.approx(float(expected))
