"""Peak resident memory of each stage of a run (the report's ``memory``).

A run of a 0.6B decoder holds 2.5 GB of fp32 weights; the merge, the export's trace
and each ONNX Runtime session can each add a copy. The report records every stage's
peak so a user sees which stage needs the memory, next to ``timings``' seconds.

On Linux the kernel keeps the process's high-water mark (``VmHWM``) and lets the process
reset it (writing 5 to ``/proc/self/clear_refs``), so each stage's own peak is exact.
Elsewhere the peak is the process's since it started (``ru_maxrss``), which the report
says. Child processes (the .ort conversion) are not counted.
"""

from __future__ import annotations

import functools
import resource
import sys
from pathlib import Path
from typing import Any

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")
MIB = 1024 * 1024


def reset_peak() -> bool:
    """Start a new high-water mark at the current resident size; False where the OS cannot."""
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_mib() -> float:
    """The process's resident high-water mark in MiB (since the last :func:`reset_peak`)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / MIB if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


def resident_mib() -> float:
    """The process's resident size now, in MiB (0 where the OS does not say)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else 0.0


def give_back() -> None:
    """Return freed heap memory to the OS (glibc's ``malloc_trim``): tensors of a few MB come
    from the heap, and once freed they stay resident until trimmed, under the next stage's
    peak. Cheap (the lookup is cached); a caller dropping a model, whose modules hold reference
    cycles, runs ``gc.collect()`` first (about 0.1 s with transformers imported, so not here)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ldconfig); None elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


class StagePeaks:
    """Each stage's peak resident memory in MiB, and how it was measured."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.per_stage = True

    def begin(self) -> None:
        give_back()
        self.per_stage = reset_peak() and self.per_stage

    def end(self, stage: str) -> None:
        self.peaks[stage] = round(peak_mib(), 1)

    def section(self, fp32_weights_bytes: int) -> dict[str, object]:
        """The report's ``memory``: peaks by stage, the run's peak, and its ratio to the fp32 weights."""
        peak = max(self.peaks.values(), default=0.0)
        weights = fp32_weights_bytes / MIB
        return {
            "peak_mib": dict(self.peaks),
            "run_peak_mib": peak,
            "fp32_weights_mib": round(weights, 1),
            "peak_over_weights": round(peak / weights, 2) if weights else None,
            "how": "VmHWM, reset at each stage's start"
            if self.per_stage
            else "the process's peak since it started (ru_maxrss): this OS cannot reset it per stage",
        }
