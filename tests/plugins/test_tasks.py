"""The built-in tasks: label handling, loss, decoding and metrics against known answers."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import f1_score

from adapt.errors import DataError
from adapt.plugins.classification.tasks import ImageClassification, TextClassification, TokenClassification, entities, macro_f1


def test_label_names_are_sorted_and_encoding_uses_them():
    task = TextClassification()
    examples = [{"text": "a", "label": "sport"}, {"text": "b", "label": "business"}, {"text": "c", "label": "sport"}]
    names = task.label_names(examples)
    assert names == ["business", "sport"]
    assert task.encode(examples[0], {n: i for i, n in enumerate(names)})["label"] == 1


def test_unseen_label_and_missing_fields_are_data_errors():
    task = ImageClassification()
    with pytest.raises(DataError, match="label 'cat' does not occur in the training data"):
        task.encode({"image": None, "label": "cat"}, {"dog": 0})
    with pytest.raises(DataError, match="has no 'image' field"):
        task.label_names([{"label": "dog"}])
    with pytest.raises(DataError, match="has no label"):
        task.label_names([{"image": 1, "label": ""}])


def test_classification_metrics_match_scikit_learn():
    predictions, references = [0, 1, 2, 2, 1, 0, 3], [0, 2, 2, 2, 1, 1, 0]
    metrics = TextClassification().metrics(predictions, references, ["a", "b", "c", "d"])
    assert metrics["accuracy"] == pytest.approx(4 / 7)
    assert metrics["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
    assert macro_f1([], []) == 0.0


def test_loss_ignores_minus_100_and_decode_drops_it():
    task = TokenClassification()
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]]])
    labels = torch.tensor([[0, 1, -100]])
    expected = torch.nn.functional.cross_entropy(logits[0, :2], labels[0, :2])
    assert task.loss(logits, labels).item() == pytest.approx(expected.item())
    assert task.decode(logits, labels) == ([[0, 1]], [[0, 1]])


def test_entities_follow_conll_rules():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC", "I-ORG"]
    assert entities(tags) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("LOC", 5, 6), ("ORG", 6, 7)}
    assert entities(["O", "O"]) == set()


def test_entity_level_f1():
    names = ["B-LOC", "B-PER", "I-PER", "O"]
    index = {n: i for i, n in enumerate(names)}
    gold = [[index[t] for t in ["B-PER", "I-PER", "O", "B-LOC"]], [index[t] for t in ["B-LOC", "O"]]]
    # first sentence: PER right, LOC missed; second: LOC predicted as PER
    pred = [[index[t] for t in ["B-PER", "I-PER", "O", "O"]], [index[t] for t in ["B-PER", "O"]]]
    metrics = TokenClassification().metrics(pred, gold, names)
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert metrics["accuracy"] == pytest.approx(4 / 6)


def test_token_examples_need_aligned_tags():
    with pytest.raises(DataError, match="equal length"):
        TokenClassification().label_names([{"tokens": ["a", "b"], "tags": ["O"]}])
