"""Seed sweeps: one scenario under many seeds, in parallel processes, failures with replays.

A sweep is how the simulator finds the rare interleaving that breaks an invariant: each seed
sets every fault and every delay, so a failing seed *is* the bug report, and its replay
command reproduces it bit-for-bit in one process (DESIGN.md principle 10).

Workers run in a `spawn` process pool: a worker is a top-level function that loads the
scenario itself and returns a small picklable summary, so nothing of the parent (threads of
a progress bar, open files) leaks into a child, and a child that raises, or dies outright,
becomes a failed seed with its traceback instead of a hang. Results are ordered by seed,
whatever order the workers finish in, so two sweeps print the same thing.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shlex
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED_MAX = 2**64 - 1
"""Seeds are unsigned 64-bit: they are hashed into per-node generators."""
SEEDS_MAX = 100_000
"""The most seeds one sweep runs; a bigger range is almost surely a typo."""
JOBS_MAX = 256
TRACEBACK_CHARS_MAX = 8_000
"""A worker's traceback is cut to its last this-many characters: the end names the bug."""

_SEED_RE = re.compile(r"[0-9]+")


class SeedRangeError(ValueError):
    """A --seed or --seeds value that is not a seed or range of seeds; the message says why."""


def parse_seed(text: str) -> int:
    """One seed: a non-negative decimal integer up to SEED_MAX."""
    t = text.strip()
    if not _SEED_RE.fullmatch(t):
        raise SeedRangeError(f"{text!r} is not a seed (expected a non-negative integer)")
    seed = int(t)
    if seed > SEED_MAX:
        raise SeedRangeError(f"seed {seed} is too large (the most is {SEED_MAX})")
    return seed


def parse_seed_range(text: str) -> list[int]:
    """Seeds from "1-500", "1,2,7", "5" or a mix ("1-3,10"): sorted, without repeats."""
    if not text.strip():
        raise SeedRangeError("empty seed range (expected e.g. '1-500', '1,2,7' or '5')")
    seeds: set[int] = set()
    for item in text.split(","):
        lo_text, dash, hi_text = item.partition("-")
        try:
            lo = parse_seed(lo_text)
            hi = parse_seed(hi_text) if dash else lo
        except SeedRangeError as exc:
            raise SeedRangeError(
                f"bad seed range {text!r}: {exc} (expected e.g. '1-500', '1,2,7' or '5')"
            ) from None
        if hi < lo:
            raise SeedRangeError(f"bad seed range {text!r}: {item.strip()!r} runs backwards")
        if hi - lo + 1 + len(seeds) > SEEDS_MAX:
            raise SeedRangeError(f"seed range {text!r} has more than {SEEDS_MAX} seeds")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def replay_command(scenario_path: str, seed: int) -> str:
    """The command that reruns one seed; the same form the simulator prints."""
    return f"gpumesh sim run {shlex.quote(scenario_path)} --seed {seed}"


@dataclass(frozen=True)
class SeedOutcome:
    """What a worker sends back: small and picklable, never the whole trace."""

    seed: int
    ok: bool
    failures: tuple[tuple[str, str], ...]
    """(checker, detail) for each checker that failed, sorted by name."""
    trace_sha256: str
    wall_s: float
    replay: str
    error: str | None = None
    """The traceback when the run raised or its worker died, instead of a verdict."""

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ok": self.ok,
            "checkers": dict(self.failures),
            "trace_sha256": self.trace_sha256,
            "wall_seconds": round(self.wall_s, 3),
            "replay": self.replay,
            "error": self.error,
        }


@dataclass(frozen=True)
class SweepResult:
    scenario_path: str
    outcomes: tuple[SeedOutcome, ...]
    """One per seed, ordered by seed."""
    jobs: int
    wall_s: float

    @property
    def failed(self) -> tuple[SeedOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_seed(scenario_path: str, seed: int) -> SeedOutcome:
    """Run one seed to its verdicts. Top level, so a spawned worker can import it; it loads
    the scenario itself, since a Scenario need not be picklable."""
    t0 = time.monotonic()
    try:
        from sim_harness.consensus_sim import simulator_for
        from sim_harness.scenario import load_scenario

        result = simulator_for(load_scenario(Path(scenario_path)), seed).run()
    except Exception:
        return _errored(scenario_path, seed, traceback.format_exc(), time.monotonic() - t0)
    failures = tuple(sorted((n, v.detail) for n, v in result.checkers.items() if not v.ok))
    return SeedOutcome(
        seed=seed,
        ok=bool(result.ok),
        failures=failures,
        trace_sha256=result.trace_sha256,
        wall_s=float(result.wall_s),
        replay=result.replay_command,
    )


def _errored(scenario_path: str, seed: int, text: str, wall_s: float) -> SeedOutcome:
    return SeedOutcome(
        seed=seed,
        ok=False,
        failures=(),
        trace_sha256="",
        wall_s=wall_s,
        replay=replay_command(scenario_path, seed),
        error=text[-TRACEBACK_CHARS_MAX:],
    )


def default_jobs() -> int:
    return os.cpu_count() or 1


def run_sweep(
    scenario_path: Path | str,
    seeds: Sequence[int],
    jobs: int | None = None,
    progress: Callable[[int, int, SeedOutcome], None] | None = None,
) -> SweepResult:
    """Run every seed in a pool of `jobs` processes (default: one per CPU); `progress` gets
    (seeds done, seeds in all, the outcome just finished) as each one completes."""
    if not seeds:
        raise SeedRangeError("a sweep needs at least one seed")
    path = str(scenario_path)
    unique = sorted(set(seeds))
    workers = max(1, min(jobs or default_jobs(), len(unique), JOBS_MAX))
    t0 = time.monotonic()
    done: dict[int, SeedOutcome] = {}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures: dict[Future[SeedOutcome], int] = {
            pool.submit(run_seed, path, s): s for s in unique
        }
        for fut in as_completed(futures):
            seed = futures[fut]
            try:
                outcome = fut.result()
            except Exception:  # BrokenProcessPool: the worker died (killed, out of memory)
                outcome = _errored(path, seed, traceback.format_exc(), time.monotonic() - t0)
            done[seed] = outcome
            if progress is not None:
                progress(len(done), len(futures), outcome)
    finally:  # on Ctrl-C or an error in `progress`, drop the seeds not yet started
        pool.shutdown(wait=True, cancel_futures=True)
    return SweepResult(
        scenario_path=path,
        outcomes=tuple(done[s] for s in sorted(done)),
        jobs=workers,
        wall_s=time.monotonic() - t0,
    )
