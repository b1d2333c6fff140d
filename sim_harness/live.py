"""Play a scenario's fault timeline against a live swarm of real processes.

    result = LivePlayer(load_scenario(path), Path("swarm-run")).run()

The same `[[faults]]` a simulation injects, on real node processes in wall-clock time: the
player creates a swarm sized to the scenario (scenario node i is swarm node `node-i`, by
position in the scenario's node list), waits until every node sees every other, plays the
planned timeline (selectors resolved and `for` expanded by `faults.plan_faults`, shares
drawn from the scenario's seed), then, as the simulator does when its safety phase ends,
heals the network, resumes paused nodes and restarts crashed ones, and gives the swarm the
liveness phase (bounded; it ends early once converged) to converge again. Book convergence
is judged from the nodes' own /status endpoints, and the result has the simulator's result
shape, so `sim_harness.report.write_report` renders it. The swarm is always torn down.

How each fault is played: crash -> SIGKILL; restart -> start again (same key and ports);
pause / resume -> SIGSTOP / SIGCONT; disk_loss -> SIGKILL and wipe the data folder (a
restart brings it back empty); partition, cut, one_way, delay and heal -> traffic policies
set through each node's /admin endpoint (`sim_harness.swarm_faults`). A delayed node's own
messages are held by every other node, and it holds everything it receives. Clock skew,
message loss and Byzantine behaviour have no live counterpart (they would need a patched
node): scenarios that use them are refused before anything starts. The scenario's
`[network]` model (jitter, loss, bandwidth) is not emulated: live traffic is real loopback.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2p.transport import TrafficPolicy
from sim_harness.faults import (
    SWARM_KINDS,
    ClockSkew,
    Crash,
    CutLink,
    Delay,
    DiskLoss,
    Fault,
    Heal,
    NodeFault,
    OneWayPartition,
    Partition,
    Pause,
    Restart,
    Resume,
    SwarmSpec,
    draw_swarm_faults,
    plan_faults,
)
from sim_harness.scenario import Scenario
from sim_harness.simulator import result_json
from sim_harness.swarm import Swarm, SwarmError, SwarmNode, converged

LIVE_NODES_MAX = 20
"""Real processes on one machine: ~90 MB and a share of the CPU each."""
DURATION_MS_MAX = 15 * 60_000
LIVENESS_MS_MAX = 120_000
READY_TIMEOUT_S = 60.0
SAMPLE_INTERVAL_S = 0.5
SUPPORTED = ("crash", "restart", "pause", "resume", "disk_loss", "partition", "cut", "one_way",
             "delay", "heal")  # fmt: skip
UNSUPPORTED_WHY = "clock skew, message loss and Byzantine nodes exist only in the simulator"
LIVE_CHECKERS = ("book_convergence", "no_crash_on_bad_input")

Progress = Callable[[int, int, str], None]
"""(elapsed_ms, planned_total_ms, what happened) after each fault and phase change."""


class LiveRunError(SwarmError):
    """A scenario the live player cannot play; the message says what and what would work."""


@dataclass(frozen=True)
class LiveVerdict:
    ok: bool
    detail: str


@dataclass
class LiveMetrics:
    """The simulator's metric series, as far as a live run can measure them."""

    convergence: list[tuple[int, float]] = field(default_factory=list)
    faults: list[tuple[int, str]] = field(default_factory=list)
    messages: dict[str, int] = field(default_factory=dict)
    """Transport counters summed over the nodes at the end (a restart resets a node's)."""
    crashes: list[str] = field(default_factory=list)
    phase_end_ms: int | None = None
    delivery_latency_ms: list[int] = field(default_factory=list)
    """Not measured live (no global clock over the messages); kept empty."""


@dataclass(frozen=True)
class LiveResult:
    """Shaped like `simulator.SimResult`, so reports and scripts treat both alike."""

    seed: int
    scenario_name: str
    scenario_path: str
    nodes: int
    sim_ms: int
    wall_s: float
    events: int
    checkers: dict[str, LiveVerdict]
    ok: bool
    replay_command: str
    metrics: LiveMetrics
    trace_sha256: str = ""
    state_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        doc = result_json(self)
        return {"mode": "live", **doc, "scenario_name": self.scenario_name,
                "wall_s": round(self.wall_s, 3)}  # fmt: skip


