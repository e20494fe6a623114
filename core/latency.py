"""Latency that holds up on a shared, throttled CPU: contenders take turns.

Timing one file, then another minutes later, compares two moments of the machine, not
two files (eager MiniLM was seen anywhere from 40 to 900 ms per call on one machine).
So every contender is timed in each of ``rounds`` rounds, one after another within a
round, with a pause between turns (ONNX Runtime's and OpenMP's worker threads spin for
a while after a call and would take cores from the next contender). A ratio is the
median of the per-round ratios, reported with their range; where the reference's own
per-round medians spread too widely, a ratio to it means little, and :func:`summary`
says so instead of printing one.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

#: Idle seconds before each turn (the previous contender's threads stop spinning).
PAUSE_S = 0.5
#: A reference whose slowest round is more than this many times its fastest is too
#: unsteady for a ratio to it to mean anything.
MAX_SPREAD = 2.0


def timed_rounds(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    runs: int,
    pause: float = PAUSE_S,
    warmup: int = 2,
    after_turn: Callable[[str], None] | None = None,
) -> dict[str, list[list[float]]]:
    """Every call's milliseconds, by contender and round; within a round the contenders
    take turns, each after ``pause`` seconds and ``warmup`` untimed calls (where a
    :class:`LazyRunner` opens its session), then ``after_turn(name)`` (which may close it)."""
    times: dict[str, list[list[float]]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            time.sleep(pause)
            for _ in range(warmup):
                call()
            this_round = []
            for _ in range(runs):
                started = time.perf_counter()
                call()
                this_round.append((time.perf_counter() - started) * 1000)
            times[name].append(this_round)
            if after_turn is not None:
                after_turn(name)
    return times


class LazyRunner:
    """A file's runner opened on its first call and closed by :meth:`release`: where the files
    timed together would not fit in memory at once (a 2.5 GB decoder in fp32 and optimised),
    each contender's session is open for its own turn only, and the turns still alternate."""

    def __init__(self, load: Callable[[], Callable[[Any], Any]]) -> None:
        self._load = load
        self._run: Callable[[Any], Any] | None = None

    def __call__(self, feed: Any) -> Any:
        if self._run is None:
            self._run = self._load()
        return self._run(feed)

    def release(self) -> None:
        from adapt.memory import give_back

        if self._run is not None:
            self._run = None
            give_back()


def take_turns(
    contenders: dict[str, Callable[[], object]], rounds: int, runs: int, pause: float = PAUSE_S
) -> dict[str, list[float]]:
    """Each contender's median latency (ms) in each round; within a round they take turns."""
    return {
        name: [statistics.median(r) for r in rounds_]
        for name, rounds_ in timed_rounds(contenders, rounds, runs, pause).items()
    }


def figures(rounds: list[list[float]]) -> dict[str, float]:
    """One contender's ``median`` and ``p90`` over all its calls (ms), and the ``spread``
    of its per-round medians (the slowest over the fastest)."""
    calls = sorted(t for r in rounds for t in r)
    return {
        "median": round(statistics.median(calls), 3),
        "p90": round(calls[min(len(calls) - 1, int(0.9 * len(calls)))], 3),
        "spread": round(spread([statistics.median(r) for r in rounds]), 3),
    }


def ratio(per_round: dict[str, list[float]], name: str, reference: str) -> dict[str, Any]:
    """``name``'s latency over ``reference``'s: the median of the per-round ratios, and their range."""
    ratios = [a / b for a, b in zip(per_round[name], per_round[reference])]
    return {"ratio": round(statistics.median(ratios), 3), "range": [round(min(ratios), 3), round(max(ratios), 3)]}


def spread(times: list[float]) -> float:
    """The slowest round over the fastest (1.0: steady)."""
    return max(times) / min(times) if times and min(times) > 0 else float("inf")


def summary(per_round: dict[str, list[float]], reference: str) -> dict[str, Any]:
    """Median ms and spread of every contender, and each one's ratio to ``reference``
    (none, with the reason, where the reference's spread is over :data:`MAX_SPREAD`)."""
    found: dict[str, Any] = {
        "ms": {name: round(statistics.median(times), 3) for name, times in per_round.items()},
        "spread": {name: round(spread(times), 3) for name, times in per_round.items()},
        "rounds": len(per_round[reference]),
    }
    steady = spread(per_round[reference]) <= MAX_SPREAD
    found[f"to_{reference}"] = (
        {name: ratio(per_round, name, reference) for name in per_round if name != reference} if steady else {}
    )
    if not steady:
        found["note"] = (
            f"{reference}'s rounds spread {spread(per_round[reference]):.1f}x (over {MAX_SPREAD}x): the machine was "
            "too unsteady for a ratio to it; run again on a quieter machine or with more --rounds"
        )
    return found


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model and SIMD flags, cores, libraries,
    and the denormal setting (flushing them makes some random or decaying models faster)."""
    import os

    import onnxruntime
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "denormals_flushed": False,  # adapt never sets torch.set_flush_denormal; ONNX Runtime's default keeps them too
        "platform": platform.platform(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def cpu_model() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's SIMD flags that ONNX Runtime's int8 kernels depend on (Linux; [] elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith(("flags", "Features"))), []
    )
    return sorted(
        w
        for w in words
        if w.startswith(("avx", "amx", "fma", "sse4", "asimd", "sve", "i8mm")) or "vnni" in w or w == "dotprod"
    )


def available_memory() -> int | None:
    """Bytes of memory the kernel says are available (Linux ``MemAvailable``; None elsewhere)."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("MemAvailable:")), None)
    return int(line.split()[1]) * 1024 if line else None
