"""The consensus simulator: real `ConsensusEngine`s (Tendermint, ledger, mempool, block sync)
of a whole network on one event heap, replayable bit for bit from a seed.

    result = ConsensusSimulator(load_scenario(path), seed).run()   # a SimResult

It runs scenarios with a `[consensus]` table. Every node is a staked operator from genesis;
the committee is drawn from stake as on the real chain, the others follow. Everything
derives from `seed`: keys (`Identity.derive("sim", seed, i)`), the fault plan, every link's
latency, loss and duplication, the workload (transfers between `users` accounts, submitted to
a random live member), and every Byzantine member's choices. Time is kept in microseconds
so that the optional CPU charging of benchmarks (`charge_cpu=True`: each node's processing
time, as measured, delays what it sends, as if each node had its own core) can add costs
well below a millisecond; engines see milliseconds. Charging makes a run depend on the
machine, so it is off for replays, sweeps and tests.

Links are point to point between every pair (committee traffic uses direct streams, not a
gossip mesh): one-way latency from the regions' matrix plus jitter, loss, duplication and
reordering from the scenario, and the partitions, cuts, one-way blocks, delays and loss of the
fault plan (the same `LinkSchedule` as the gossip simulator, over the complete graph). A
node's store is a dict that survives crashes and is emptied by disk loss: committed blocks,
the latest snapshot, and the statements persisted before they were sent.

What checkers read (`sim_harness.consensus_checkers`): `forks` (two different blocks
committed at one height by honest nodes), `root_conflicts`, `heights_at_phase_end`,
`engine(i)`, `is_live(i)`, `honest`, `crashes`, `phase_end_ms`, `now_ms`.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from consensus.bft.block import decode_block
from consensus.bft.messages import BlockBatch, CommittedBlock
from consensus.bft.tendermint import BftConfig, Persist, Statement
from consensus.chain import Chain
from consensus.committee import COMMITTEE_SIZE_MAX
from consensus.engine import (
    ClientTx,
    CommitBlock,
    ConsensusEngine,
    EngineConfig,
    EngineReady,
    EngineTick,
    FrameIn,
    RequestSync,
    SendFrame,
    SyncReply,
)
from consensus.ledger.genesis import Genesis, GenesisOperator
from consensus.ledger.params import LedgerParams
from consensus.ledger.tx import Transfer
from p2p.identity import Identity
from p2p.wire import sign
from sim_harness.byzantine_consensus import (
    CONSENSUS_BYZANTINE,
    ConsensusBehaviour,
    ConsensusByzContext,
)
from sim_harness.checkers import CHECKERS, Checker
from sim_harness.faults import (
    BOOTED,
    CRASHED,
    Byzantine,
    ClockSkew,
    Crash,
    DiskLoss,
    Fault,
    Pause,
    Restart,
    Resume,
    next_state,
)
from sim_harness.network import LinkSchedule, base_latency_ms, mesh_from_adjacency
from sim_harness.scenario import ConsensusSpec, Scenario
from sim_harness.simulator import (
    EPOCH_MS,
    SimMetrics,
    SimResult,
    derive_seed,
    plan_for,
    result_of,
)

US = 1_000
"""Microseconds per millisecond: the heap's unit."""
SAMPLE_US = 1_000 * US
USER_BALANCE = 10**15
NODE_BALANCE = 10**12
RESUBMIT_US = 5_000 * US
LATENCY_SAMPLES_MAX = 200_000
(DELIVER, TICK, FAULT, BOOT, SUBMIT, SAMPLE, PHASE_END, SYNC_REPLY, OBSERVE) = range(9)


@dataclass
class _User:
    identity: Identity
    next_nonce: int = 0
    pending: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    """nonce -> (tx bytes, first submission time in us)."""


@dataclass
class _Store:
    blocks: list[CommittedBlock] = field(default_factory=list)
    snapshot: tuple[int, bytes] | None = None
    statements: list[Statement] = field(default_factory=list)

    def clear(self) -> None:
        self.blocks, self.snapshot, self.statements = [], None, []