def live_timeline(scenario: Scenario) -> tuple[Fault, ...]:
    """The scenario's planned timeline, refused (LiveRunError) if it needs what a live swarm
    cannot do; selectors resolve to scenario node names."""
    names = scenario.node_names
    if len(names) > LIVE_NODES_MAX:
        raise LiveRunError(
            f"{scenario.name}: {len(names)} nodes; live swarms are capped at {LIVE_NODES_MAX} "
            "real processes on one machine (run it in the simulator: gpumesh sim run)"
        )
    if scenario.duration_ms > DURATION_MS_MAX:
        raise LiveRunError(
            f"{scenario.name}: duration {scenario.duration_ms / 1000:g}s; a live run plays in "
            f"wall-clock time and is capped at {DURATION_MS_MAX // 60_000} minutes"
        )
    rng = random.Random(f"gpumesh/live/{scenario.seed}")
    faults = list(scenario.faults)
    if scenario.swarm.enabled:
        _check_kinds(scenario.swarm)
        faults += draw_swarm_faults(scenario.swarm, names, scenario.duration_ms, rng, ())
    timeline = plan_faults(faults, names, rng)
    refused = sorted({f.KIND for f in timeline if f.KIND not in SUPPORTED})
    if refused:
        raise LiveRunError(
            f"{scenario.name}: {', '.join(refused)} cannot be played on a live swarm "
            f"({UNSUPPORTED_WHY}); live runs support: {', '.join(SUPPORTED)}"
        )
    return timeline


def _check_kinds(spec: SwarmSpec) -> None:
    refused = sorted(set(spec.kinds) - set(SUPPORTED))
    if refused:
        drawable = [k for k in SWARM_KINDS if k in SUPPORTED]
        raise LiveRunError(
            f"[swarm] kinds include {', '.join(refused)} ({UNSUPPORTED_WHY}); for a live "
            f"run set kinds to a subset of {', '.join(drawable)}"
        )


