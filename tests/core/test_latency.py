"""adapt.latency: contenders take turns round by round, ratios come with their range,
and an unsteady reference gets a note instead of a ratio."""

from __future__ import annotations

import pytest

from adapt.latency import MAX_SPREAD, figures, ratio, summary, timed_rounds


def test_contenders_take_turns_within_each_round():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("eager", "onnx")}
    times = timed_rounds(calls, rounds=3, runs=2, pause=0, warmup=1)
    assert order == (["eager"] * 3 + ["onnx"] * 3) * 3  # 1 warm-up + 2 timed calls each, eager then onnx, 3 times
    assert [len(r) for r in times["onnx"]] == [2, 2, 2]


def test_ratios_are_the_median_of_the_rounds_with_their_range():
    per_round = {"pytorch": [10.0, 20.0, 10.0], "onnx": [5.0, 4.0, 3.0]}
    assert ratio(per_round, "onnx", "pytorch") == {"ratio": 0.3, "range": [0.2, 0.5]}
    found = summary(per_round, "pytorch")
    assert found["ms"] == {"pytorch": 10.0, "onnx": 4.0} and found["spread"]["pytorch"] == 2.0 and "onnx" in found["to_pytorch"]


def test_an_unsteady_reference_gets_a_note_not_a_ratio():
    found = summary({"pytorch": [10.0, 10.0 * MAX_SPREAD * 1.5], "onnx": [3.0, 3.0]}, "pytorch")
    assert found["to_pytorch"] == {} and "too unsteady" in found["note"]


def test_figures_pool_every_call_and_measure_the_rounds_spread():
    assert figures([[1.0, 3.0], [2.0, 6.0]]) == {"median": pytest.approx(2.5), "p90": 6.0, "spread": 2.0}


def test_a_lazy_runner_opens_at_its_first_call_and_again_after_a_release():
    """The export's timing of files too big to keep open together: each session open for its own turns."""
    from adapt.latency import LazyRunner, timed_rounds

    opened: list[str] = []

    def loader(name: str):
        return lambda: opened.append(name) or (lambda feed: feed)

    runners = {name: LazyRunner(loader(name)) for name in ("a", "b")}
    turns: list[str] = []

    def after(name: str) -> None:
        turns.append(name)
        runners[name].release()

    times = timed_rounds({n: (lambda r=r: r(1)) for n, r in runners.items()}, rounds=2, runs=2, pause=0, warmup=1, after_turn=after)
    assert turns == ["a", "b", "a", "b"] and opened == ["a", "b", "a", "b"]  # opened once per turn, in turns
    assert all(len(r) == 2 and len(r[0]) == 2 for r in times.values())
    assert runners["a"](5) == 5 and opened[-1] == "a"  # released, then opened again on use
