"""Splitting and encoding: seeded, stable, and strict about unseen labels."""

from __future__ import annotations

import pytest

from adapt.config import SplitConfig
from adapt.data import carve, load_splits
from adapt.errors import DataError
from adapt.interfaces import DataRequest
from adapt.plugins.sources.digits_source import DigitsSource
from adapt.plugins.classification.tasks import ImageClassification, TextClassification


class ListSource:
    name = "list"

    def __init__(self, splits):
        self.splits = splits

    def read(self, request):
        return {k: list(v) for k, v in self.splits.items()}


def text(n, label):
    return [{"text": f"{label}{i}", "label": label} for i in range(n)]


def test_carve_is_seeded_and_takes_at_least_one():
    items = list(range(10))
    assert carve(items, 0.3, 1) == carve(items, 0.3, 1)
    assert carve(items, 0.3, 1) != carve(items, 0.3, 2)
    assert len(carve(items, 0.01, 0)[1]) == 1 and carve(items, 0.0, 0)[1] == []


def test_digits_split_fractions_are_of_the_whole():
    splits = load_splits(DigitsSource(), DataRequest("image-classification", None), ImageClassification(), SplitConfig(val=0.1, test=0.2, seed=0))
    assert splits.sizes() == {"train": 1258, "val": 180, "test": 359}
    again = load_splits(DigitsSource(), DataRequest("image-classification", None), ImageClassification(), SplitConfig(val=0.1, test=0.2, seed=0))
    assert [e["label"] for e in again.test] == [e["label"] for e in splits.test]
    assert splits.label_names == [str(d) for d in range(10)]
    assert all(isinstance(e["label"], int) for e in splits.train)


def test_the_datas_own_test_split_is_kept():
    source = ListSource({"train": text(8, "a") + text(8, "b"), "test": text(2, "a")})
    splits = load_splits(source, DataRequest("text-classification", None), TextClassification(), SplitConfig(val=0.25, test=0.5))
    assert splits.sizes() == {"train": 12, "val": 4, "test": 2}


def test_a_label_only_in_test_is_an_error():
    source = ListSource({"train": text(4, "a"), "test": text(1, "z")})
    with pytest.raises(DataError, match="test split: label 'z' does not occur in the training data"):
        load_splits(source, DataRequest("text-classification", None), TextClassification(), SplitConfig(val=0.0))


def test_the_datas_own_label_order_is_kept_only_where_it_covers_every_training_label():
    from adapt.data import declared_order

    assert declared_order(["neg", "pos"], ["pos", "neg", "mixed"]) == ["pos", "neg", "mixed"]
    assert declared_order(["neg", "pos", "zzz"], ["pos", "neg"]) == ["neg", "pos", "zzz"]  # a name it lacks: sorted
    assert declared_order(["neg", "pos"], None) == ["neg", "pos"]
    assert declared_order([], ["a"]) == []  # a task without labels (generation) stays without
