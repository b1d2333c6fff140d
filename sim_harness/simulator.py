"""The deterministic simulator: many real `NodeCore`s driven from one event queue.

    result = Simulator(load_scenario(path), seed, keep_trace=False, progress=None).run()

Everything derives from `seed`: node keys (`Identity.derive("sim", seed, i)`), the mesh, the
nodes drawn by "10%" selectors and by swarm mode, every latency, loss and duplicate, every
Byzantine node's choices. There is no trio, no wall clock and no global randomness in the
event logic (`run` reads `time.perf_counter` around the loop only, for `wall_s`), and events
are ordered by (time_ms, insertion order), so the same seed gives a byte-identical trace:
each processed event appends a canonical record (time, seq, kind, node, a payload digest and
what the core answered) to a running SHA-256, `SimResult.trace_sha256`; `state_sha256`
digests every final book.

Each node's clock reads `EPOCH_MS + true time + its skew`; its peers are its mesh neighbours
while the link and the neighbour are up (PeerUp/PeerDown follow crashes, restarts, cuts and
heals); what its core publishes goes to `network.Network.spread`, which gives the first
arrival at every node reached. A valid message an honest node publishes is then written into
every receiver's book at once (`book_table.BookTable.add_wave`; each core reads its own row
through `RowBook`), because all a core does with it is file it by the book's own rule; a
node the plan ever makes Byzantine, a book the rule alone cannot judge (see book_table), and
every second copy get an ordinary delivery event, a step of that node's core. The network
draws for each message from its own generator (`_draws_for`), so same-instant sends give the
same run in any order.
`per_delivery=True` (`gpumesh sim run --per-delivery`) steps a core for every delivery, as
a real node would be; tests/sim/test_determinism.py runs both and demands the same books,
convergence, checker verdicts and message counts.

Crash drops the core (the persisted dict survives; disk loss wipes it too), restart builds a
fresh core, pause stops a node stepping and receiving.
After `duration` the safety phase ends: the network heals, crashed nodes restart, paused
ones resume, clocks are set right, and the liveness phase must converge by the end.

Public API (the CLI, sweeps, reports and benchmarks build on it):
- `Simulator(scenario, seed, *, keep_trace=False, progress=None)`; `progress(now_ms, end_ms)`
  is called every simulated second. `observe_at(t_ms, fn)` calls `fn(sim)` then, read-only.
- `Simulator.run() -> SimResult` (once). While it runs, checkers read it as a
  `checkers.SimView`: `now_ms`, `names`, `honest`, `is_live(i)`, `core(i)`, `local_now(i)`,
  `public_key(i)`, `crashes`, `phase_end_ms`; also `plan` (the resolved fault timeline),
  `mesh`, `network`, `persisted`, `counts`.
- `SimResult` (frozen): seed, scenario_name, scenario_path, nodes, sim_ms, wall_s, events,
  trace_sha256, state_sha256, checkers (name -> Verdict), ok, replay_command, metrics, trace
  (the records as text lines, with keep_trace=True), and `to_json()`.
- `SimMetrics`: delivery_latency_ms (the first-arrival latency of every gossip delivery, up
  to 200,000 values; past that the list is decimated, every 2nd kept, then every 4th, ...:
  a uniform sample over the run), convergence ((time, share of honest live nodes whose book
  is complete) every simulated second), faults ((time, describe()) as applied), messages
  (published; reached: first arrivals the network scheduled; delivered: those a core was
  handed before the end; delivered_copies: duplicates and direct copies handed over; lost,
  blocked and dropped_at_down_node: hops that did not land; rejected_by_validator;
  duplicated; direct; disconnects; dials; and verdict_* summed over all cores),
  crashes (core steps that raised), phase_end_ms.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import shlex
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from node.core import (
    CoreConfig,
    GossipIn,
    Input,
    LocalLoad,
    NodeCore,
    PeerDown,
    PeerUp,
    Publish,
    Ready,
    Tick,
)
from p2p.announcements import (
    TOPIC_CAPACITY,
    BookConfig,
    CapacityAnnouncement,
    check_announcement,
    decode_announcement,
)
from p2p.errors import DecodeError
from p2p.identity import Identity
from p2p.wire import Signed
from sim_harness.book_table import BookTable, RowBook, state_piece
from sim_harness.byzantine import BYZANTINE, Behaviour, ByzContext
from sim_harness.checkers import CHECKERS, Checker, Verdict, incomplete_books
from sim_harness.faults import (
    BOOTED,
    CRASHED,
    Byzantine,
    ClockSkew,
    Crash,
    CutLink,
    DiskLoss,
    Fault,
    Heal,
    Partition,
    Pause,
    Restart,
    Resume,
    draw_swarm_faults,
    liveness_heals,
    next_state,
    plan_faults,
)
from sim_harness.network import (
    LinkKnobs,
    LinkSchedule,
    Network,
    NodeSchedule,
    Spread,
    build_mesh,
)
from sim_harness.scenario import Scenario
from sim_harness.spread_kernel import arrivals_digest, message_key

EPOCH_MS = 1_700_000_000_000
"""What every node's clock reads at simulated time 0 (a plausible Unix time in ms)."""
SAMPLE_MS = 1_000
LATENCY_SAMPLES_MAX = 200_000
DECODE_CACHE_MAX = 65_536
AUDIT_EVERY = 64
"""One honest announcement in this many is decoded and verified by the simulator although
its core handed over the envelope (`Simulator._adopt`)."""
CRASHES_KEPT_MAX = 1_000
(
    DELIVER,
    TICK,
    FAULT,
    BOOT,
    SAMPLE,
    LOAD,
    OBSERVE,
    PHASE_END,
    PUBLISH,
    DIRECT,
    SYNC,
    DIAL,
    DISCONNECT,
    WAVE,
) = range(14)
KIND_NAMES = ("deliver", "tick", "fault", "boot", "sample", "load", "observe", "phase_end",
              "publish", "direct", "peer", "dial", "disconnect", "wave")  # fmt: skip
