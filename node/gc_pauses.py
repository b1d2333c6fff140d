"""The cyclic garbage collector in a node process: its start-up objects frozen, its pauses
measured and shown under /status "gc".

Why: a node imports libp2p, numba (the scheduler's compiled search) and the rest, some
135,000 objects that live as long as the process, and every full collection walks them all
again: about 70 ms on an idle 2-core machine, and 200-250 ms per pause under the live
benchmark's load, on every member at once, which lands straight on commit latency.
`freeze_start_up_objects` moves them out of the collector's sight once the node is built
(`gc.freeze`, as CPython documents for long-lived processes); measured on n=4 at 2,000 tx/s,
full collections went from 4 per node per run and 0.8 s in all (longest 0.25 s) to 3 and
0.25-0.33 s (longest 0.11-0.15 s). The pause figures let anyone check that on their own
machine and load.
"""

from __future__ import annotations

import gc
import time
from typing import Any

GENERATIONS = 3


def freeze_start_up_objects() -> int:
    """Collect what start-up left as garbage, then freeze every object still tracked, so
    later collections walk only what the running node allocates. Returns how many objects
    are frozen. Call it once the node is built and before it runs; the recorder's figures
    start afresh after it (this one collection is part of starting, not of running)."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    if _installed is not None:
        _installed.reset(frozen)
    return frozen


class GcPauses:
    """Collections and their pauses per generation, from `gc.callbacks`. One per process
    (`installed`): the callbacks are process-wide."""

    def __init__(self) -> None:
        self.reset(gc.get_freeze_count())
        self._started = 0.0

    def reset(self, frozen: int) -> None:
        """Start the figures afresh, with `frozen` objects frozen. The count is kept, not
        asked for: `gc.get_freeze_count` walks every frozen object (CPython 3.11), and
        /status is read many times a second under load (it cost a node 16% of its CPU)."""
        self.frozen = frozen
        self.collections = [0] * GENERATIONS
        self.total_s = [0.0] * GENERATIONS
        self.longest_s = [0.0] * GENERATIONS

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        g = min(int(info.get("generation", 0)), GENERATIONS - 1)
        self.collections[g] += 1
        self.total_s[g] += pause
        self.longest_s[g] = max(self.longest_s[g], pause)

    def as_dict(self) -> dict[str, object]:
        return {
            "frozen_objects": self.frozen,
            "generations": [
                {
                    "collections": self.collections[g],
                    "pause_ms_total": round(self.total_s[g] * 1000, 1),
                    "pause_ms_max": round(self.longest_s[g] * 1000, 1),
                }
                for g in range(GENERATIONS)
            ],
        }


_installed: GcPauses | None = None


def installed() -> GcPauses:
    """The process's recorder, registered with `gc.callbacks` on first use."""
    global _installed
    if _installed is None:
        _installed = GcPauses()
        gc.callbacks.append(_installed.on_gc)
    return _installed
