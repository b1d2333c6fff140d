"""Checkers: pluggable judges of a simulation run.

A checker is created fresh for each run, watches it through read-only hooks (`on_sample`
every simulated second, `on_phase_end` when the safety phase ends and the faults heal) and
gives a `Verdict` at the end. It sees the simulator only through `SimView`, so it cannot
steer the run (and cannot change its trace). Register new ones with `@register_checker`;
scenarios name the checkers they want in `checkers = [...]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

if TYPE_CHECKING:
    from node.core import NodeCore

DETAIL_NODES_MAX = 5


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str


class SimView(Protocol):
    """What a checker may read of a running simulation."""

    @property
    def now_ms(self) -> int: ...
    @property
    def names(self) -> Sequence[str]: ...
    @property
    def phase_end_ms(self) -> int: ...
    @property
    def crashes(self) -> Sequence[str]: ...
    @property
    def honest(self) -> Sequence[int]:
        """Nodes that are never Byzantine in this run (lying_capacity nodes are not honest,
        but their announcements still count as present for others' books)."""
        ...

    def is_live(self, i: int) -> bool:
        """Running and not paused."""
        ...

    def core(self, i: int) -> NodeCore | None: ...
    def local_now(self, i: int) -> int:
        """Node i's clock reading now (true time plus its skew), what its core is given."""
        ...

    def public_key(self, i: int) -> bytes: ...


class Checker:
    name: ClassVar[str] = "checker"

    def on_sample(self, sim: SimView) -> None:
        """Called every simulated second."""

    def on_phase_end(self, sim: SimView) -> None:
        """Called when the safety phase ends, after the faults healed."""

    def verdict(self, sim: SimView) -> Verdict:
        raise NotImplementedError


CHECKERS: dict[str, type[Checker]] = {}
_C = TypeVar("_C", bound=type[Checker])


def register_checker(cls: _C) -> _C:
    if cls.name in CHECKERS and CHECKERS[cls.name] is not cls:
        raise ValueError(f"checker {cls.name!r} is already registered")
    CHECKERS[cls.name] = cls
    return cls


def incomplete_books(sim: SimView) -> list[tuple[int, list[int]]]:
    """(node, the honest live nodes missing from its book) for each honest live node whose
    book lacks a live announcement from some honest live node."""
    live = [i for i in sim.honest if sim.is_live(i)]
    keys = frozenset(sim.public_key(i) for i in live)
    out = []
    for i in live:
        core = sim.core(i)
        if core is None:
            continue
        now = sim.local_now(i)
        if core.book.covers(keys, now):
            continue
        missing = []
        for j in live:
            ann = core.book.get(sim.public_key(j))
            if ann is None or ann.expires_ms <= now:
                missing.append(j)
        out.append((i, missing))
    return out


@register_checker
class BookConvergence(Checker):
    """After the liveness phase, every honest live node's book holds a live announcement
    from every honest live node."""

    name = "book_convergence"

    def verdict(self, sim: SimView) -> Verdict:
        bad = incomplete_books(sim)
        live = sum(1 for i in sim.honest if sim.is_live(i))
        if not bad:
            return Verdict(True, f"all {live} honest live nodes hold each other's announcements")
        parts = []
        for i, missing in bad[:DETAIL_NODES_MAX]:
            shown = ", ".join(sim.names[j] for j in missing[:DETAIL_NODES_MAX])
            more = f" (+{len(missing) - DETAIL_NODES_MAX} more)" if len(missing) > 5 else ""
            parts.append(f"{sim.names[i]} lacks {shown}{more}")
        tail = f"; and {len(bad) - DETAIL_NODES_MAX} more nodes" if len(bad) > 5 else ""
        return Verdict(
            False,
            f"{len(bad)} of {live} honest live nodes have incomplete books at "
            f"{sim.now_ms} ms: " + "; ".join(parts) + tail,
        )


@register_checker
class NoCrashOnBadInput(Checker):
    """No core raised while handling any input (the simulator catches and records it)."""

    name = "no_crash_on_bad_input"

    def verdict(self, sim: SimView) -> Verdict:
        if not sim.crashes:
            return Verdict(True, "no core raised")
        shown = "; ".join(sim.crashes[:3])
        return Verdict(False, f"{len(sim.crashes)} core step(s) raised: {shown}")