"""Trace record kinds; sample, observe and phase_end are never traced (they only read)."""
TICK_INPUT = Tick()
NEVER = 1 << 62


def replay_command(scenario: Scenario, seed: int, *, per_delivery: bool = False) -> str:
    tail = " --per-delivery" if per_delivery else ""
    return f"gpumesh sim run {shlex.quote(scenario.path or scenario.name)} --seed {seed}{tail}"


def result_json(r: Any) -> dict[str, Any]:
    """The JSON of a run's result; the live runner's result (sim_harness.live) has the same
    fields and adds its own."""
    m = r.metrics
    return {
        "seed": r.seed, "scenario": r.scenario_name, "scenario_path": r.scenario_path,
        "nodes": r.nodes, "sim_ms": r.sim_ms, "wall_s": r.wall_s,
        "events": r.events, "trace_sha256": r.trace_sha256,
        "state_sha256": r.state_sha256, "ok": r.ok, "replay": r.replay_command,
        "checkers": {k: {"ok": v.ok, "detail": v.detail} for k, v in r.checkers.items()},
        "metrics": {
            "delivery_latency_ms": m.delivery_latency_ms,
            "convergence": [list(x) for x in m.convergence],
            "faults": [list(x) for x in m.faults], "messages": dict(m.messages),
            "crashes": list(m.crashes), "phase_end_ms": m.phase_end_ms,
        },
    }  # fmt: skip


def result_of(
    sim: Any, wall_s: float, verdicts: dict[str, Verdict], metrics: SimMetrics, trace_sha: str
) -> SimResult:
    """The `SimResult` of a finished run, for either simulator (they share these fields:
    seed, scenario, names, end_ms, events, state_digest(), trace)."""
    sc = sim.scenario
    return SimResult(
        seed=sim.seed, scenario_name=sc.name, scenario_path=sc.path or sc.name,
        nodes=len(sim.names), sim_ms=sim.end_ms, wall_s=wall_s, events=sim.events,
        trace_sha256=trace_sha, state_sha256=sim.state_digest(), checkers=verdicts,
        ok=all(v.ok for v in verdicts.values()),
        replay_command=replay_command(
            sc, sim.seed, per_delivery=getattr(sim, "per_delivery", False)
        ),
        metrics=metrics, trace=sim.trace,
    )  # fmt: skip


def plan_for(scenario: Scenario, seed: int, behaviours: tuple[str, ...]) -> tuple[Fault, ...]:
    """A run's fault timeline: the scenario's (plus the seed's, in swarm mode, drawing
    Byzantine nodes from `behaviours` unless the scenario names its own), resolved, then
    the heals that open the liveness phase for whatever the safety phase broke."""
    names = scenario.node_names
    faults = list(scenario.faults)
    if scenario.swarm.enabled:
        chosen = scenario.swarm.behaviours or behaviours
        rng = random.Random(derive_seed(seed, "swarm"))
        faults += draw_swarm_faults(scenario.swarm, names, scenario.duration_ms, rng, chosen)
    plan = plan_faults(faults, names, random.Random(derive_seed(seed, "faults")))
    plan = tuple(f for f in plan if f.at_ms < scenario.duration_ms)
    return plan + liveness_heals(plan, names, scenario.duration_ms)


@dataclass(frozen=True)
class SimMetrics:
    delivery_latency_ms: list[int]
    convergence: list[tuple[int, float]]
    """(time, share of honest live nodes whose book is complete), every simulated second."""
    faults: list[tuple[int, str]]
    messages: dict[str, int]
    crashes: list[str]
    phase_end_ms: int


@dataclass(frozen=True)
class SimResult:
    seed: int
    scenario_name: str
    scenario_path: str
    nodes: int
    sim_ms: int
    wall_s: float
    events: int
    trace_sha256: str
    state_sha256: str
    checkers: dict[str, Verdict]
    ok: bool
    replay_command: str
    metrics: SimMetrics
    trace: list[str] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return result_json(self)