class LivePlayer:
    """One live run of one scenario; `run()` returns a LiveResult and always stops the swarm."""

    def __init__(self, scenario: Scenario, root: Path, *, progress: Progress | None = None) -> None:
        self.scenario = scenario
        self.root = Path(root)
        self.timeline = live_timeline(scenario)  # refuse before anything starts
        self.progress = progress or (lambda elapsed_ms, total_ms, text: None)
        self.metrics = LiveMetrics()
        self.liveness_ms = min(scenario.liveness_ms, LIVENESS_MS_MAX)
        self._names = {s: f"node-{i}" for i, s in enumerate(scenario.node_names)}
        self._swarm: Swarm | None = None
        self._t0 = 0.0

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> LiveResult:
        wall0 = time.monotonic()
        s = self.scenario
        total_ms = s.duration_ms + self.liveness_ms
        swarm = Swarm.create(
            self.root,
            len(self._names),
            announce_interval_ms=s.gossip.announce_interval_ms,
            announcement_ttl_ms=s.gossip.ttl_ms,
        )
        self._swarm = swarm
        try:
            swarm.start(timeout_s=READY_TIMEOUT_S)
            if not converged(swarm.wait_converged(timeout_s=READY_TIMEOUT_S), len(swarm.nodes)):
                raise LiveRunError(
                    f"the swarm in {self.root} did not converge within {READY_TIMEOUT_S:.0f}s, "
                    "before any fault: see the nodes' logs there"
                )
            self.progress(0, total_ms, f"{len(swarm.nodes)} nodes up; playing the timeline")
            self._t0 = time.monotonic()
            for fault in self.timeline:
                if fault.at_ms >= s.duration_ms:
                    break  # the end of the safety phase undoes it anyway
                self._pace(self._t0 + fault.at_ms / 1000)
                started_ms = self._elapsed_ms()
                self._play(fault)  # a restart takes a while: the fault is dated by its start
                self.metrics.faults.append((started_ms, fault.describe()))
                self.progress(started_ms, total_ms, fault.describe())
            self._pace(self._t0 + s.duration_ms / 1000)
            self._end_safety_phase()
            self.progress(self._elapsed_ms(), total_ms, "healed: liveness phase")
            checkers = self._verdicts(self._liveness_phase())
            self.metrics.messages = self._message_counts()
        finally:
            swarm.stop()
        ok = all(v.ok for v in checkers.values())
        return LiveResult(
            seed=s.seed,
            scenario_name=s.name,
            scenario_path=str(s.path or ""),
            nodes=len(self._names),
            sim_ms=self._elapsed_ms(),
            wall_s=time.monotonic() - wall0,
            events=len(self.metrics.faults),
            checkers=checkers,
            ok=ok,
            replay_command=f"gpumesh swarm run {s.path or '<scenario>'}",
            metrics=self.metrics,
        )

    def _elapsed_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _pace(self, until: float) -> None:
        """Wait for the timeline's next instant, sampling convergence meanwhile (the wall clock
        is the timeline here: this sleep paces the scenario, it waits for no condition)."""
        while True:
            self._sample()
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(SAMPLE_INTERVAL_S, left))

    def _end_safety_phase(self) -> None:
        swarm = self._require_swarm()
        self.metrics.phase_end_ms = self._elapsed_ms()
        swarm.faults.heal()
        for node in swarm.nodes:
            if node.paused and swarm.alive(node):
                swarm.faults.resume(node.name)
        down = [n.name for n in swarm.nodes if not swarm.alive(n)]
        if down:
            swarm.start(down, timeout_s=READY_TIMEOUT_S)
        self.metrics.faults.append((self.metrics.phase_end_ms, "heal (end of the safety phase)"))

    def _liveness_phase(self) -> dict[str, dict[str, Any]]:
        """Sample until every node's book is complete or the (bounded) phase ends."""
        deadline = self._t0 + (self.scenario.duration_ms + self.liveness_ms) / 1000
        while True:
            statuses = self._statuses()
            if _fraction_complete(statuses) >= 1.0 or time.monotonic() >= deadline:
                self._sample(statuses)
                return statuses
            self._sample(statuses)
            time.sleep(min(SAMPLE_INTERVAL_S, max(0.0, deadline - time.monotonic())))

    # -- observing -----------------------------------------------------------------------------

    def _statuses(self) -> dict[str, dict[str, Any]]:
        """name -> /status of every node that can answer (running, not paused)."""
        swarm = self._require_swarm()
        return {k: v for k, v in swarm.statuses().items() if v is not None}

    def _sample(self, statuses: dict[str, dict[str, Any]] | None = None) -> None:
        statuses = self._statuses() if statuses is None else statuses
        self.metrics.convergence.append((self._elapsed_ms(), _fraction_complete(statuses)))

    def _verdicts(self, statuses: dict[str, dict[str, Any]]) -> dict[str, LiveVerdict]:
        swarm = self._require_swarm()
        wanted = [c for c in self.scenario.checkers if c in LIVE_CHECKERS]
        out: dict[str, LiveVerdict] = {}
        if "book_convergence" in wanted:
            out["book_convergence"] = _book_convergence(statuses, self._elapsed_ms())
        if "no_crash_on_bad_input" in wanted:
            dead = [n.name for n in swarm.nodes if not swarm.alive(n)]
            traced = [n.name for n in swarm.nodes if "Traceback" in _read(n.stderr_path)]
            self.metrics.crashes = [f"{n} exited unexpectedly" for n in dead] + [
                f"{n} logged a traceback (see its stderr.log)" for n in traced
            ]
            ok = not self.metrics.crashes
            detail = (
                "every node ran to the end, no traceback" if ok else "; ".join(self.metrics.crashes)
            )
            out["no_crash_on_bad_input"] = LiveVerdict(ok, detail)
        return out

    def _message_counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for status in self._statuses().values():
            for key, value in (status.get("transport") or {}).items():
                if isinstance(value, int):
                    totals[key] = totals.get(key, 0) + value
        return dict(sorted(totals.items()))

    # -- playing one fault ---------------------------------------------------------------------

    def _play(self, fault: Fault) -> None:
        swarm = self._require_swarm()
        f = swarm.faults
        if isinstance(fault, Heal):
            f.heal()
        elif isinstance(fault, Partition):
            groups = [self._nodes(g.patterns) for g in fault.groups]
            named = {n.name for g in groups for n in g}
            rest = [n for n in swarm.nodes if n.name not in named]
            groups = [g for g in (*groups, rest) if g]
            if len(groups) > 1:
                f.partition([[n.name for n in g] for g in groups])
        elif isinstance(fault, CutLink):
            a, b = self._nodes(fault.a.patterns), self._nodes(fault.b.patterns)
            self._block(a, b, inbound=True, outbound=True)
            self._block(b, a, inbound=True, outbound=True)
        elif isinstance(fault, OneWayPartition):
            src, dst = self._nodes(fault.src.patterns), self._nodes(fault.dst.patterns)
            self._block(dst, src, inbound=True, outbound=False)  # dst drops what src sends
            self._block(src, dst, inbound=False, outbound=True)  # src's requests to dst fail
        elif isinstance(fault, Delay):
            self._delay(self._nodes(fault.nodes.patterns), fault.by_ms)
        elif isinstance(fault, NodeFault):
            for node in self._nodes(fault.nodes.patterns):
                self._node_fault(fault, node)
        else:  # live_timeline refused everything else
            raise LiveRunError(f"cannot play {fault.describe()!r} live")

    def _node_fault(self, fault: NodeFault, node: SwarmNode) -> None:
        swarm = self._require_swarm()
        f, alive = swarm.faults, swarm.alive(node)
        if isinstance(fault, Crash | DiskLoss):
            if alive:
                f.kill(node.name)
            if isinstance(fault, DiskLoss):
                f.wipe_data(node.name)
        elif isinstance(fault, Restart) and not alive:
            f.restart(node.name, timeout_s=READY_TIMEOUT_S)
        elif isinstance(fault, Pause) and alive and not node.paused:
            f.pause(node.name)
        elif isinstance(fault, Resume) and alive and node.paused:
            f.resume(node.name)
        elif isinstance(fault, ClockSkew):
            raise LiveRunError(f"cannot play {fault.describe()!r} live")

    def _block(
        self, at: Sequence[SwarmNode], peers: Sequence[SwarmNode], *, inbound: bool, outbound: bool
    ) -> None:
        """Add `peers` to the blocks of every node in `at` (on top of what it blocks)."""
        f = self._require_swarm().faults
        ids = frozenset(p.peer_id for p in peers)
        for node in at:
            old = f.policy(node)
            new = replace(
                old,
                blocked_in=old.blocked_in | (ids - {node.peer_id} if inbound else frozenset()),
                blocked_out=old.blocked_out | (ids - {node.peer_id} if outbound else frozenset()),
            )
            f.set_policy(node.name, new)

    def _delay(self, nodes: Sequence[SwarmNode], by_ms: int) -> None:
        f = self._require_swarm().faults
        for node in nodes:
            f.delay(node.name, by_ms)  # everyone else holds what it sends
        for node in nodes:
            old: TrafficPolicy = f.policy(node)
            f.set_policy(node.name, replace(old, default_delay_ms=by_ms))  # it holds all it gets

    def _nodes(self, patterns: Sequence[str]) -> list[SwarmNode]:
        """Planned selectors hold scenario node names; map each to its swarm node."""
        swarm = self._require_swarm()
        return [swarm.node(self._names[name]) for name in patterns]

    def _require_swarm(self) -> Swarm:
        if self._swarm is None:
            raise RuntimeError("the swarm is not created yet")  # our bug
        return self._swarm


def _complete_nodes(statuses: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """name -> the answering nodes (by name) missing from its book."""
    ids = {name: str(s.get("peer_id")) for name, s in statuses.items()}
    out = {}
    for name, status in statuses.items():
        held = {str(row.get("peer_id")) for row in status.get("announcements", [])}
        out[name] = sorted(other for other, pid in ids.items() if pid not in held)
    return out


def _fraction_complete(statuses: dict[str, dict[str, Any]]) -> float:
    if not statuses:
        return 0.0
    missing = _complete_nodes(statuses)
    return sum(1 for m in missing.values() if not m) / len(statuses)


def _book_convergence(statuses: dict[str, dict[str, Any]], at_ms: int) -> LiveVerdict:
    missing = {k: v for k, v in _complete_nodes(statuses).items() if v}
    if statuses and not missing:
        return LiveVerdict(True, f"all {len(statuses)} live nodes hold each other's announcements")
    parts = [f"{n} lacks {', '.join(m[:5])}" for n, m in sorted(missing.items())[:5]]
    return LiveVerdict(
        False,
        f"{len(missing)} of {len(statuses)} live nodes have incomplete books at {at_ms} ms: "
        + ("; ".join(parts) or "no node answered"),
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
