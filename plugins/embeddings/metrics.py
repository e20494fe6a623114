"""How good embeddings are, by what applications do with them: verify a pair (same
identity?), identify a query against a gallery, retrieve a query's document.

ROC figures are scikit-learn's (``roc_auc_score``, ``roc_curve``); ranks are counted
here with numpy. Embeddings are rows, L2-normalised, so a dot product is the cosine.

* :func:`verification`: pairs drawn deterministically from the split (every positive
  pair up to half of ``pairs``, as many negative ones): ``auc``, ``tar@far1e-3`` (the
  share of positive pairs accepted at the threshold that accepts at most 0.1% of
  negative ones) and ``verification_accuracy`` by LFW's protocol (ten folds: the
  threshold that is best on nine is applied to the tenth).
* :func:`identification`: the first example of each identity is its gallery entry,
  every other example a query: ``top1``, ``top5``.
* :func:`retrieval`: each query has one relevant document among all: ``recall@1``,
  ``recall@5``, ``recall@10``, ``mrr``, ``ndcg@10``.
"""

from __future__ import annotations

import numpy as np

#: At most this many verification pairs are drawn from a split.
PAIRS = 6000
FOLDS = 10
#: The cut-offs of ``recall@k``.
RECALL_AT = (1, 5, 10)


def _pairs(ids: np.ndarray, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(a, b)`` and whether each is of one identity (half positive, half negative)."""
    rng = np.random.default_rng(seed)
    a, b = np.triu_indices(len(ids), k=1)
    same = ids[a] == ids[b]
    positive, negative = np.flatnonzero(same), np.flatnonzero(~same)
    count = min(pairs // 2, len(positive), len(negative))
    chosen = np.concatenate([rng.choice(positive, count, replace=False), rng.choice(negative, count, replace=False)])
    return a[chosen], b[chosen], same[chosen]


def _fold_accuracy(scores: np.ndarray, same: np.ndarray, seed: int) -> float:
    """LFW's protocol: per fold, the threshold best on the other folds, applied to it."""
    order = np.random.default_rng(seed).permutation(len(scores))
    folds = np.array_split(order, FOLDS)
    correct = 0
    for fold in folds:
        rest = np.setdiff1d(order, fold)
        seen = np.unique(scores[rest])
        candidates = np.concatenate(
            [seen[:1] - 1e-6, (seen[:-1] + seen[1:]) / 2, seen[-1:] + 1e-6]
        )  # between the scores seen
        accuracy = [np.mean((scores[rest] >= t) == same[rest]) for t in candidates]
        threshold = candidates[int(np.argmax(accuracy))]
        correct += int(np.sum((scores[fold] >= threshold) == same[fold]))
    return correct / len(scores)


def verification(embeddings: np.ndarray, ids: np.ndarray, pairs: int = PAIRS, seed: int = 0) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    a, b, same = _pairs(ids, pairs, seed)
    if not len(same):
        return {"auc": float("nan"), "tar@far1e-3": float("nan"), "verification_accuracy": float("nan"), "pairs": 0.0}
    scores = np.sum(embeddings[a] * embeddings[b], axis=1)
    fpr, tpr, _ = roc_curve(same, scores)
    tar = float(tpr[fpr <= 1e-3].max()) if np.any(fpr <= 1e-3) else 0.0
    accuracy = _fold_accuracy(scores, same, seed) if len(same) >= FOLDS else float("nan")
    return {
        "auc": float(roc_auc_score(same, scores)),
        "tar@far1e-3": tar,
        "verification_accuracy": accuracy,
        "pairs": float(len(same)),
    }


def identification(embeddings: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """Top-1 / top-5 identification of every non-first example of an identity."""
    identities, first = np.unique(ids, return_index=True)
    queries = np.setdiff1d(np.arange(len(ids)), first)
    if not len(queries) or len(identities) < 2:
        return {"top1": float("nan"), "top5": float("nan")}
    scores = embeddings[queries] @ embeddings[first].T
    ranked = identities[np.argsort(-scores, axis=1)]
    hits = ranked == ids[queries][:, None]
    return {"top1": float(hits[:, 0].mean()), "top5": float(hits[:, :5].any(axis=1).mean())}


def ranks(queries: np.ndarray, documents: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Each query's 1-based rank of its one relevant document ``documents[relevant[i]]``."""
    scores = queries @ documents.T
    return (scores > scores[np.arange(len(queries)), relevant][:, None]).sum(axis=1) + 1


def retrieval(queries: np.ndarray, documents: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """Query ``i``'s one relevant document is ``documents[relevant[i]]``."""
    return rank_metrics(ranks(queries, documents, relevant))


def rank_metrics(rank: np.ndarray) -> dict[str, float]:
    """``recall@1/5/10``, ``mrr`` and ``ndcg@10`` (one relevant item) from 1-based ranks."""
    rank = np.asarray(rank, dtype=np.float64)
    if not len(rank):
        return {**{f"recall@{k}": float("nan") for k in RECALL_AT}, "mrr": float("nan"), "ndcg@10": float("nan")}
    found = {f"recall@{k}": float(np.mean(rank <= k)) for k in RECALL_AT}
    found["mrr"] = float(np.mean(1.0 / rank))
    found["ndcg@10"] = float(np.mean(np.where(rank <= 10, 1.0 / np.log2(rank + 1), 0.0)))
    return found
