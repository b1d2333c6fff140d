"""The fault vocabulary: what can go wrong, when, and to which nodes.

Shared by the simulator and the live-swarm fault injector, so it knows nothing of either:
a fault is a frozen dataclass with a time (`at_ms`, from the start of the run), the nodes it
hits as a `Nodes` selector (names, `a*` glob patterns, or a share such as "10%" drawn from
the seed) and a `describe()` whose first word is its kind, for timelines and reports.

`parse_fault` reads one `[[faults]]` TOML table (`at = "30s", partition = [["a*"], ["b*"]]`);
`plan_faults` turns a list of faults into the concrete timeline a run follows: every
selector resolved to node names (shares drawn from the given generator, so a seed always
picks the same nodes), and every `for = "20s"` expanded into the fault and its undoing
(crash -> restart, pause -> resume, partition -> heal). `draw_swarm_faults` is VOPR mode:
the seed draws the whole timeline within a `SwarmSpec`'s bounds.
"""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

DURATION_MS_MAX = 7 * 24 * 3_600_000
_DURATION_RE = re.compile(r"(-?[0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}
NAMES_SHOWN_MAX = 6


class FaultError(ValueError):
    """A fault table that cannot be read; `field` is the dotted key inside the table."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def parse_duration_ms(value: object, where: str, *, signed: bool = False) -> int:
    """ "30s", "250ms", "1.5s", "2m", "1h", or an integer of milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FaultError(where, f"expected a duration such as '30s', got {value!r}")
    if isinstance(value, int):
        ms = value
    else:
        m = _DURATION_RE.fullmatch(value.strip())
        if m is None:
            raise FaultError(where, f"expected a duration such as '30s' or '250ms', got {value!r}")
        number, scale = m.group(1), _UNIT_MS[m.group(2)]
        sign = -1 if number.startswith("-") else 1
        whole, _, frac = number.lstrip("-").partition(".")
        # exact decimal arithmetic: a duration never depends on float rounding
        scaled = int(whole + frac) * scale
        if scaled % 10 ** len(frac):
            raise FaultError(where, f"{value!r} is not a whole number of milliseconds")
        ms = sign * (scaled // 10 ** len(frac))
    if (ms < 0 and not signed) or abs(ms) > DURATION_MS_MAX:
        raise FaultError(where, f"duration {value!r} is outside 0..7 days")
    return ms


def _fmt_ms(ms: int) -> str:
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


# ---------------------------------------------------------------------------------------------
# node selectors


@dataclass(frozen=True)
class Nodes:
    """Which nodes a fault hits: names and glob patterns, or a share of all nodes (permille)
    drawn from the run's seed. Resolved once, when the run's timeline is planned."""

    patterns: tuple[str, ...] = ()
    permille: int | None = None

    def describe(self) -> str:
        if self.permille is not None:
            return f"{self.permille / 10:g}%"
        shown = ",".join(self.patterns[:NAMES_SHOWN_MAX])
        more = len(self.patterns) - NAMES_SHOWN_MAX
        return shown + (f",+{more} more" if more > 0 else "")

    def unmatched(self, names: Sequence[str]) -> str | None:
        """The first pattern that matches no node (a typo in a scenario), or None."""
        for pattern in self.patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                return pattern
        return None

    def resolve(self, names: Sequence[str], rng: random.Random) -> tuple[str, ...]:
        """The matching names, in the order of `names`."""
        if self.permille is not None:
            k = min(len(names), max(1, (len(names) * self.permille + 500) // 1000))
            chosen = set(rng.sample(range(len(names)), k)) if names else set()
            return tuple(n for i, n in enumerate(names) if i in chosen)
        return tuple(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in self.patterns))


ALL = Nodes(("*",))


def parse_nodes(value: object, where: str) -> Nodes:
    """ "a*", "10%", "a001", or a list of names and patterns."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                raise FaultError(where, f"expected a share such as '10%', got {value!r}") from None
            if not 0 < pct <= 100:
                raise FaultError(where, f"a share must be in (0%, 100%], got {value!r}")
            return Nodes(permille=max(1, round(pct * 10)))
        value = [text]
    if not isinstance(value, list) or not value:
        raise FaultError(where, f"expected node names or patterns, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise FaultError(f"{where}[{i}]", f"expected a node name or pattern, got {item!r}")
    return Nodes(tuple(str(v).strip() for v in value))


# ---------------------------------------------------------------------------------------------
# faults


@dataclass(frozen=True)
class Fault:
    """Something that happens to the system at `at_ms` after the start of the run."""

    KIND: ClassVar[str] = "fault"
    at_ms: int

    def selectors(self) -> tuple[Nodes, ...]:
        return ()

    def with_selectors(self, resolved: tuple[Nodes, ...]) -> Fault:
        return self

    def describe(self) -> str:
        return self.KIND


@dataclass(frozen=True)
class NodeFault(Fault):
    """A fault that hits a set of nodes, optionally undone `for_ms` later."""

    nodes: Nodes = ALL
    for_ms: int | None = None
    UNDO: ClassVar[type[NodeFault] | None] = None

    def selectors(self) -> tuple[Nodes, ...]:
        return (self.nodes,)

    def with_selectors(self, resolved: tuple[Nodes, ...]) -> Fault:
        return replace(self, nodes=resolved[0])

    def describe(self) -> str:
        tail = f" for {_fmt_ms(self.for_ms)}" if self.for_ms else ""
        return f"{self.KIND} {self.nodes.describe()}{tail}"


@dataclass(frozen=True)
class Restart(NodeFault):
    """Start crashed nodes again from their persisted state (no effect on live nodes)."""

    KIND = "restart"


@dataclass(frozen=True)
class Crash(NodeFault):
    """Kill the process: volatile state is lost, persisted state is kept."""

    KIND = "crash"
    UNDO = Restart


@dataclass(frozen=True)
class DiskLoss(NodeFault):
    """Kill the process and wipe its disk: it restarts empty and must catch up."""

    KIND = "disk_loss"
    UNDO = Restart


@dataclass(frozen=True)
class Resume(NodeFault):
    KIND = "resume"


@dataclass(frozen=True)
class Pause(NodeFault):
    """SIGSTOP: the node neither steps nor receives (what arrives meanwhile is lost)."""

    KIND = "pause"
    UNDO = Resume


@dataclass(frozen=True)
class ClockSkew(NodeFault):
    """The nodes' clocks read `by_ms` ahead (negative: behind) of true time from now on."""

    KIND = "clock_skew"
    by_ms: int = 0

    def describe(self) -> str:
        return f"clock_skew {self.nodes.describe()} by {self.by_ms:+d}ms"


@dataclass(frozen=True)
class Byzantine(NodeFault):
    """The nodes run a registered Byzantine behaviour (sim_harness.byzantine) from now on."""

    KIND = "byzantine"
    behaviour: str = "silent"

    def describe(self) -> str:
        return f"byzantine {self.nodes.describe()} {self.behaviour}"


@dataclass(frozen=True)
class Delay(NodeFault):
    """Every link touching these nodes gets `by_ms` more one-way latency (until a heal)."""

    KIND = "delay"
    by_ms: int = 0

    def describe(self) -> str:
        return f"delay {self.nodes.describe()} by {self.by_ms}ms"


@dataclass(frozen=True)
class Loss(NodeFault):
    """Every link touching these nodes drops messages with probability `rate` (until a heal)."""

    KIND = "loss"
    rate: float = 0.0

    def describe(self) -> str:
        return f"loss {self.nodes.describe()} rate {self.rate:g}"


@dataclass(frozen=True)
class Heal(Fault):
    """Undo every network fault: partitions, cut links, one-way partitions, delay, loss."""

    KIND = "heal"


@dataclass(frozen=True)
class NetworkFault(Fault):
    for_ms: int | None = None

    def _tail(self) -> str:
        return f" for {_fmt_ms(self.for_ms)}" if self.for_ms else ""


@dataclass(frozen=True)
class Partition(NetworkFault):
    """Split the network into groups; nodes in no group form one more group. Replaces any
    earlier partition."""

    KIND = "partition"
    groups: tuple[Nodes, ...] = ()

    def selectors(self) -> tuple[Nodes, ...]:
        return self.groups

    def with_selectors(self, resolved: tuple[Nodes, ...]) -> Fault:
        return replace(self, groups=resolved)

    def describe(self) -> str:
        return "partition " + " | ".join(g.describe() for g in self.groups) + self._tail()


@dataclass(frozen=True)
class CutLink(NetworkFault):
    """Cut every link between a node in `a` and a node in `b`, both ways."""

    KIND = "cut"
    a: Nodes = ALL
    b: Nodes = ALL

    def selectors(self) -> tuple[Nodes, ...]:
        return (self.a, self.b)

    def with_selectors(self, resolved: tuple[Nodes, ...]) -> Fault:
        return replace(self, a=resolved[0], b=resolved[1])

    def describe(self) -> str:
        return f"cut {self.a.describe()} <-> {self.b.describe()}{self._tail()}"


@dataclass(frozen=True)
class OneWayPartition(NetworkFault):
    """Messages from `src` nodes to `dst` nodes are dropped; the other way still works."""

    KIND = "one_way"
    src: Nodes = ALL
    dst: Nodes = ALL

    def selectors(self) -> tuple[Nodes, ...]:
        return (self.src, self.dst)

    def with_selectors(self, resolved: tuple[Nodes, ...]) -> Fault:
        return replace(self, src=resolved[0], dst=resolved[1])

    def describe(self) -> str:
        return f"one_way {self.src.describe()} -> {self.dst.describe()}{self._tail()}"


NODE_FAULTS: dict[str, type[NodeFault]] = {
    c.KIND: c for c in (Crash, Restart, Pause, Resume, DiskLoss, ClockSkew, Byzantine, Delay, Loss)
}
FAULT_KEYS = ("at", "for", *NODE_FAULTS, "partition", "heal", "cut", "one_way")


# ---------------------------------------------------------------------------------------------
# what a lifecycle fault does to a node

BOOTED, CRASHED, PAUSED = 1, 2, 4
"""A node's lifecycle flags; it runs when its state is exactly BOOTED."""


def next_state(state: int, kind: str) -> int:
    """A node's flags after a lifecycle event ("boot" or a fault KIND; others change nothing).
    One function for the planner and the run, so both agree on when a node is up."""
    if kind == "boot":
        return state | BOOTED
    if kind in (Crash.KIND, DiskLoss.KIND):
        return (state | CRASHED) & ~PAUSED
    if kind == Restart.KIND and state & CRASHED:
        return (state | BOOTED) & ~CRASHED & ~PAUSED
    if kind == Pause.KIND and state == BOOTED:
        return state | PAUSED
    if kind == Resume.KIND:
        return state & ~PAUSED
    return state


# ---------------------------------------------------------------------------------------------
# reading one [[faults]] table


def parse_fault(raw: Mapping[str, object], where: str) -> Fault:
    """One `[[faults]]` table: `at` plus exactly one fault key (and `for` where it applies)."""
    for key in raw:
        if key not in FAULT_KEYS:
            import difflib

            close = difflib.get_close_matches(key, FAULT_KEYS, n=1)
            hint = (
                f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(FAULT_KEYS)})"
            )
            raise FaultError(f"{where}.{key}", f"unknown key{hint}")
    if "at" not in raw:
        raise FaultError(f"{where}.at", 'required (for example at = "30s")')
    at_ms = parse_duration_ms(raw["at"], f"{where}.at")
    kinds = [k for k in raw if k not in ("at", "for")]
    if len(kinds) != 1:
        raise FaultError(where, f"expected exactly one fault per table, got {kinds or 'none'}")
    kind = kinds[0]
    value, at = raw[kind], f"{where}.{kind}"
    for_ms = parse_duration_ms(raw["for"], f"{where}.for") if "for" in raw else None
    if kind == "heal":
        if value is not True or for_ms is not None:
            raise FaultError(at, "write heal = true (and no 'for')")
        return Heal(at_ms)
    if kind == "partition":
        if not isinstance(value, list) or not value:
            raise FaultError(
                at, f"expected a list of groups such as [['a*'], ['b*']], got {value!r}"
            )
        groups = tuple(parse_nodes(g, f"{at}[{i}]") for i, g in enumerate(value))
        return Partition(at_ms, for_ms, groups)
    if kind in ("cut", "one_way"):
        return _parse_pair(kind, value, at, at_ms, for_ms)
    return _parse_node_fault(NODE_FAULTS[kind], value, at, at_ms, for_ms)


def _parse_pair(kind: str, value: object, at: str, at_ms: int, for_ms: int | None) -> Fault:
    if kind == "cut":
        if not isinstance(value, list) or len(value) != 2:
            raise FaultError(
                at, f"expected two node selectors such as ['a001', 'b*'], got {value!r}"
            )
        return CutLink(
            at_ms, for_ms, parse_nodes(value[0], f"{at}[0]"), parse_nodes(value[1], f"{at}[1]")
        )
    table = _table(value, at, ("from", "to"))
    src = parse_nodes(_need(table, "from", at), f"{at}.from")
    return OneWayPartition(at_ms, for_ms, src, parse_nodes(_need(table, "to", at), f"{at}.to"))


def _parse_node_fault(
    cls: type[NodeFault], value: object, at: str, at_ms: int, for_ms: int | None
) -> Fault:
    if for_ms is not None and cls.UNDO is None:
        raise FaultError(at.rpartition(".")[0] + ".for", f"{cls.KIND} cannot be undone with 'for'")
    if cls is ClockSkew or cls is Delay:
        t = _table(value, at, ("nodes", "by"))
        by = parse_duration_ms(_need(t, "by", at), f"{at}.by", signed=cls is ClockSkew)
        return cls(at_ms, parse_nodes(t.get("nodes", "*"), f"{at}.nodes"), None, by)
    if cls is Loss:
        t = _table(value, at, ("nodes", "rate"))
        rate = t.get("rate")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise FaultError(f"{at}.rate", f"expected a probability 0..1, got {rate!r}")
        return Loss(at_ms, parse_nodes(t.get("nodes", "*"), f"{at}.nodes"), None, float(rate))
    if cls is Byzantine:
        t = _table(value, at, ("nodes", "behaviour"))
        behaviour = _need(t, "behaviour", at)
        if not isinstance(behaviour, str):
            raise FaultError(f"{at}.behaviour", f"expected a behaviour name, got {behaviour!r}")
        return Byzantine(at_ms, parse_nodes(_need(t, "nodes", at), f"{at}.nodes"), None, behaviour)
    if value is True:
        value = "*"
    return cls(at_ms, parse_nodes(value, at), for_ms)


def _table(value: object, at: str, keys: tuple[str, ...]) -> dict[str, object]:
    if not isinstance(value, dict):
        raise FaultError(at, f"expected a table with keys {', '.join(keys)}, got {value!r}")
    for key in value:
        if key not in keys:
            raise FaultError(f"{at}.{key}", f"unknown key (known: {', '.join(keys)})")
    return value


def _need(table: Mapping[str, object], key: str, at: str) -> object:
    if key not in table:
        raise FaultError(f"{at}.{key}", "required")
    return table[key]


# ---------------------------------------------------------------------------------------------
# planning a run's timeline


def plan_faults(
    faults: Sequence[Fault], names: Sequence[str], rng: random.Random
) -> tuple[Fault, ...]:
    """Resolve every selector to explicit names and expand `for`, sorted by time (ties keep
    the given order, undoings after the faults of the same instant)."""
    planned: list[tuple[int, int, Fault]] = []
    for i, fault in enumerate(faults):
        resolved = tuple(Nodes(s.resolve(names, rng)) for s in fault.selectors())
        concrete = fault.with_selectors(resolved)
        for_ms = None
        if isinstance(concrete, NodeFault | NetworkFault) and concrete.for_ms:
            for_ms, concrete = concrete.for_ms, replace(concrete, for_ms=None)
        planned.append((concrete.at_ms, i, concrete))
        if for_ms:
            undo_at = concrete.at_ms + for_ms
            planned.append((undo_at, len(faults) + i, _undo(concrete, undo_at)))
    planned.sort(key=lambda item: (item[0], item[1]))
    return tuple(f for _, _, f in planned)


def _undo(fault: Fault, at: int) -> Fault:
    if isinstance(fault, NodeFault):
        undo = fault.UNDO
        if undo is None:
            raise FaultError(fault.KIND, "cannot be undone")
        return undo(at, fault.nodes)
    return Heal(at)


def liveness_heals(plan: Sequence[Fault], names: Sequence[str], at_ms: int) -> tuple[Fault, ...]:
    """The faults that open the liveness phase at `at_ms`: a heal if a network fault is still
    in force, and a restart, resume or clock reset for the nodes still crashed, paused or
    skewed after `plan` (a planned timeline, selectors resolved)."""
    state: dict[str, int] = {}
    skew: dict[str, int] = {}
    network_faulty = False
    for f in plan:
        hit = [x for sel in f.selectors() for x in sel.patterns]
        if isinstance(f, Crash | DiskLoss | Restart | Pause | Resume):
            for x in hit:
                state[x] = next_state(state.get(x, BOOTED), f.KIND)
        elif isinstance(f, ClockSkew):
            skew.update((x, f.by_ms) for x in hit)
        elif not isinstance(f, Byzantine):
            network_faulty = not isinstance(f, Heal)
    crashed = Nodes(tuple(x for x in names if state.get(x, 0) & CRASHED))
    paused = Nodes(tuple(x for x in names if state.get(x, 0) == BOOTED | PAUSED))
    skewed = Nodes(tuple(x for x in names if skew.get(x, 0) != 0))
    heals: list[Fault] = [Heal(at_ms)] if network_faulty else []
    if crashed.patterns:
        heals.append(Restart(at_ms, crashed))
    if paused.patterns:
        heals.append(Resume(at_ms, paused))
    if skewed.patterns:
        heals.append(ClockSkew(at_ms, skewed, None, 0))
    return tuple(heals)


# ---------------------------------------------------------------------------------------------
# VOPR mode: the seed draws the timeline


SWARM_KINDS = (
    "crash", "disk_loss", "pause", "clock_skew", "partition", "cut", "one_way", "delay", "loss",
    "byzantine",
)  # fmt: skip


@dataclass(frozen=True)
class SwarmSpec:
    """Bounds within which the seed draws a whole fault timeline (TigerBeetle's VOPR)."""

    enabled: bool = False
    events_max: int = 12
    kinds: tuple[str, ...] = SWARM_KINDS
    share_max: float = 0.2
    """The largest share of nodes one crash, pause, skew, delay or loss may hit."""
    skew_max_ms: int = 5_000
    delay_max_ms: int = 300
    loss_max: float = 0.2
    byzantine_max: float = 0.1
    behaviours: tuple[str, ...] = ()
    """Byzantine behaviours to draw from; empty means every registered one."""
    fault_ms_max: int = 30_000
    """How long a drawn crash, pause or partition lasts at most."""
    network_loss_max: float = 0.02
    """The run's base loss rate is drawn from 0..this (it stays on in the liveness phase)."""
    duplicate_max: float = 0.02
    reorder_max: float = 0.05


def draw_swarm_faults(
    spec: SwarmSpec,
    names: Sequence[str],
    duration_ms: int,
    rng: random.Random,
    behaviours: Sequence[str],
) -> tuple[Fault, ...]:
    """A timeline drawn from `rng` within `spec`: Byzantine nodes from the start, then up to
    `events_max` faults at uniformly drawn times, each with drawn nodes and parameters."""
    out: list[Fault] = []
    n = len(names)
    byz_k = int(n * spec.byzantine_max)
    if "byzantine" in spec.kinds and byz_k > 0 and behaviours:
        k = rng.randint(0, byz_k)
        chosen = sorted(rng.sample(range(n), k))
        for i in chosen:
            out.append(Byzantine(0, Nodes((names[i],)), None, rng.choice(list(behaviours))))
    kinds = [k for k in spec.kinds if k != "byzantine"]
    if not kinds or duration_ms <= 0 or n == 0:
        return tuple(out)
    for _ in range(rng.randint(1, max(1, spec.events_max))):
        at = rng.randrange(duration_ms)
        out.append(_draw_one(rng.choice(kinds), at, spec, names, rng))
    return tuple(out)


def _draw_share(spec: SwarmSpec, names: Sequence[str], rng: random.Random) -> Nodes:
    k = rng.randint(1, max(1, int(len(names) * spec.share_max)))
    return Nodes(tuple(sorted(rng.sample(list(names), k), key=list(names).index)))


def _draw_one(
    kind: str, at: int, spec: SwarmSpec, names: Sequence[str], rng: random.Random
) -> Fault:
    span = rng.randint(1_000, max(1_000, spec.fault_ms_max))
    if kind in ("crash", "disk_loss", "pause"):
        cls = {"crash": Crash, "disk_loss": DiskLoss, "pause": Pause}[kind]
        return cls(at, _draw_share(spec, names, rng), span)
    if kind == "clock_skew":
        by = rng.randint(-spec.skew_max_ms, spec.skew_max_ms)
        return ClockSkew(at, _draw_share(spec, names, rng), None, by)
    if kind == "delay":
        return Delay(
            at, _draw_share(spec, names, rng), None, rng.randint(1, max(1, spec.delay_max_ms))
        )
    if kind == "loss":
        rate = round(rng.uniform(0, spec.loss_max), 3)
        return Loss(at, _draw_share(spec, names, rng), None, rate)
    if kind == "partition":
        order = list(names)
        rng.shuffle(order)
        cut = rng.randint(1, max(1, len(order) - 1))
        return Partition(at, span, (Nodes(tuple(sorted(order[:cut]))),))
    a, b = _draw_share(spec, names, rng), _draw_share(spec, names, rng)
    if kind == "cut":
        return CutLink(at, span, a, b)
    return OneWayPartition(at, span, a, b)
