"""The simulated network: regions, the gossip mesh, link faults over time, and how far and how
fast one published message spreads.

Per-hop events would cost N x D heap operations per message; instead `Network.spread`
computes a message's first arrival at every node in one Dijkstra pass over the mesh from the
publisher (DESIGN.md: the simulator owns delay, loss, duplication, reordering, partitions),
compiled in `spread_kernel` (the Python pass here is the definition it is tested against).
Each directed link's delay is its regions' base latency plus jitter, an occasional reorder
delay and the transfer time at the link's bandwidth, each a counter-based draw from the
message's key (seed, sender, time, content), so the draws never depend on the path taken. A hop is
lost with the link's loss rate; a hop over a cut, partitioned or one-way-blocked link, or
onto a node that is crashed or paused when the message arrives, never lands. A node whose
validator rejects the message neither delivers nor forwards it, and a silent node delivers
but does not forward. Faults are all planned before the run starts (`LinkSchedule`,
`NodeSchedule`), so the pass can ask what the network and each node look like at any future
instant; the only changes made during a run are links severed by a node's own `Disconnect`.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sim_harness import spread_kernel as kernel
from sim_harness.faults import (
    BOOTED,
    Byzantine,
    ClockSkew,
    CutLink,
    Delay,
    Fault,
    Heal,
    Loss,
    OneWayPartition,
    Partition,
    next_state,
)
from sim_harness.spread_kernel import draw_hops, duplicate_draws, spread_pass

REGIONS = (
    "eu-west", "eu-central", "eu-north", "eu-south", "us-east", "us-central", "us-west",
    "ca-central", "sa-east", "ap-south", "ap-southeast", "ap-northeast", "au-east", "af-south",
    "me-central",
)  # fmt: skip
# One-way latency in ms: 2 within a region, else 3 + great-circle km / 120 (fibre at ~2/3 c
# with a detour), capped at 150. A literal table, not trigonometry at run time, so that a
# different libm can never change a latency by one ms.
_LATENCY_MS = (
    (  2,  12,  17,  15,  49,  55,  65,  43,  81,  66,  96,  83, 147,  86,  52),  # eu-west
    ( 12,   2,  13,   7,  58,  64,  72,  52,  85,  58,  88,  81, 140,  81,  43),  # eu-central
    ( 17,  13,   2,  17,  59,  63,  68,  52,  94,  55,  83,  71, 133,  89,  43),  # eu-north
    ( 15,   7,  17,   2,  60,  67,  76,  54,  82,  57,  88,  84, 141,  77,  42),  # eu-south
    ( 49,  58,  59,  60,   2,  15,  33,  10,  67, 110, 132,  94, 134, 109,  98),  # us-east
    ( 55,  64,  63,  67,  15,   2,  22,  17,  76, 112, 127,  85, 123, 121, 102),  # us-central
    ( 65,  72,  68,  76,  33,  22,   2,  33,  92, 109, 113,  69, 107, 139, 104),  # us-west
    ( 43,  52,  52,  54,  10,  17,  33,   2,  71, 104, 126,  90, 137, 109,  91),  # ca-central
    ( 81,  85,  94,  82,  67,  76,  92,  71,   2, 118, 136, 150, 114,  56, 105),  # sa-east
    ( 66,  58,  55,  57, 110, 112, 109, 104, 118,   2,  36,  59,  88,  72,  19),  # ap-south
    ( 96,  88,  83,  88, 132, 127, 113, 126, 136,  36,   2,  47,  56,  84,  52),  # ap-southeast
    ( 83,  81,  71,  84,  94,  85,  69,  90, 150,  59,  47,   2,  68, 126,  69),  # ap-northeast
    (147, 140, 133, 141, 134, 123, 107, 137, 114,  88,  56,  68,   2,  95, 103),  # au-east
    ( 86,  81,  89,  77, 109, 121, 139, 109,  56,  72,  84, 126,  95,   2,  67),  # af-south
    ( 52,  43,  43,  42,  98, 102, 104,  91, 105,  19,  52,  69, 103,  67,   2),  # me-central
)  # fmt: skip
_REGION_INDEX = {name: i for i, name in enumerate(REGIONS)}
NEVER_MS = 1 << 62
BLOCKED, LOST = -1, -2
"""Link weights that mean "this hop does not land"."""
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


def base_latency_ms(a: str, b: str) -> int:
    """One-way latency between two regions before jitter; KeyError for an unknown region."""
    return _LATENCY_MS[_REGION_INDEX[a]][_REGION_INDEX[b]]


# ---------------------------------------------------------------------------------------------
# the mesh


@dataclass(frozen=True)
class Mesh:
    """An undirected graph as directed edges in CSR form: node u's out-edges are the ids
    offsets[u] .. offsets[u+1]-1, and edge e leads from sources[e] to targets[e]."""

    n: int
    offsets: tuple[int, ...]
    targets: tuple[int, ...]
    sources: tuple[int, ...]
    _index: dict[tuple[int, int], int] = field(repr=False, compare=False)

    def neighbours(self, u: int) -> tuple[int, ...]:
        return self.targets[self.offsets[u] : self.offsets[u + 1]]

    def edge(self, u: int, v: int) -> int | None:
        return self._index.get((u, v))

    def is_connected(self, among: Sequence[int] | None = None) -> bool:
        """Whether the nodes `among` (default all) reach each other through each other."""
        keep = set(range(self.n) if among is None else among)
        if not keep:
            return True
        start = min(keep)
        seen, stack = {start}, [start]
        while stack:
            for v in self.neighbours(stack.pop()):
                if v in keep and v not in seen:
                    seen.add(v)
                    stack.append(v)
        return seen == keep


def build_mesh(
    n: int, degree: int, rng: random.Random, backbone: Sequence[int] | None = None
) -> Mesh:
    """A random graph in which every node has at most `degree` neighbours (gossipsub's D).

    A ring through the `backbone` nodes (default all) in a drawn order keeps them connected
    whatever happens to the others: it stands for gossipsub's mesh maintenance, which
    re-grafts around peers that stop forwarding, so a silent minority cannot cut the honest
    nodes apart. Random links then fill every node up towards `degree`.
    """
    if degree < 2:
        raise ValueError(f"mesh degree must be at least 2, got {degree}")
    adj: list[set[int]] = [set() for _ in range(n)]

    def link(u: int, v: int) -> None:
        adj[u].add(v)
        adj[v].add(u)

    ring = list(range(n) if backbone is None else backbone)
    rng.shuffle(ring)
    for i in range(len(ring) - 1 if len(ring) <= 2 else len(ring)):
        link(ring[i], ring[(i + 1) % len(ring)])
    order = list(range(n))
    rng.shuffle(order)
    for u in order:
        for _ in range(4 * degree):
            if len(adj[u]) >= degree or n <= 1:
                break
            v = rng.randrange(n)
            if v != u and v not in adj[u] and len(adj[v]) < degree:
                link(u, v)
    return mesh_from_adjacency(adj)


def mesh_from_adjacency(adj: Sequence[set[int] | Sequence[int]]) -> Mesh:
    """A mesh from each node's neighbours (made symmetric), for `build_mesh` and tests."""
    n = len(adj)
    sym: list[set[int]] = [set() for _ in range(n)]
    for u, vs in enumerate(adj):
        for v in vs:
            if v != u:
                sym[u].add(v)
                sym[v].add(u)
    offsets, targets, sources = [0], [], []
    for u in range(n):
        for v in sorted(sym[u]):
            targets.append(v)
            sources.append(u)
        offsets.append(len(targets))
    index = {(s, t): e for e, (s, t) in enumerate(zip(sources, targets, strict=True))}
    return Mesh(n, tuple(offsets), tuple(targets), tuple(sources), index)


# ---------------------------------------------------------------------------------------------
# what is planned: node states and link states over time


@dataclass
class NodeSchedule:
    """Each node's planned down intervals [start, end), clock skew changes (from_ms, skew)
    and the time from which it stops forwarding gossip (silent Byzantine nodes)."""

    down: list[list[tuple[int, int]]]
    skews: list[list[tuple[int, int]]]
    silent_from: list[int]

    @classmethod
    def empty(cls, n: int) -> NodeSchedule:
        return cls([[] for _ in range(n)], [[] for _ in range(n)], [NEVER_MS] * n)

    @classmethod
    def from_plan(
        cls,
        plan: Sequence[Fault],
        boots: Sequence[int],
        names: Sequence[str],
        forwards: Callable[[str], bool],
    ) -> NodeSchedule:
        """Walk the planned faults and boot times in the order the simulator applies them
        (faults before boots at the same instant) with the simulator's own state machine."""
        index = {name: i for i, name in enumerate(names)}
        n = len(names)
        events: list[tuple[int, int, str, int]] = []
        out = cls.empty(n)
        for k, f in enumerate(plan):
            targets = [index[x] for sel in f.selectors() for x in sel.patterns]
            if isinstance(f, ClockSkew):
                for v in targets:
                    sk = out.skews[v]
                    if sk and sk[-1][0] == f.at_ms:
                        sk.pop()
                    sk.append((f.at_ms, f.by_ms))
            elif isinstance(f, Byzantine) and not forwards(f.behaviour):
                for v in targets:
                    out.silent_from[v] = min(out.silent_from[v], f.at_ms)
            events += [(f.at_ms, k, f.KIND, v) for v in targets]
        events += [(t, len(plan) + v, "boot", v) for v, t in enumerate(boots)]
        events.sort(key=lambda e: (e[0], e[1]))
        state, down_since = [0] * n, [0] * n
        for t, _, kind, v in events:
            new = next_state(state[v], kind)
            if (new == BOOTED) != (state[v] == BOOTED):
                if new == BOOTED:
                    if down_since[v] < t:
                        out.down[v].append((down_since[v], t))
                else:
                    down_since[v] = t
            state[v] = new
        for v in range(n):
            if state[v] != BOOTED:
                out.down[v].append((down_since[v], NEVER_MS))
        return out

    def settled(self, v: int) -> tuple[int, bool]:
        """(the time of v's last planned change, whether it is up from then on)."""
        spans = self.down[v]
        if not spans:
            return 0, True
        start, end = spans[-1]
        return (start, False) if end >= NEVER_MS else (end, True)

    def up(self, v: int, t: int) -> bool:
        spans = self.down[v]
        i = bisect.bisect_right(spans, (t, NEVER_MS)) - 1
        return i < 0 or not spans[i][0] <= t < spans[i][1]

    def skew_at(self, v: int, t: int) -> int:
        changes = self.skews[v]
        i = bisect.bisect_right(changes, (t, NEVER_MS)) - 1
        return changes[i][1] if i >= 0 else 0


@dataclass(frozen=True)
class LinkState:
    """The network faults in force during one epoch, per directed edge."""

    link_down: BoolArray
    """Partitioned or cut: the connection itself is gone (both ways)."""
    blocked: BoolArray
    """link_down, or dropped by a one-way partition."""
    extra_ms: IntArray
    loss: FloatArray


class LinkSchedule:
    """Link states as a step function of time: epoch i holds from starts[i] to starts[i+1]."""

    def __init__(self, starts: list[int], states: list[LinkState]) -> None:
        self.starts, self.states = starts, states

    def at(self, t: int) -> int:
        return bisect.bisect_right(self.starts, t) - 1

    @classmethod
    def from_faults(
        cls, faults: Sequence[Fault], mesh: Mesh, names: Sequence[str], base_loss: float
    ) -> LinkSchedule:
        """Fold the planned network faults (already resolved to names) into epochs."""
        index = {name: i for i, name in enumerate(names)}
        src, dst = np.array(mesh.sources, np.int64), np.array(mesh.targets, np.int64)
        b = _Builder(len(names), src, dst, base_loss)
        starts, states = [0], [b.state()]
        for f in faults:
            if not b.apply(f, index):
                continue
            if starts[-1] == f.at_ms:
                states[-1] = b.state()
            else:
                starts.append(f.at_ms)
                states.append(b.state())
        return cls(starts, states)


class _Builder:
    def __init__(self, n: int, src: IntArray, dst: IntArray, base_loss: float) -> None:
        self.n, self.src, self.dst, self.base_loss = n, src, dst, base_loss
        self.heal()

    def heal(self) -> None:
        self.group = np.zeros(self.n, np.int64)
        self.cut = np.zeros(len(self.src), np.bool_)
        self.one_way = np.zeros(len(self.src), np.bool_)
        self.delay = np.zeros(self.n, np.int64)
        self.node_loss = np.zeros(self.n, np.float64)

    def mask(self, nodes: Sequence[str], index: dict[str, int]) -> BoolArray:
        m = np.zeros(self.n, np.bool_)
        m[[index[x] for x in nodes]] = True
        return m

    def apply(self, f: Fault, index: dict[str, int]) -> bool:
        """Change the state for a network fault; False if `f` is not one."""
        if isinstance(f, Heal):
            self.heal()
        elif isinstance(f, Partition):
            self.group = np.zeros(self.n, np.int64)  # unlisted nodes: group 0
            for g, nodes in enumerate(f.groups, start=1):
                self.group[self.mask(nodes.patterns, index)] = g
        elif isinstance(f, CutLink | OneWayPartition):
            a, b = (f.a, f.b) if isinstance(f, CutLink) else (f.src, f.dst)
            ma, mb = self.mask(a.patterns, index), self.mask(b.patterns, index)
            hit = ma[self.src] & mb[self.dst]
            if isinstance(f, CutLink):
                self.cut |= hit | (mb[self.src] & ma[self.dst])
            else:
                self.one_way |= hit
        elif isinstance(f, Delay):
            self.delay[self.mask(f.nodes.patterns, index)] = f.by_ms
        elif isinstance(f, Loss):
            self.node_loss[self.mask(f.nodes.patterns, index)] = f.rate
        else:
            return False
        return True

    def state(self) -> LinkState:
        s, d = self.src, self.dst
        link_down = self.cut | (self.group[s] != self.group[d])
        loss = np.maximum(np.maximum(self.node_loss[s], self.node_loss[d]), self.base_loss)
        return LinkState(link_down, link_down | self.one_way, self.delay[s] + self.delay[d], loss)


# ---------------------------------------------------------------------------------------------
# spreading one message


@dataclass(frozen=True)
class LinkKnobs:
    jitter_ms: int = 5
    duplicate: float = 0.0
    """Chance that a node's transport hands it a message twice."""
    reorder: float = 0.0
    """Chance that a hop takes up to `reorder_ms` longer (overtaken by later messages)."""
    reorder_ms: int = 50
    bandwidth_mbps: int = 100


class Spread:
    """Where one message landed: first arrivals in (time, node) order, extra copies, and what
    became of the hops that did not land. Arrivals are held as two arrays (`times`, `nodes`)
    so that a simulator can hand a thousand of them to a book table at once."""

    def __init__(self, arrivals: list[tuple[int, int]], duplicates: list[tuple[int, int]]) -> None:
        self.times, self.nodes = _columns(arrivals)
        self.dup_times, self.dup_nodes = _columns(duplicates)
        self.rejected = self.lost = self.blocked = self.down = 0

    @property
    def arrivals(self) -> list[tuple[int, int]]:
        return list(zip(self.times.tolist(), self.nodes.tolist(), strict=True))

    @property
    def duplicates(self) -> list[tuple[int, int]]:
        return list(zip(self.dup_times.tolist(), self.dup_nodes.tolist(), strict=True))


_NO_INTS: IntArray = np.zeros(0, np.int64)
_NO_INTS.flags.writeable = False
"""The columns of no pairs, shared: most spreads have no duplicates, and every compiled one
starts from none, so a new empty array each time (a few microseconds) added up."""


def _columns(pairs: list[tuple[int, int]]) -> tuple[IntArray, IntArray]:
    if not pairs:
        return _NO_INTS, _NO_INTS
    both = np.array(pairs, np.int64)
    return both[:, 0].copy(), both[:, 1].copy()


class Network:
    """The network model of one run. `spread` and `direct` draw from the generator they are
    given for the message, else from `rng` in publish order."""

    def __init__(
        self,
        mesh: Mesh,
        regions: Sequence[str],
        knobs: LinkKnobs,
        links: LinkSchedule,
        nodes: NodeSchedule,
        rng: np.random.Generator,
    ) -> None:
        self.mesh, self.knobs, self.links, self.nodes, self.rng = mesh, knobs, links, nodes, rng
        ri = [_REGION_INDEX[r] for r in regions]
        self.base_ms: IntArray = np.array(
            [_LATENCY_MS[ri[u]][ri[v]] for u, v in zip(mesh.sources, mesh.targets, strict=True)],
            np.int64,
        )
        self.severed: BoolArray = np.zeros(len(mesh.targets), np.bool_)
        self._offsets, self._targets = mesh.offsets, mesh.targets
        settled = [nodes.settled(v) for v in range(mesh.n)]
        self._settle_ms = [s[0] for s in settled]
        self._final_up = [s[1] for s in settled]
        self._down_till_settled = [len(d) == 1 and d[0][0] == 0 for d in nodes.down]
        """Nodes whose one planned down span starts the run (not booted yet): before they
        settle they are down, with no need to search their spans."""
        self._has_skew = [bool(s) for s in nodes.skews]
        self._loss_possible = any(bool((s.loss > 0).any()) for s in links.states)
        self.compiled = True
        """Spread with the compiled pass (`spread_kernel`); tests switch it off to run the
        Python pass, the model's definition, and compare."""
        self._kernel_arrays(mesh, links, nodes)

    def _kernel_arrays(self, mesh: Mesh, links: LinkSchedule, nodes: NodeSchedule) -> None:
        """The mesh, link epochs and node plans as the flat arrays `spread_pass` reads, and
        its scratch space (allocated once: a pass at 10,000 nodes must not allocate)."""
        n, e_count = mesh.n, len(mesh.targets)
        self._graph = (np.asarray(mesh.offsets, np.int64), np.asarray(mesh.targets, np.int64),
                       self.base_ms)  # fmt: skip
        states = links.states
        self._links = (
            np.asarray(links.starts, np.int64),
            np.stack([s.blocked for s in states]),
            np.stack([s.extra_ms for s in states]).astype(np.int64),
            np.stack([s.loss for s in states]).astype(np.float64),
            self.severed,
        )
        self._extra_max = int(self._links[2].max()) if e_count else 0
        self._base_max = int(self.base_ms.max()) if e_count else 0

        def csr(rows: list[list[tuple[int, int]]]) -> tuple[IntArray, IntArray, IntArray]:
            off = np.zeros(n + 1, np.int64)
            off[1:] = np.cumsum([len(r) for r in rows])
            flat = [x for r in rows for x in r]
            a = np.array([x[0] for x in flat], np.int64)
            b = np.array([x[1] for x in flat], np.int64)
            return off, a, b

        self._nodes = (
            *csr(nodes.down), *csr(nodes.skews),
            np.asarray(nodes.silent_from, np.int64), np.asarray(self._settle_ms, np.int64),
            np.asarray(self._final_up, np.bool_), np.asarray(self._down_till_settled, np.bool_),
            np.asarray(self._has_skew, np.bool_),
        )  # fmt: skip
        self._work = (
            np.zeros(n, np.int64), np.zeros(n, np.uint8), np.full(1, -1, np.int64),
            np.zeros(e_count + 1, np.int64), np.zeros(e_count + 1, np.int64),
            np.zeros(e_count + 1, np.int64), np.zeros(n, np.int64),
        )  # fmt: skip
        self._out = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(5, np.int64))

    def _buckets_for(self, size_ms: int) -> None:
        """Make the bucket ring longer than the largest hop a message of this size can take."""
        k = self.knobs
        widest = self._base_max + size_ms + k.jitter_ms + self._extra_max
        widest += k.reorder_ms if k.reorder > 0 else 0
        if len(self._work[2]) <= widest:
            size = 1 << widest.bit_length()
            self._work = (*self._work[:2], np.full(size, -1, np.int64), *self._work[3:])

    # -- link state queries ---------------------------------------------------------------------

    def connected(self, u: int, v: int, t: int) -> bool:
        """Whether the u-v connection exists at t: a mesh link, not partitioned, cut or severed
        (a one-way partition drops messages but leaves the connection up)."""
        e = self.mesh.edge(u, v)
        if e is None or self.severed[e]:
            return False
        return not bool(self.links.states[self.links.at(t)].link_down[e])

    def blocked(self, u: int, v: int, t: int) -> bool:
        """Whether a message from u to v sent at t is dropped by a partition, cut or one-way."""
        e = self.mesh.edge(u, v)
        if e is None:
            return True
        return bool(self.links.states[self.links.at(t)].blocked[e] or self.severed[e])

    def sever(self, u: int, v: int) -> None:
        """A node dropped its connection to a neighbour: no gossip flows over it again."""
        for a, b in ((u, v), (v, u)):
            e = self.mesh.edge(a, b)
            if e is not None:
                self.severed[e] = True

    def latency_sample(self, u: int, v: int) -> int:
        """Base latency of a mesh link (for tests and reports)."""
        e = self.mesh.edge(u, v)
        if e is None:
            raise KeyError((u, v))
        return int(self.base_ms[e])

    # -- spreading ------------------------------------------------------------------------------

    def _key(self, key: int | None) -> int:
        return int(self.rng.integers(0, 1 << kernel.KEY_BITS)) if key is None else key

    def _size_ms(self, size_bytes: int) -> int:
        return size_bytes * 8 // (self.knobs.bandwidth_mbps * 1000)

    def _draw(self, size_bytes: int, key: int) -> tuple[IntArray, FloatArray]:
        """Every edge's delay and loss coin for the message with this draw key."""
        k = self.knobs
        return draw_hops(key, self.base_ms, self._size_ms(size_bytes), k.jitter_ms, k.reorder,
                         k.reorder_ms, self._loss_possible)  # fmt: skip

    def _weights(self, delay: IntArray, coin: FloatArray, epoch: int) -> list[int]:
        state = self.links.states[epoch]
        w = delay + state.extra_ms
        w = np.where(coin < state.loss, LOST, w)
        w = np.where(state.blocked | self.severed, BLOCKED, w)
        return w.tolist()  # type: ignore[no-any-return]

    def spread(
        self,
        src: int,
        t0: int,
        size_bytes: int,
        accept: tuple[int, int] | None,
        key: int | None = None,
    ) -> Spread:
        """First arrivals of a message `src` publishes at `t0`. `accept` is the window of
        true time [lo, hi) in which a node's validator passes it (shifted by each node's clock
        skew); None means no validator passes it. `key` (`spread_kernel.message_key`) picks
        the message's draws; without one it is drawn from the network's generator."""
        key = self._key(key)
        out = self._spread_compiled(src, t0, size_bytes, accept, key) if self.compiled else None
        if out is None:
            delay, coin = self._draw(size_bytes, key)
            out = self._spread_hop_by_hop(src, t0, delay, coin, accept)
        self._duplicates(out, key)
        return out

    def _spread_compiled(
        self, src: int, t0: int, size_bytes: int, accept: tuple[int, int] | None, key: int
    ) -> Spread | None:
        k = self.knobs
        size_ms = self._size_ms(size_bytes)
        self._buckets_for(size_ms)
        lo, hi = accept if accept is not None else (NEVER_MS, -NEVER_MS)
        out_t, out_v, counts = self._out
        count = spread_pass(src, t0, key, size_ms, k.jitter_ms, k.reorder, k.reorder_ms,
                            self._loss_possible, lo, hi, self._graph, self._links,
                            self._nodes, self._work, out_t, out_v, counts)  # fmt: skip
        if counts[kernel.ERROR]:
            return None
        out = Spread([], [])
        out.times, out.nodes = out_t[:count].copy(), out_v[:count].copy()
        out.lost, out.blocked = int(counts[kernel.LOST]), int(counts[kernel.BLOCKED])
        out.down, out.rejected = int(counts[kernel.DOWN]), int(counts[kernel.REJECTED])
        return out

    def _spread_hop_by_hop(
        self, src: int, t0: int, delay: IntArray, coin: FloatArray, accept: tuple[int, int] | None
    ) -> Spread:
        """The model's definition, one hop at a time; `spread_kernel.spread_pass` must agree
        with it."""
        links, nodes = self.links, self.nodes
        epoch = links.at(t0)
        cache = {epoch: self._weights(delay, coin, epoch)}
        weights = cache[epoch]
        epoch_end = links.starts[epoch + 1] if epoch + 1 < len(links.starts) else NEVER_MS
        lo, hi = accept if accept is not None else (NEVER_MS, -NEVER_MS)
        off, tg, silent = self._offsets, self._targets, nodes.silent_from
        settle, final_up, has_skew = self._settle_ms, self._final_up, self._has_skew
        booting = self._down_till_settled
        arrivals: list[tuple[int, int]] = []
        lost = blocked = down = rejected = 0
        best = [NEVER_MS] * self.mesh.n
        best[src] = t0
        heap = [(t0, src)]
        done = bytearray(self.mesh.n)
        while heap:
            t, u = heapq.heappop(heap)
            if done[u]:
                continue
            done[u] = 1
            if u != src:
                local = t + nodes.skew_at(u, t) if has_skew[u] else t
                if not lo <= local < hi:
                    rejected += 1
                    continue
                arrivals.append((t, u))
                if t >= silent[u]:
                    continue
            if t >= epoch_end:  # the message outlived the link state it started in
                epoch = links.at(t)
                if epoch not in cache:
                    cache[epoch] = self._weights(delay, coin, epoch)
                weights = cache[epoch]
                epoch_end = links.starts[epoch + 1] if epoch + 1 < len(links.starts) else NEVER_MS
            for e in range(off[u], off[u + 1]):
                w = weights[e]
                if w < 0:
                    if w == LOST:
                        lost += 1
                    else:
                        blocked += 1
                    continue
                v = tg[e]
                ta = t + w
                if ta >= best[v]:
                    continue
                up = (not booting[v] and nodes.up(v, ta)) if ta < settle[v] else final_up[v]
                if not up:
                    down += 1
                    continue
                best[v] = ta
                heapq.heappush(heap, (ta, v))
        out = Spread(arrivals, [])
        out.rejected, out.lost, out.blocked, out.down = rejected, lost, blocked, down
        return out

    def _duplicates(self, out: Spread, key: int) -> None:
        k = self.knobs
        n = len(out.times)
        if k.duplicate <= 0 or not n:
            return
        again, gap = duplicate_draws(key, n, k.duplicate, k.jitter_ms)
        out.dup_times, out.dup_nodes = (out.times + gap)[again], out.nodes[again]

    def direct(self, src: int, t0: int, size_bytes: int, key: int | None = None) -> Spread:
        """One hop to each mesh neighbour, no validator and no forwarding: a hostile peer
        writing straight to its neighbours' streams."""
        delay, coin = self._draw(size_bytes, self._key(key))
        weights = self._weights(delay, coin, self.links.at(t0))
        arrivals: list[tuple[int, int]] = []
        lost = blocked = down = 0
        for e in range(self._offsets[src], self._offsets[src + 1]):
            w, v = weights[e], self._targets[e]
            if w < 0:
                lost += w == LOST
                blocked += w == BLOCKED
            elif not self.nodes.up(v, t0 + w):
                down += 1
            else:
                arrivals.append((t0 + w, v))
        out = Spread(sorted(arrivals), [])
        out.lost, out.blocked, out.down = lost, blocked, down
        return out
