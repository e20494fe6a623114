"""The batches of an epoch: every example once, seeded, and with length grouping, less padding."""

from __future__ import annotations

import random

from adapt.distributed import Dist
from adapt.engine import epoch_batches, example_length


def padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouping_keeps_every_example_once_and_cuts_the_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(1000)]
    plain = epoch_batches(1000, 8, 0, 0, Dist())
    grouped = epoch_batches(1000, 8, 0, 0, Dist(), lengths)
    assert sorted(i for b in grouped for i in b) == list(range(1000)) and len(grouped) == len(plain)
    assert padding(grouped, lengths) < padding(plain, lengths) / 5
    assert grouped == epoch_batches(1000, 8, 0, 0, Dist(), lengths)  # seeded: a resumed run sees the same batches
    assert grouped != epoch_batches(1000, 8, 0, 1, Dist(), lengths)  # and each epoch another order
    firsts = [lengths[b[0]] for b in grouped[:20]]
    assert firsts != sorted(firsts, reverse=True)  # the batches themselves are shuffled, not longest first


def test_example_length_reads_every_kind_of_text_example():
    assert example_length({"text": "abcd"}) == 4
    assert example_length({"prompt": "ab", "completion": "cde"}) == 5
    assert example_length({"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}]}) == 3
    assert example_length({"tokens": ["a", "b"], "tags": [0, 0]}) == 2


def test_training_examples_are_augmented_reproducibly_per_epoch_and_example():
    """The task's augment sees each training example with a generator seeded by (seed,
    epoch, index): a resumed run or another worker gets the same draw, a new epoch another."""
    from adapt.engine import TrainingExamples

    def augment(example, rng):
        return {**example, "draw": float(rng.random())}

    examples = [{"x": i} for i in range(4)]
    first, again, later = (TrainingExamples(examples, augment, 7, epoch) for epoch in (0, 0, 1))
    assert [first[i] for i in range(4)] == [again[i] for i in range(4)]
    assert [first[i]["draw"] for i in range(4)] != [later[i]["draw"] for i in range(4)]
    assert len({first[i]["draw"] for i in range(4)}) == 4 and first[2]["x"] == 2
    assert TrainingExamples(examples, None, 7, 0)[3] is examples[3]  # no augment: the example itself


def test_train_augment_takes_true_false_or_a_list_of_known_kinds():
    import pytest
    from pydantic import ValidationError

    from adapt.config import TrainConfig

    assert TrainConfig(augment=["crop"]).augment == ["crop"] and TrainConfig().augment is True
    with pytest.raises(ValidationError):
        TrainConfig(augment=["rotate"])