def derive_seed(seed: int, *labels: str | int) -> int:
    """A 64-bit sub-seed for one purpose, so no two streams of randomness ever overlap."""
    text = "/".join(str(x) for x in (seed, *labels)).encode()
    return int.from_bytes(hashlib.sha256(b"gpumesh/sim/" + text).digest()[:8], "big")


@dataclass(slots=True)
class _Msg:
    """A message in flight: what each node it reaches is handed, when it was sent, and how
    many messages were sent before it (deliveries due at one instant go in that order)."""

    gossip: GossipIn
    t0: int
    digest: int
    order: int


_Event = tuple[int, int, Any, int]
"""(kind, node, a, b): a is a _Msg for deliveries, else an int."""


class Simulator:
    """One run of one scenario under one seed; the attributes checkers read are `SimView`."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        keep_trace: bool = False,
        progress: Callable[[int, int], None] | None = None,
        per_delivery: bool = False,
    ) -> None:
        sc = self.scenario = scenario
        self.seed, self.progress = seed, progress
        self.now_ms, self.phase_end_ms, self.end_ms = 0, sc.duration_ms, sc.end_ms
        self.names = sc.node_names
        n = len(self.names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self.identities = [Identity.derive("sim", seed, i) for i in range(n)]
        self._pub = [x.public_key for x in self.identities]
        self._peer = [x.peer_id for x in self.identities]
        self._peer_index = {p: i for i, p in enumerate(self._peer)}
        self._chain = sc.chain_id.encode()
        self._configs = self._core_configs()
        self.plan = self._plan_faults()
        self.byzantine = {self._index[x]: f.behaviour for f in self.plan
                          if isinstance(f, Byzantine) for x in f.nodes.patterns}  # fmt: skip
        self.honest = [i for i in range(n) if i not in self.byzantine]
        boot_rng = random.Random(derive_seed(seed, "boot"))
        boots = [boot_rng.randrange(max(1, sc.gossip.announce_interval_ms)) for _ in range(n)]
        mesh = build_mesh(n, sc.network.mesh_degree, random.Random(derive_seed(seed, "mesh")),
                          backbone=self.honest)  # fmt: skip
        schedule = NodeSchedule.from_plan(self.plan, boots, self.names,
                                          lambda b: BYZANTINE[b].forwards)  # fmt: skip
        knobs, base_loss = self._knobs()
        links = LinkSchedule.from_faults(self.plan, mesh, self.names, base_loss)
        regions = [g.regions[i % len(g.regions)] for g in sc.nodes for i in range(g.count)]
        self._net_seed = derive_seed(seed, "network")
        net_rng = np.random.Generator(np.random.PCG64(self._net_seed))  # unkeyed draws only
        self.network = Network(mesh, regions, knobs, links, schedule, net_rng)
        self.mesh = mesh
        self._state, self._skew, self._gen = [0] * n, [0] * n, [0] * n
        self._cores: list[NodeCore | None] = [None] * n
        self._beh: list[Behaviour | None] = [None] * n
        self._tick_at = [NEVER] * n
        self.persisted: list[dict[str, bytes]] = [{} for _ in range(n)]
        """Per-node durable state: survives crashes, wiped by disk loss (empty today)."""
        self._times: list[int] = []
        self._buckets: dict[int, list[_Event]] = {}
        self._dcache: dict[bytes, Signed[CapacityAnnouncement] | DecodeError] = {}
        self._wrng = random.Random(derive_seed(seed, "workload"))
        self._observers: list[Callable[[Simulator], None]] = []
        self.crashes: list[str] = []
        self.counts: dict[str, int] = {}
        self._retired_verdicts: dict[str, int] = {}
        self._latency: list[int] = []
        self._lat_seen, self._lat_stride = 0, 1
        """First deliveries handed to a core so far, and the latency sampling stride."""
        self._copies = 0
        """Duplicate and direct copies handed to a core."""
        self._sent = 0
        """Messages sent so far (published or direct)."""
        self._waved: dict[int, tuple[_Msg, int]] = {}
        """The message of each book table id whose wave may still be on its way, for an
        entry the table hands back; `_waved_until` is a heap of (last arrival, id)."""
        self._waved_until: list[tuple[int, int]] = []
        self._convergence: list[tuple[int, float]] = []
        self._faults_log: list[tuple[int, str]] = []
        self.events = 0
        self._hash = hashlib.sha256(b"gpumesh/sim/trace/v1")
        self._rec: array[int] = array("q")
        self.trace: list[str] | None = [] if keep_trace else None
        self.checkers: dict[str, Checker] = {c: CHECKERS[c]() for c in sc.checkers}
        self.table = self._book_table(per_delivery)
        self.per_delivery = per_delivery
        self._exact_row = np.zeros(n, np.bool_)
        """Receivers that take every delivery through their core: any node the plan ever
        makes Byzantine (its behaviour sees every input)."""
        self._exact_row[list(self.byzantine)] = True
        self._any_exact = bool(self.byzantine)
        self._schedule_start(boots)

    # -- setup ----------------------------------------------------------------------------------

    def _core_configs(self) -> list[CoreConfig]:
        sc, out = self.scenario, []
        for g in sc.nodes:
            by_region = {
                r: CoreConfig(
                    chain_id=self._chain, region=r, gpus=g.gpus, gpu_source="declared",
                    price_per_gpu_hour=g.price_per_gpu_hour,
                    announce_interval_ms=sc.gossip.announce_interval_ms,
                    announcement_ttl_ms=sc.gossip.ttl_ms,
                )
                for r in g.regions
            }  # fmt: skip
            out += [by_region[g.regions[i % len(g.regions)]] for i in range(g.count)]
        return out

    def _book_table(self, per_delivery: bool) -> BookTable | None:
        """The shared book table, unless every delivery must be a core step: asked for, or
        books the table cannot stand for (configs that differ, runs past 2**30 ms)."""
        book = self._configs[0].book if self._configs else None
        if per_delivery or book is None or self.end_ms >= 2**30:
            return None
        if any(c.book != book for c in self._configs) or len(self.names) > book.entries_max:
            return None
        return BookTable(self._pub, book)

    def _plan_faults(self) -> tuple[Fault, ...]:
        return plan_for(self.scenario, self.seed, tuple(sorted(BYZANTINE)))

    def _knobs(self) -> tuple[LinkKnobs, float]:
        net, sw = self.scenario.network, self.scenario.swarm
        loss, dup, reorder = net.loss, net.duplicate, net.reorder
        if sw.enabled:  # the seed draws the network's own flakiness too
            rng = random.Random(derive_seed(self.seed, "swarm-network"))
            loss = round(rng.uniform(0, sw.network_loss_max), 4)
            dup = round(rng.uniform(0, sw.duplicate_max), 4)
            reorder = round(rng.uniform(0, sw.reorder_max), 4)
        knobs = LinkKnobs(net.jitter_ms, dup, reorder, net.reorder_ms, net.bandwidth_mbps)
        self.base_loss = loss
        return knobs, loss

    def _schedule_start(self, boots: list[int]) -> None:
        for k, f in enumerate(self.plan):
            self._push(f.at_ms, (FAULT, -1, k, 0))
        for v, t in enumerate(boots):
            self._push(t, (BOOT, v, 0, 0))
        self._push(self.phase_end_ms, (PHASE_END, -1, 0, 0))
        for t in range(0, self.end_ms + 1, SAMPLE_MS):
            self._push(t, (SAMPLE, -1, 0, 0))
        interval = self.scenario.workload.load_interval_ms
        if interval > 0:
            for v in range(len(self.names)):
                self._push(self._wrng.randint(interval // 2, interval * 3 // 2), (LOAD, v, 0, 0))

    def observe_at(self, t_ms: int, callback: Callable[[Simulator], None]) -> None:
        """Call `callback(self)` at simulated time `t_ms` (read-only: tests, debugging);
        it is not traced, so observing never changes a run."""
        self._observers.append(callback)
        self._push(t_ms, (OBSERVE, -1, len(self._observers) - 1, 0))

    # -- SimView --------------------------------------------------------------------------------

    def is_live(self, i: int) -> bool:
        return self._state[i] == BOOTED

    def core(self, i: int) -> NodeCore | None:
        return self._cores[i]

    def local_now(self, i: int) -> int:
        return EPOCH_MS + self.now_ms + self._skew[i]

    def public_key(self, i: int) -> bytes:
        return self._pub[i]

    # -- the loop -------------------------------------------------------------------------------

    def _push(self, t: int, ev: _Event) -> None:
        bucket = self._buckets.get(t)
        if bucket is None:
            self._buckets[t] = [ev]
            heapq.heappush(self._times, t)
        else:
            bucket.append(ev)

    def run(self) -> SimResult:
        """Run to the end of the liveness phase and judge; a Simulator runs once."""
        if self.events:
            raise RuntimeError("this Simulator has already run; build a new one to run again")
        started = time.perf_counter()
        self._loop()
        return self._result(time.perf_counter() - started)

    def _loop(self) -> None:
        times, buckets, end = self._times, self._buckets, self.end_ms
        deliver, tick, other = self._deliver, self._tick, self._other
        # without a table, an empty one takes the clock, so the loop need not ask each time
        table = self.table if self.table is not None else BookTable([], BookConfig())
        while times and times[0] <= end:
            t = heapq.heappop(times)
            self.now_ms = table.now = t
            for kind, v, a, b in buckets.pop(t):
                if kind == DELIVER:
                    deliver(t, v, a, b)
                elif kind == TICK:
                    tick(t, v, a)
                else:
                    other(t, kind, v, a)
        self.now_ms = table.now = end

    def _other(self, t: int, kind: int, v: int, a: int) -> None:
        if kind == FAULT:
            self._fault(t, a)
        elif kind == BOOT:
            self._lifecycle(t, v, "boot")
        elif kind == LOAD:
            self._load(t, v)
        elif kind == SYNC:
            self._sync(t, v)
        elif self.table is None:
            self._read_only(t, kind, a)
        else:
            # Queued before the run, these read before any delivery due at the same instant
            # (a delivery is queued later), so the book table must not show those yet.
            self.table.reading_first = True
            try:
                self._read_only(t, kind, a)
            finally:
                self.table.reading_first = False

    def _read_only(self, t: int, kind: int, a: int) -> None:
        if kind == SAMPLE:
            self._sample(t)
        elif kind == PHASE_END:
            for checker in self.checkers.values():
                checker.on_phase_end(self)
        elif kind == OBSERVE:
            self._observers[a](self)

    def _record(self, t: int, kind: int, v: int, a: int, b: int = 0, c: int = 0) -> None:
        """Append one canonical trace record; hashed in batches."""
        self.events += 1
        rec = self._rec
        rec.extend((t, self.events, kind, v, a, b, c))
        if len(rec) >= 1 << 16:
            self._flush()
        if self.trace is not None:
            who = self.names[v] if v >= 0 else "-"
            self.trace.append(f"{t} {self.events} {KIND_NAMES[kind]} {who} {a} {b} {c}")

    def _flush(self) -> None:
        if sys.byteorder == "big":
            self._rec.byteswap()
        self._hash.update(self._rec.tobytes())
        self._rec = array("q")

    # -- stepping a core ------------------------------------------------------------------------

    def _step(self, t: int, v: int, inp: Input, kind: int, a: int) -> None:
        core = self._cores[v]
        if core is None:
            return
        local = EPOCH_MS + t + self._skew[v]
        beh = self._beh[v]
        if beh is not None and not beh.on_input(local, inp):
            self._record(t, kind, v, a, -1)
            return
        try:
            ready = core.step(local, inp)
            if self.table is not None and self.table.handed_back:
                self._hand_back()
        except Exception as exc:  # a core must never raise on any input: record it
            self._record(t, kind, v, a, -2)
            if len(self.crashes) < CRASHES_KEPT_MAX:
                self.crashes.append(
                    f"t={t} node={self.names[v]} input={inp!r:.200} raised {exc!r:.300}"
                )
            return
        wake, out = ready.wake_at_ms, len(ready.events) << 24
        if ready.publish or ready.disconnect or ready.dial:
            out |= len(ready.publish) | len(ready.disconnect) << 8 | len(ready.dial) << 16
        if self.trace is None:  # _record, inlined: this runs once per delivery
            self.events += 1
            self._rec.extend((t, self.events, kind, v, a, wake, out))
            if len(self._rec) >= 1 << 16:
                self._flush()
        else:
            self._record(t, kind, v, a, wake, out)
        if out & 0xFFFFFF:
            self._outputs(t, v, ready)
        w = wake - EPOCH_MS - self._skew[v]
        if w < self._tick_at[v]:
            self._tick_at[v] = w = max(w, t + 1)
            self._push(w, (TICK, v, self._gen[v], 0))

    def _outputs(self, t: int, v: int, ready: Ready) -> None:
        for p in ready.publish:
            self._publish(t, v, p)
        for d in ready.disconnect:
            self._count("disconnects")
            u = self._peer_index.get(d.peer, -1)
            self._record(t, DISCONNECT, v, u)
            if u >= 0 and self.mesh.edge(v, u) is not None:
                self.network.sever(v, u)
                self._push(t + 1, (SYNC, v, 0, 0))
                self._push(t + 1, (SYNC, u, 0, 0))
        for dial in ready.dial:  # the mesh is fixed by the seed: dials are only recorded
            self._count("dials")
            self._record(t, DIAL, v, self._peer_index.get(dial.peer, -1))

    def _deliver(self, t: int, v: int, msg: _Msg, first: int) -> None:
        if self._state[v] != BOOTED:
            self._count("dropped_at_down_node")
            return
        if first == 1:
            self._lat_seen += 1
            if not self._lat_seen % self._lat_stride:
                self._keep_latency(t - msg.t0)
        elif not first:
            self._copies += 1
        # first == 2: a first arrival the book table counted already, handed back
        table = self.table
        if table is None:
            self._step(t, v, msg.gossip, DELIVER, msg.digest)
            return
        table.handing = msg.order
        try:
            self._step(t, v, msg.gossip, DELIVER, msg.digest)
        finally:
            table.handing = NEVER

    def _tick(self, t: int, v: int, gen: int) -> None:
        if gen != self._gen[v] or self._tick_at[v] != t:
            return  # superseded by an earlier tick, or the core it was for is gone
        self._tick_at[v] = NEVER
        if self._state[v] == BOOTED:
            self._step(t, v, TICK_INPUT, TICK, 0)

    # -- publishing -----------------------------------------------------------------------------

    def _publish(self, t: int, v: int, p: Publish) -> None:
        beh = self._beh[v]
        if beh is None:
            self._gossip(t, v, p.data, self.table is not None, p.signed)
            return
        out = beh.on_publish(EPOCH_MS + t + self._skew[v], p.data)
        for d in out.publish:
            self._gossip(t, v, d, False)
        for d in out.direct:
            self._direct(t, v, d)

    def _gossip(
        self,
        t: int,
        v: int,
        data: bytes,
        wave: bool,
        own: Signed[CapacityAnnouncement] | None = None,
    ) -> None:
        """Spread one message; every node's validator is the real check, applied at the
        node's own clock, on the message decoded and verified once. With `wave`, a valid
        message goes into the book table for every receiver it can (`_wave`). `own` is the
        envelope an honest core says `data` encodes (`_adopt`)."""
        window: tuple[int, int] | None = None
        signed: Signed[CapacityAnnouncement] | None = None
        msg = self._new_msg(t, v, data)
        try:
            signed = self._decode(data) if own is None else self._adopt(data, own, msg.digest)
        except DecodeError:
            pass
        else:
            ann, cfg = signed.record, self._configs[v].book
            if check_announcement(signed, ann.issued_ms, cfg) is None:
                window = (
                    ann.issued_ms - cfg.clock_skew_max_ms - EPOCH_MS,
                    ann.expires_ms - EPOCH_MS,
                )
        spread = self.network.spread(v, t, len(data), window, self._draws_for(v, t, msg))
        if wave and window is not None and signed is not None:
            self._wave(t, v, msg, signed, spread)
        else:
            self._push_deliveries(spread.arrivals, msg, 1)
            self._push_deliveries(spread.duplicates, msg, 0)
        c = self.counts
        for key, k in (("published", 1), ("reached", len(spread.times)),
                       ("duplicated", len(spread.dup_times)), ("lost", spread.lost),
                       ("blocked", spread.blocked), ("rejected_by_validator", spread.rejected),
                       ("dropped_at_down_node", spread.down)):  # fmt: skip
            c[key] = c.get(key, 0) + k
        self._record(t, PUBLISH, v, msg.digest, len(spread.times), spread.rejected)

    def _wave(
        self, t: int, v: int, msg: _Msg, signed: Signed[CapacityAnnouncement], spread: Spread
    ) -> None:
        """Hand a valid message to every receiver's book at once: the book table takes the
        receivers whose core would only have filed it, and the rest (nodes ever Byzantine,
        books the rule alone cannot judge: see `BookTable.add_wave`, and every second copy)
        get ordinary delivery events. What arrives after the end of the run is never
        delivered."""
        table = self.table
        assert table is not None
        # Each numpy call on a wave's ~n arrivals costs microseconds, a wave at a time: the
        # masks below are only built where they can hold something (arrivals come in time
        # order; most runs have no Byzantine node).
        times, rows = spread.times, spread.nodes
        if len(times) and times[-1] > self.end_ms:
            keep = times <= self.end_ms
            times, rows = times[keep], rows[keep]
        exact = self._exact_row[rows] if self._any_exact else None
        mid = table.message(signed)
        waved, until = self._waved, self._waved_until
        while until and until[0][0] < t:  # every entry of that wave has arrived
            last, old = heapq.heappop(until)
            if old in waved and waved[old][1] == last:
                del waved[old]
        if len(times):
            last = max(int(times[-1]), waved[mid][1] if mid in waved else 0)
            waved[mid] = (msg, last)
            heapq.heappush(until, (last, mid))
        tr, tt = (rows, times) if exact is None else (rows[~exact], times[~exact])
        to_core = table.add_wave(mid, t, msg.order, tr, tt)
        if np.count_nonzero(to_core):  # those books take this message through their core
            late = np.zeros(len(self.names), np.bool_)
            late[tr[to_core]] = True
            exact = late[rows] if exact is None else exact | late[rows]
            tr, tt = tr[~to_core], tt[~to_core]
        if exact is not None and np.count_nonzero(exact):
            late_ones = zip(times[exact].tolist(), rows[exact].tolist(), strict=True)
            self._push_deliveries(list(late_ones), msg, 1)
        if len(spread.dup_times):
            self._push_deliveries(spread.duplicates, msg, 0)
        self._keep_latencies(tt, t)
        self._record(t, WAVE, v, msg.digest, len(tr), arrivals_digest(tt, tr))

    def _hand_back(self) -> None:
        """Deliver through its core each wave entry the table gave back (overtaken on its
        way); it was counted as delivered when its wave was written."""
        table = self.table
        assert table is not None
        for v, mid, at in table.handed_back:
            self._push(at, (DELIVER, v, self._waved[mid][0], 2))
        table.handed_back.clear()

    def _direct(self, t: int, v: int, data: bytes) -> None:
        msg = self._new_msg(t, v, data)
        spread = self.network.direct(v, t, len(data), self._draws_for(v, t, msg, 1))
        self._push_deliveries(spread.arrivals, msg, 0)
        self._count("direct", len(spread.arrivals))
        self._record(t, DIRECT, v, msg.digest, len(spread.arrivals))

    def _draws_for(self, v: int, t: int, msg: _Msg, way: int = 0) -> int:
        """The draw key of one message's network draws (`spread_kernel.message_key`), from the
        run's seed and the message itself (sender, time, content): never from a stream shared
        in sending order, so two nodes sending in the same millisecond get the same draws
        whichever goes first (the order of same-instant events depends on when cores asked to
        be woken)."""
        return message_key(self._net_seed, v, t, msg.digest, way)

    def _new_msg(self, t: int, v: int, data: bytes) -> _Msg:
        digest = int.from_bytes(hashlib.sha256(data).digest()[:7], "big")
        self._sent += 1
        return _Msg(GossipIn(TOPIC_CAPACITY, data, self._peer[v]), t, digest, self._sent)

    def _push_deliveries(self, arrivals: list[tuple[int, int]], msg: _Msg, first: int) -> None:
        """`_push` for every node a message reaches, inlined: this is the hot loop."""
        buckets, times, push = self._buckets, self._times, heapq.heappush
        for ta, u in arrivals:
            bucket = buckets.get(ta)
            if bucket is None:
                buckets[ta] = [(DELIVER, u, msg, first)]
                push(times, ta)
            else:
                bucket.append((DELIVER, u, msg, first))

    def _adopt(
        self, data: bytes, own: Signed[CapacityAnnouncement], digest: int
    ) -> Signed[CapacityAnnouncement]:
        """What `_decode(data)` gives for the bytes an honest core just signed: the envelope
        it signed, without decoding and verifying them again (a fifth of a run's time at
        1,000 nodes). Every `AUDIT_EVERY`-th such message (drawn by `digest`, the message's
        `_new_msg` digest of its bytes) is decoded and verified for real and must give that
        very envelope: a codec or signing bug fails the run loudly instead of hiding behind
        the shortcut."""
        if digest % AUDIT_EVERY == 0:
            real = self._decode(data)
            if real != own:
                raise AssertionError(f"an honest core's announcement decodes otherwise: {real!r}")
            return real
        self._remember(data, own)
        return own

    def _decode(self, data: bytes) -> Signed[CapacityAnnouncement]:
        """`decode_announcement`, memoised: the same bytes verify once, not once per node.
        Failures are cached too and raised afresh (never the same exception object)."""
        hit = self._dcache.get(data)
        if hit is None:
            try:
                hit = decode_announcement(data, self._chain)
            except DecodeError as exc:
                hit = exc
            self._remember(data, hit)
        if isinstance(hit, DecodeError):
            raise type(hit)(*hit.args)
        return hit

    def _remember(self, data: bytes, hit: Signed[CapacityAnnouncement] | DecodeError) -> None:
        """Put a decoding in the bounded memo, dropping the oldest when it is full."""
        if len(self._dcache) >= DECODE_CACHE_MAX:
            del self._dcache[next(iter(self._dcache))]
        self._dcache[data] = hit

    # -- faults and lifecycle -------------------------------------------------------------------

    def _fault(self, t: int, k: int) -> None:
        f = self.plan[k]
        self._faults_log.append((t, f.describe()))
        self._record(t, FAULT, -1, k)
        targets = [self._index[x] for sel in f.selectors() for x in sel.patterns]
        if isinstance(f, Crash | DiskLoss | Restart | Pause | Resume):
            for v in targets:
                self._lifecycle(t, v, f.KIND)
        elif isinstance(f, ClockSkew):
            for v in targets:
                self._skew[v] = f.by_ms
                if self._state[v] == BOOTED:
                    self._step(t, v, TICK_INPUT, TICK, 1)  # its clock jumped
        elif isinstance(f, Byzantine):
            for v in targets:
                rng = random.Random(derive_seed(self.seed, "byzantine", v))
                ctx = ByzContext(
                    self.names[v], v, self.identities[v], self._chain, rng, self._decode
                )
                self._beh[v] = BYZANTINE[f.behaviour](ctx)
        elif isinstance(f, Partition | CutLink | Heal):
            for v in range(len(self.names)):
                self._sync(t, v)

    def _lifecycle(self, t: int, v: int, kind: str) -> None:
        old = self._state[v]
        new = self._state[v] = next_state(old, kind)
        if kind == DiskLoss.KIND:
            self.persisted[v].clear()
        ran, runs = old & BOOTED and not old & CRASHED, new & BOOTED and not new & CRASHED
        if ran and not runs:  # the process died: volatile state goes with it
            core = self._cores[v]
            for name, count in core.verdict_counts.items() if core else ():
                self._retired_verdicts[name] = self._retired_verdicts.get(name, 0) + count
            self._cores[v], self._tick_at[v] = None, NEVER
            if self.table is not None:
                self.table.wipe(v)
            self._gen[v] += 1
            self._record(t, BOOT, v, -1)
        elif runs and not ran:  # a fresh process from identity and persisted state
            book = RowBook(self.table, v) if self.table is not None else None
            self._cores[v] = NodeCore(
                self.identities[v], self._configs[v], decode=self._decode, book=book
            )
            self._gen[v] += 1
            self._tick_at[v] = NEVER
            self._record(t, BOOT, v, 1)
        elif new == old:
            return
        if new == BOOTED:
            self._sync(t, v)
            self._step(t, v, TICK_INPUT, TICK, 2)
        if ran != runs:
            for u in self.mesh.neighbours(v):
                self._sync(t, u)

    def _sync(self, t: int, v: int) -> None:
        """Bring v's peer set in line with its neighbours that run (paused ones still hold
        their connections) over links that are up."""
        core = self._cores[v]
        if core is None or self._state[v] != BOOTED:
            return
        for u in self.mesh.neighbours(v):
            su = self._state[u]
            want = bool(su & BOOTED) and not su & CRASHED and self.network.connected(v, u, t)
            pid = self._peer[u]
            if want != (pid in core.peers):
                self._step(t, v, PeerUp(pid) if want else PeerDown(pid), SYNC, u)

    def _load(self, t: int, v: int) -> None:
        interval = self.scenario.workload.load_interval_ms
        total = sum(g.count for g in self._configs[v].gpus)
        free, load = self._wrng.randint(0, total), self._wrng.randint(0, 1000)
        self._push(t + self._wrng.randint(interval // 2, interval * 3 // 2), (LOAD, v, 0, 0))
        if self._state[v] == BOOTED:
            self._step(t, v, LocalLoad(free, load), LOAD, free)

    # -- metrics --------------------------------------------------------------------------------

    def _count(self, key: str, k: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + k

    def _keep_latency(self, ms: int) -> None:
        self._latency.append(ms)
        if len(self._latency) >= LATENCY_SAMPLES_MAX:
            self._latency = self._latency[::2]
            self._lat_stride *= 2

    def _keep_latencies(self, times: npt.NDArray[np.int64], t0: int) -> None:
        """`_keep_latency` for a wave's first deliveries, arriving at `times` for a message
        sent at `t0`: every stride-th delivery counted over the run, decimated as the list
        fills. A uniform sample still, but once thinned not the same elements as when each
        delivery is a core step (another order). Only the few kept are subtracted, in
        Python: a numpy call on the whole wave costs more once the stride has grown."""
        seen, stride = self._lat_seen, self._lat_stride
        self._lat_seen = seen + len(times)
        first = (-(seen + 1)) % stride  # the index of the first delivery numbered k * stride
        self._latency.extend([x - t0 for x in times[first::stride].tolist()])
        while len(self._latency) >= LATENCY_SAMPLES_MAX:
            self._latency = self._latency[::2]
            self._lat_stride *= 2

    def _sample(self, t: int) -> None:
        live = [i for i in self.honest if self._state[i] == BOOTED]
        complete = 0
        if self.table is not None:
            rows = [i for i in live if self._cores[i] is not None]
            local = np.array([EPOCH_MS + t + self._skew[i] for i in rows], np.int64)
            cols = np.array(live, np.int64)
            complete = int(np.count_nonzero(self.table.covers_rows(rows, cols, local)))
        else:
            keys = frozenset(self._pub[i] for i in live)
            for i in live:
                core = self._cores[i]
                if core is not None and core.book.covers(keys, EPOCH_MS + t + self._skew[i]):
                    complete += 1
        self._convergence.append((t, complete / len(live) if live else 1.0))
        for checker in self.checkers.values():
            checker.on_sample(self)
        if self.progress is not None:
            self.progress(t, self.end_ms)

    def incomplete_books(self) -> list[tuple[int, list[int]]]:
        return incomplete_books(self)

    def state_digest(self) -> str:
        """SHA-256 over every node's lifecycle state and book (node id, seq, expiry)."""
        h = hashlib.sha256(b"gpumesh/sim/state/v1")
        for i, core in enumerate(self._cores):
            h.update(f"{self.names[i]}:{self._state[i]}:".encode())
            if core is None:
                continue
            book = core.book
            if isinstance(book, RowBook):
                h.update(book.state_bytes(self.local_now(i)))
            else:
                for ann in book.live(self.local_now(i)):
                    h.update(state_piece(ann))
        return h.hexdigest()

    def _result(self, wall_s: float) -> SimResult:
        self._flush()
        verdicts = {name: c.verdict(self) for name, c in self.checkers.items()}
        messages = dict(self.counts, delivered=self._lat_seen, delivered_copies=self._copies)
        messages = dict(sorted(messages.items()))
        verdict_counts = dict(self._retired_verdicts)
        for name, count in self.table.verdicts.items() if self.table is not None else ():
            verdict_counts[name] = verdict_counts.get(name, 0) + count
        for core in self._cores:
            for name, count in core.verdict_counts.items() if core else ():
                verdict_counts[name] = verdict_counts.get(name, 0) + count
        messages.update({f"verdict_{k}": v for k, v in sorted(verdict_counts.items())})
        metrics = SimMetrics(self._latency, self._convergence, self._faults_log, messages,
                             list(self.crashes), self.phase_end_ms)  # fmt: skip
        return result_of(self, wall_s, verdicts, metrics, self._hash.hexdigest())