def build_genesis(scenario: Scenario, seed: int) -> tuple[Genesis, list[Identity], list[Identity]]:
    """The chain every simulated node starts from: each node an operator with its group's
    stake, `users` funded accounts that send the workload."""
    spec = scenario.consensus or ConsensusSpec()
    n = len(scenario.node_names)
    nodes = [Identity.derive("sim", seed, i) for i in range(n)]
    users = [Identity.derive("sim-user", seed, j) for j in range(spec.users)]
    stakes = [g.stake for g in scenario.nodes for _ in range(g.count)]
    params = LedgerParams(
        epoch_blocks=spec.epoch_blocks, committee_size=spec.committee_size, min_stake=1,
        min_fee=1, txs_per_account_per_block_max=10_000,
    )  # fmt: skip
    allocations = sorted(
        [(u.public_key, USER_BALANCE) for u in users]
        + [(x.public_key, NODE_BALANCE) for x in nodes]
    )
    operators = sorted(
        (GenesisOperator(x.public_key, s, 500) for x, s in zip(nodes, stakes, strict=True) if s),
        key=lambda o: o.account,
    )
    return Genesis(scenario.chain_id, tuple(allocations), tuple(operators), params), nodes, users


class ConsensusSimulator:
    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        keep_trace: bool = False,
        progress: Callable[[int, int], None] | None = None,
        charge_cpu: bool = False,
        share_verification: bool = True,
    ) -> None:
        if scenario.consensus is None:
            raise ValueError(f"scenario {scenario.name!r} has no [consensus] table")
        sc, spec = scenario, scenario.consensus
        self.scenario, self.seed, self.progress, self.spec = sc, seed, progress, spec
        self.charge_cpu = charge_cpu
        self.names = sc.node_names
        n = len(self.names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self.genesis, self.identities, users = build_genesis(sc, seed)
        self.users = [_User(u) for u in users]
        self._key_index = {x.public_key: i for i, x in enumerate(self.identities)}
        self.now_ms, self.phase_end_ms, self.end_ms = 0, sc.duration_ms, sc.end_ms
        self.plan = self._plan_faults()
        self.byzantine = {self._index[x]: f.behaviour for f in self.plan
                          if isinstance(f, Byzantine) for x in f.nodes.patterns}  # fmt: skip
        self.honest = [i for i in range(n) if i not in self.byzantine]
        self._engine_cfg = EngineConfig(
            bft=BftConfig(
                timeout_propose_ms=spec.timeout_propose_ms,
                timeout_propose_delta_ms=spec.timeout_propose_delta_ms,
                timeout_vote_ms=spec.timeout_vote_ms,
                timeout_vote_delta_ms=spec.timeout_vote_delta_ms,
                rebroadcast_ms=spec.rebroadcast_ms,
            ),
            block_txs_max=spec.block_txs_max, empty_block_ms=spec.empty_block_ms,
            snapshot_every=spec.snapshot_every,
        )  # fmt: skip
        full = mesh_from_adjacency([[u for u in range(n) if u != v] for v in range(n)])
        self._links = LinkSchedule.from_faults(self.plan, full, self.names, sc.network.loss)
        self._edge = full.edge
        self._regions = [g.regions[i % len(g.regions)] for g in sc.nodes for i in range(g.count)]
        self._rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "network")))
        self._wrng = random.Random(derive_seed(seed, "workload"))
        self._state, self._skew, self._gen = [0] * n, [0] * n, [0] * n
        self._engines: list[ConsensusEngine | None] = [None] * n
        self._beh: list[ConsensusBehaviour | None] = [None] * n
        self._tick_at = [1 << 62] * n
        self._busy_us = [0] * n
        self.stores = [_Store() for _ in range(n)]
        self._stmt_cache: dict[bytes, Any] = {}
        self._share = share_verification
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._seq = 0
        self.events = 0
        self._hash = hashlib.sha256(b"gpumesh/consensus-sim/trace/v1")
        self.trace: list[str] | None = [] if keep_trace else None
        self.crashes: list[str] = []
        self.counts: dict[str, int] = {}
        self.committed: dict[int, tuple[bytes, bytes, int]] = {}
        """height -> (block hash, state root, first commit time in us) among honest nodes."""
        self.forks: list[str] = []
        self.root_conflicts: list[str] = []
        self.heights_at_phase_end: dict[int, int] = {}
        self._submitted: dict[bytes, int] = {}
        self._latency: list[int] = []
        self._latency_at: list[int] = []
        self.commit_log: list[tuple[int, int]] = []
        """(time in us, transactions) of each height's first commit by an honest node."""
        self._convergence: list[tuple[int, float]] = []
        self._faults_log: list[tuple[int, str]] = []
        self.checkers: dict[str, Checker] = {c: CHECKERS[c]() for c in sc.checkers}
        self._schedule_start()

    # -- setup ----------------------------------------------------------------------------------

    def _plan_faults(self) -> tuple[Fault, ...]:
        return plan_for(self.scenario, self.seed, tuple(sorted(CONSENSUS_BYZANTINE)))

    def _schedule_start(self) -> None:
        boot_rng = random.Random(derive_seed(self.seed, "boot"))
        for k, f in enumerate(self.plan):
            self._push(f.at_ms * US, FAULT, -1, k, None)
        for v in range(len(self.names)):
            self._push(boot_rng.randrange(200) * US, BOOT, v, 0, None)
        self._push(self.phase_end_ms * US, PHASE_END, -1, 0, None)
        for t in range(0, self.end_ms + 1, 1_000):
            self._push(t * US, SAMPLE, -1, 0, None)
        if self.spec.tx_rate > 0:
            self._push(500 * US, SUBMIT, -1, 0, None)

    def observe_at(self, t_ms: int, callback: Callable[[ConsensusSimulator], None]) -> None:
        """Call `callback(self)` at simulated time `t_ms`, read-only (not traced)."""
        self._push(t_ms * US, OBSERVE, -1, 0, callback)

    # -- views for checkers ---------------------------------------------------------------------

    def is_live(self, i: int) -> bool:
        return self._state[i] == BOOTED

    def engine(self, i: int) -> ConsensusEngine | None:
        return self._engines[i]

    def core(self, i: int) -> None:
        return None

    def public_key(self, i: int) -> bytes:
        return self.identities[i].public_key

    def local_now(self, i: int) -> int:
        return EPOCH_MS + self.now_ms + self._skew[i]

    # -- the loop -------------------------------------------------------------------------------

    def _push(self, t_us: int, kind: int, v: int, a: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t_us, self._seq, kind, v, (a, payload)))

    def run(self) -> SimResult:
        if self.events:
            raise RuntimeError("this simulator has already run; build a new one")
        started = time.perf_counter()
        end_us = self.end_ms * US
        heap = self._heap
        while heap and heap[0][0] <= end_us:
            t, _, kind, v, (a, payload) = heapq.heappop(heap)
            self.now_ms = t // US
            if kind == DELIVER:
                self._deliver(t, v, a, payload)
            elif kind == TICK:
                if a == self._gen[v] and self._tick_at[v] == t and self._state[v] == BOOTED:
                    self._tick_at[v] = 1 << 62
                    self._step(t, v, EngineTick(), TICK, 0)
            elif kind == SYNC_REPLY:
                if self._state[v] == BOOTED and a == self._gen[v]:
                    self._step(t, v, payload, SYNC_REPLY, len(payload.data))
            elif kind == SUBMIT:
                self._submit(t)
            elif kind == FAULT:
                self._fault(t, a)
            elif kind == BOOT:
                self._lifecycle(t, v, "boot")
            elif kind == SAMPLE:
                self._sample(t)
            elif kind == PHASE_END:
                self._phase_end()
            elif kind == OBSERVE:
                payload(self)
        self.now_ms = self.end_ms
        return self._result(time.perf_counter() - started)

    def _record(self, t: int, kind: int, v: int, a: int, b: int = 0) -> None:
        self.events += 1
        self._hash.update(b"%d %d %d %d %d %d;" % (t, self.events, kind, v, a, b))
        if self.trace is not None:
            self.trace.append(f"{t} {self.events} {kind} {v} {a} {b}")

    # -- stepping an engine ---------------------------------------------------------------------

    def _step(self, t: int, v: int, inp: Any, kind: int, a: int) -> None:
        eng = self._engines[v]
        if eng is None:
            return
        if self.charge_cpu and self._busy_us[v] > t:  # the node's core is still busy
            self._push(self._busy_us[v], DELIVER, v, -2, (inp, kind, a))
            return
        local = EPOCH_MS + t // US + self._skew[v]
        started = time.perf_counter() if self.charge_cpu else 0.0
        try:
            ready = eng.step(local, inp)
        except Exception as exc:  # an engine must never raise on any input: record it
            self._record(t, kind, v, a, -2)
            if len(self.crashes) < 1_000:
                self.crashes.append(f"t={t // US} node={self.names[v]} {type(inp).__name__} "
                                    f"raised {exc!r:.300}")  # fmt: skip
            return
        out_t = t
        if self.charge_cpu:
            out_t = t + int((time.perf_counter() - started) * 1e6)
            self._busy_us[v] = out_t
        self._record(t, kind, v, a, ready.wake_at_ms)
        self._outputs(out_t, v, ready)
        w = (ready.wake_at_ms - EPOCH_MS - self._skew[v]) * US
        if w < self._tick_at[v]:
            self._tick_at[v] = w = max(w, t + US)
            self._push(w, TICK, v, self._gen[v], None)

    def _outputs(self, t: int, v: int, ready: EngineReady) -> None:
        store, beh = self.stores[v], self._beh[v]
        for act in ready.actions:
            if isinstance(act, Persist):
                store.statements.append(act.statement)
            elif isinstance(act, CommitBlock):
                self._on_commit(t, v, act)
            elif isinstance(act, SendFrame):
                u = self._key_index.get(act.to)
                if u is None:
                    continue
                frames = [act.frame] if beh is None else beh.outgoing(act.to, act.frame)
                for frame in frames:
                    self._send(t, v, u, frame)
            elif isinstance(act, RequestSync):
                self._sync(t, v, act)

    def _on_commit(self, t: int, v: int, act: CommitBlock) -> None:
        store = self.stores[v]
        store.blocks.append(CommittedBlock(act.block, act.cert))
        if act.snapshot is not None:
            store.snapshot = (act.height, act.snapshot)
        store.statements = [s for s in store.statements if s.height > act.height]
        self._count("commits")
        if v in self.byzantine:
            return
        seen = self.committed.get(act.height)
        if seen is None:
            self.committed[act.height] = (act.block_hash, act.state_root, t)
            self.commit_log.append((t, act.txs))
            self._count("blocks")
            self._count("txs_committed", act.txs)
            self._count("txs_rejected", act.rejected)
            for tx in decode_block(act.block).txs:
                sub = self._submitted.pop(hashlib.sha256(tx).digest(), None)
                if sub is not None and len(self._latency) < LATENCY_SAMPLES_MAX:
                    self._latency.append((t - sub) // US)
                    self._latency_at.append(t // US)
        elif seen[0] != act.block_hash:
            self.forks.append(f"height {act.height}: {self.names[v]} committed "
                              f"{act.block_hash.hex()[:16]}, another honest node "
                              f"{seen[0].hex()[:16]}")  # fmt: skip
        elif seen[1] != act.state_root:
            self.root_conflicts.append(f"height {act.height}: {self.names[v]} has state root "
                                       f"{act.state_root.hex()[:16]}")  # fmt: skip

    # -- the network ----------------------------------------------------------------------------

    def _link(self, t: int, u: int, v: int, size: int) -> int | None:
        """One-way delay in us of a message u -> v sent at t, or None if it is lost."""
        e = self._edge(u, v)
        if e is None:
            return None
        state = self._links.states[self._links.at(t // US)]
        if state.blocked[e]:
            self._count("blocked")
            return None
        rng, net = self._rng, self.scenario.network
        if rng.random() < state.loss[e]:
            self._count("lost")
            return None
        ms = base_latency_ms(self._regions[u], self._regions[v]) + int(state.extra_ms[e])
        delay = ms * US + int(rng.integers(0, net.jitter_ms * US + 1))
        delay += size * 8 * US // (net.bandwidth_mbps * 1000)
        if net.reorder > 0 and rng.random() < net.reorder:
            delay += int(rng.integers(1, net.reorder_ms * US + 1))
        return delay

    def _send(self, t: int, v: int, u: int, frame: bytes) -> None:
        delay = self._link(t, v, u, len(frame))
        self._count("frames")
        if delay is None:
            return
        self._push(t + delay, DELIVER, u, v, frame)
        if (
            self.scenario.network.duplicate > 0
            and self._rng.random() < self.scenario.network.duplicate
        ):
            self._push(t + delay + US, DELIVER, u, v, frame)
            self._count("duplicated")

    def _deliver(self, t: int, u: int, v: int, frame: Any) -> None:
        if v == -2:  # a deferred input of a busy node (CPU charging)
            inp, kind, a = frame
            self._step(t, u, inp, kind, a)
            return
        if self._state[u] != BOOTED:
            self._count("dropped_at_down_node")
            return
        self._step(t, u, FrameIn(self.identities[v].public_key, frame), DELIVER, v)

    def _sync(self, t: int, v: int, req: RequestSync) -> None:
        """The peer answers from its store, if it runs and the links both ways are up."""
        u = self._key_index.get(req.to)
        if u is None or self._state[u] != BOOTED:
            return
        beh = self._beh[u]
        if beh is not None and not beh.serves_sync:
            return
        there = self._link(t, v, u, 64)
        if there is None:
            return
        blocks = self.stores[u].blocks
        chosen: list[CommittedBlock] = []
        size = 0
        for h in range(req.start, min(req.end, len(blocks)) + 1):
            item = blocks[h - 1]
            size += len(item.block) + len(item.cert)
            chosen.append(item)
            if size > 2 * 1024 * 1024:
                break
        data = BlockBatch(tuple(chosen), len(blocks)).encode()
        back = self._link(t + there, u, v, len(data))
        if back is None:
            return
        self._count("sync_replies")
        self._push(t + there + back, SYNC_REPLY, v, self._gen[v], SyncReply(req.to, data))

    # -- workload -------------------------------------------------------------------------------

    def _submit(self, t: int) -> None:
        """Submit this second's share of transfers (spread over 10 ms slots), and resubmit
        those that went nowhere (sent to a member that crashed, or cut off)."""
        members = [i for i in self._live_members()]
        slot_us = 10 * US
        per_slot = self.spec.tx_rate * 10 / 1000
        self._carry = getattr(self, "_carry", 0.0) + per_slot
        count, self._carry = int(self._carry), self._carry - int(self._carry)
        if members:
            for _ in range(count):
                user = self.users[self._wrng.randrange(len(self.users))]
                self._new_tx(t, user, members)
            if (t // slot_us) % 100 == 0:
                self._resubmit(t, members)
        if t + slot_us <= self.phase_end_ms * US:
            self._push(t + slot_us, SUBMIT, -1, 0, None)

    def _new_tx(self, t: int, user: _User, members: list[int]) -> None:
        if len(user.pending) >= 200:
            return
        to = self.users[self._wrng.randrange(len(self.users))].identity.public_key
        tx = Transfer(nonce=user.next_nonce, fee=1, to=to, amount=1)
        data = sign(tx, user.identity, self.genesis.chain_id.encode()).encode()
        user.pending[user.next_nonce] = (data, t)
        user.next_nonce += 1
        self._submitted[hashlib.sha256(data).digest()] = t
        self._count("txs_submitted")
        self._hand(t, self._wrng.choice(members), data)

    def _hand(self, t: int, v: int, data: bytes) -> None:
        self._seq += 1
        self._step(t, v, ClientTx(data, self._seq), SUBMIT, 0)

    def _resubmit(self, t: int, members: list[int]) -> None:
        ref = self._reference()
        if ref is None:
            return
        state = ref.chain.state
        for user in self.users:
            done = state.nonce(user.identity.public_key)
            for nonce in [k for k in user.pending if k < done]:
                del user.pending[nonce]
            stale = [(k, d) for k, (d, t0) in sorted(user.pending.items()) if t - t0 > RESUBMIT_US]
            for _, data in stale[:50]:
                self._count("txs_resubmitted")
                self._hand(t, self._wrng.choice(members), data)

    def _live_members(self) -> list[int]:
        ref = self._reference()
        if ref is None:
            return []
        keys = ref.chain.committee.members
        return [self._key_index[k] for k in keys if k in self._key_index
                and self._state[self._key_index[k]] == BOOTED]  # fmt: skip

    def _reference(self) -> ConsensusEngine | None:
        """The highest live honest engine: what a client would learn from a good node."""
        best: ConsensusEngine | None = None
        for i in self.honest:
            eng = self._engines[i]
            up = eng is not None and self._state[i] == BOOTED
            if up and eng is not None and (best is None or eng.chain.height > best.chain.height):
                best = eng
        return best

    # -- faults and lifecycle -------------------------------------------------------------------

    def _fault(self, t: int, k: int) -> None:
        f = self.plan[k]
        self._faults_log.append((t // US, f.describe()))
        self._record(t, FAULT, -1, k)
        targets = [self._index[x] for sel in f.selectors() for x in sel.patterns]
        if isinstance(f, Crash | DiskLoss | Restart | Pause | Resume):
            for v in targets:
                self._lifecycle(t, v, f.KIND)
        elif isinstance(f, ClockSkew):
            for v in targets:
                self._skew[v] = f.by_ms
        elif isinstance(f, Byzantine):
            for v in targets:
                cls = CONSENSUS_BYZANTINE.get(f.behaviour)
                if cls is None:
                    known = ", ".join(sorted(CONSENSUS_BYZANTINE))
                    raise ValueError(f"{f.behaviour!r} is not a consensus behaviour ({known})")
                rng = random.Random(derive_seed(self.seed, "byzantine", v))
                ctx = ConsensusByzContext(self.names[v], self.identities[v],
                                          self.genesis.chain_id.encode(), rng)  # fmt: skip
                self._beh[v] = cls(ctx)

    def _lifecycle(self, t: int, v: int, kind: str) -> None:
        old = self._state[v]
        new = self._state[v] = next_state(old, kind)
        wiped = kind == DiskLoss.KIND
        if wiped:
            self.stores[v].clear()
        ran, runs = old & BOOTED and not old & CRASHED, new & BOOTED and not new & CRASHED
        if ran and not runs:
            self._engines[v], self._tick_at[v] = None, 1 << 62
            self._gen[v] += 1
            self._record(t, BOOT, v, -1)
        elif runs and not ran:
            self._engines[v] = self._boot_engine(t, v)
            self._gen[v] += 1
            self._tick_at[v] = 1 << 62
            self._record(t, BOOT, v, 1)
            self._step(t, v, EngineTick(), TICK, 2)
        elif new == BOOTED and old != BOOTED:  # resumed: time passed, its timers are due
            self._tick_at[v] = 1 << 62
            self._step(t, v, EngineTick(), TICK, 3)

    def _boot_engine(self, t: int, v: int) -> ConsensusEngine:
        """A process starting: the chain from the store's snapshot and blocks (or genesis),
        our persisted statements; a store that was wiped means we may have voted and forgot."""
        store = self.stores[v]
        if store.snapshot is not None:
            chain = Chain.from_snapshot(store.snapshot[1])
        else:
            chain = Chain.from_genesis(self.genesis)
        for item in store.blocks[chain.height :]:
            chain.apply(chain.check_commit(item.block, item.cert))
        fresh = not store.blocks and not store.statements
        forgot = fresh and self._gen[v] > 0
        local = EPOCH_MS + t // US + self._skew[v]
        decode = self._shared_decode if self._share else None
        cfg = self._engine_cfg
        behaviour = CONSENSUS_BYZANTINE.get(self.byzantine.get(v, ""))
        if behaviour is not None and not behaviour.follows_vote_hub:
            cfg = replace(cfg, vote_hub_from=COMMITTEE_SIZE_MAX + 1)
        return ConsensusEngine(chain, self.identities[v], cfg, local,
                               restored=list(store.statements), forgot_votes=forgot,
                               decode_statement_fn=decode)  # fmt: skip

    def _shared_decode(self, data: bytes) -> Any:
        """Statement decoding memoised across nodes (the same bytes verify the same way
        everywhere); failures re-raise afresh. Off when a benchmark charges real CPU."""
        from consensus.bft.votes import decode_statement

        hit = self._stmt_cache.get(data)
        if hit is None:
            try:
                hit = decode_statement(data, self.genesis.chain_id.encode())
            except Exception as exc:
                hit = exc
            if len(self._stmt_cache) >= 65_536:
                del self._stmt_cache[next(iter(self._stmt_cache))]
            self._stmt_cache[data] = hit
        if isinstance(hit, Exception):
            raise type(hit)(*hit.args)
        return hit

    # -- sampling and results -------------------------------------------------------------------

    def _sample(self, t: int) -> None:
        live = [self._engines[i] for i in self.honest if self._state[i] == BOOTED]
        heights = [e.chain.height for e in live if e is not None]
        top = max(heights, default=0)
        share = sum(1 for h in heights if h >= top) / len(heights) if heights else 1.0
        self._convergence.append((t // US, share))
        for checker in self.checkers.values():
            checker.on_sample(self)
        if self.progress is not None:
            self.progress(t // US, self.end_ms)

    def _phase_end(self) -> None:
        for i in self.honest:
            eng = self._engines[i]
            self.heights_at_phase_end[i] = eng.chain.height if eng is not None else 0
        for checker in self.checkers.values():
            checker.on_phase_end(self)

    def _count(self, key: str, k: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + k

    def latency_after(self, t_ms: int) -> list[int]:
        """Submission-to-commit latencies (ms) of transactions committed at or after t_ms."""
        return [d for d, at in zip(self._latency, self._latency_at, strict=True) if at >= t_ms]

    def state_digest(self) -> str:
        h = hashlib.sha256(b"gpumesh/consensus-sim/state/v1")
        for i, eng in enumerate(self._engines):
            h.update(f"{self.names[i]}:{self._state[i]}:".encode())
            if eng is not None:
                h.update(eng.chain.head_hash + eng.chain.head_root)
        return h.hexdigest()

    def _result(self, wall_s: float) -> SimResult:
        verdicts = {name: c.verdict(self) for name, c in self.checkers.items()}
        metrics = SimMetrics(list(self._latency), self._convergence, self._faults_log,
                             dict(sorted(self.counts.items())), list(self.crashes),
                             self.phase_end_ms)  # fmt: skip
        return result_of(self, wall_s, verdicts, metrics, self._hash.hexdigest())


def simulator_for(scenario: Scenario, seed: int, **kwargs: Any) -> Any:
    """The simulator a scenario asks for: consensus with a [consensus] table, else gossip."""
    if scenario.consensus is not None:
        return ConsensusSimulator(scenario, seed, **kwargs)
    from sim_harness.simulator import Simulator

    return Simulator(scenario, seed, **kwargs)
