"""A deterministic simulation of the compute market: the real ledger (offers, scheduler,
commit-reveal, verdicts, settlement, heartbeats, slashing, rerouting) driven block by block
by simulated nodes that behave honestly or not, crash and come back.

Consensus is abstracted to "one block every `block_ms`": the consensus simulator covers
ordering under faults; this one covers what the market does with an ordered chain. Every
transaction is really signed and applied by `apply_block` (whose conservation check runs
after every block); the simulator hands `apply_block` the transactions it signed, as a node
hands over those its mempool verified, so each signature is made once and never re-checked.

Node behaviours (the market's Byzantine vocabulary, next to the consensus one):
- `honest`: runs each replica for its runtime, commits the right digest, reveals;
- `wrong`: does the work but reports its own wrong digest (faulty hardware, a bad kernel);
- `lazy`: skips the work and commits a guess at once (commit-reveal leaves it nothing to
  copy, so a guess is all it has);
- `liar`: offers twice the GPUs it has and silently drops the replicas it cannot run;
- `flaky`: goes offline in the middle of a job for a while (heartbeats stop);
- `withhold`: commits the right digest but never reveals.
On top, churn: a fraction of all nodes (honest ones included) crash at random times and
restart after a random outage. Everything is drawn from one seed (numpy PCG64), so a run
replays bit for bit; `trace_hash` covers every block's state root.

Checkers: conservation (every block), no job lost (every job closes: settled, failed or
expired) and none paid twice (each closes once; paid + fee + refund = escrow), no honest
node slashed (honest: the `honest` behaviour and never crashed), and the catch rates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consensus.ledger import LedgerParams, LedgerState, apply_block
from consensus.ledger.apply import BlockContext
from consensus.ledger.genesis import Genesis, GenesisOperator
from consensus.ledger.job_records import JobStatus, SubmitJob, job_id
from consensus.ledger.liveness import is_down
from consensus.ledger.market_records import CommitResult, Heartbeat, OfferCapacity, RevealResult
from consensus.ledger.params import MarketParams
from consensus.ledger.tx import LedgerTx, Tx
from consensus.market.verify import result_commitment, result_token
from p2p.announcements import GpuSpec
from p2p.identity import Identity
from p2p.wire import sign

BEHAVIOURS = ("honest", "wrong", "lazy", "liar", "flaky", "withhold")
GPU_MIX: tuple[tuple[GpuSpec, ...], ...] = (
    (GpuSpec("RTX 4090", 2, 24_564),),
    (GpuSpec("A100-SXM4-80GB", 4, 81_920),),
    (GpuSpec("H100-SXM5-80GB", 8, 81_559),),
    (GpuSpec("L40S", 2, 46_068),),
)
REGIONS = ("eu-west", "us-east", "ap-south", "eu-central")
CHAIN = "gpumesh-market-sim"
FEE = 1
BALANCE = 10**15
STAKE = 10**9
PRICE = 1_000_000
FINAL = frozenset({JobStatus.SETTLED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class MarketScenario:
    """What a run simulates. Fractions are of all nodes; behaviours are assigned first, churn
    is drawn independently (so honest nodes crash too)."""

    seed: int = 1
    nodes: int = 50
    jobs: int = 500
    jobs_per_block: int = 5
    redundancy: int = 2
    runtime_blocks: tuple[int, int] = (1, 4)
    deadline_blocks: int = 200
    block_ms: int = 1_000
    behaviours: dict[str, float] = field(default_factory=dict)
    """behaviour -> fraction of nodes; the rest are honest."""
    churn: float = 0.0
    """Fraction of nodes that crash once, at a random block of the submission period."""
    outage_blocks: tuple[int, int] = (10, 60)
    mtbf_blocks: int = 0
    """Soak mode: every node also fails again and again, with exponentially distributed
    blocks between failures of this mean (0: off), each outage drawn from outage_blocks."""
    extra_blocks: int = 0
    """Blocks to run after the submissions besides the drain (a soak's length)."""
    flaky_outage_blocks: tuple[int, int] = (10, 30)
    market: MarketParams = field(
        default_factory=lambda: MarketParams(
            commit_window_blocks=10,
            reveal_window_blocks=5,
            heartbeat_blocks=2,
            down_after_blocks=3,
        )
    )
    surge: tuple[int, int, int] = (0, 0, 0)
    """(first block, last block, jobs per block): a demand surge on top of the steady rate
    (prices rise while it lasts, then fall back once capacity sits idle)."""
    cheaters_undercut: bool = True
    """Misbehaving nodes offer 10% below every honest price, so the scheduler prefers them:
    the adversary's best strategy to be given work, and the hardest case for the checkers."""
    drain_blocks: int = 400
    """Blocks after the last submission for jobs to close (bounded: the run always ends)."""
    epoch_blocks: int = 100

    def __post_init__(self) -> None:
        unknown = set(self.behaviours) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}; known: {BEHAVIOURS}")
        if sum(self.behaviours.values()) > 1 or not 0 <= self.churn <= 1:
            raise ValueError("behaviour fractions must add up to at most 1, churn 0..1")
        if self.nodes < self.redundancy + 2 or self.jobs < 1 or self.jobs_per_block < 1:
            raise ValueError("need nodes >= redundancy + 2, jobs >= 1, jobs_per_block >= 1")
        if self.runtime_blocks[1] + 2 > self.market.commit_window_blocks:
            raise ValueError(
                f"commit_window_blocks {self.market.commit_window_blocks} leaves an honest node "
                f"no time for a {self.runtime_blocks[1]}-block job (needs runtime + 2)"
            )


@dataclass
class SimNode:
    ident: Identity
    behaviour: str
    gpus: int
    outages: list[tuple[int, int]] = field(default_factory=list)
    """[start, end) block ranges in which it is crashed, sorted."""
    crashed_ever: bool = False
    offline_until: int = 0
    running: dict[bytes, int] = field(default_factory=dict)
    """job -> block at which its replica finishes (commits)."""
    dropped: set[bytes] = field(default_factory=set)
    """Replicas a liar never runs."""

    @property
    def key(self) -> bytes:
        return self.ident.public_key

    def online(self, height: int) -> bool:
        while self.outages and self.outages[0][1] <= height:
            self.outages.pop(0)  # queried with rising heights only
        if self.outages and self.outages[0][0] <= height:
            return False
        return height >= self.offline_until


@dataclass
class MarketResult:
    scenario: MarketScenario
    blocks: int
    jobs: int
    settled: int
    failed: int
    expired: int
    open_jobs: int
    reroute_ms: list[int]
    honest_slashed: list[str]
    caught: dict[str, tuple[int, int]]
    """behaviour -> (faulty replicas caught, faulty replicas seen). Caught: penalised for a
    missed step, or outvoted (unpaid, and slashed or struck, see job_results.conclude)."""
    uptime_percent: float
    available_percent: float
    """Blocks (so minutes of simulated time) in which the network could place a job."""
    trace_hash: str
    problems: list[str]

    @property
    def completion_rate(self) -> float:
        return self.settled / self.jobs

    def percentile_ms(self, q: float) -> int | None:
        if not self.reroute_ms:
            return None
        return int(np.percentile(np.array(self.reroute_ms), q, method="higher"))

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.scenario.seed,
            "nodes": self.scenario.nodes,
            "jobs": self.jobs,
            "blocks": self.blocks,
            "simulated_s": self.blocks * self.scenario.block_ms / 1000,
            "settled": self.settled,
            "failed": self.failed,
            "expired": self.expired,
            "open": self.open_jobs,
            "completion_rate": round(self.completion_rate, 6),
            "reroutes": len(self.reroute_ms),
            "reroute_p50_ms": self.percentile_ms(50),
            "reroute_p99_ms": self.percentile_ms(99),
            "honest_slashed": self.honest_slashed,
            "caught": {b: {"caught": c, "seen": s} for b, (c, s) in self.caught.items()},
            "node_uptime_percent": round(self.uptime_percent, 4),
            "network_available_percent": round(self.available_percent, 4),
            "trace_sha256": self.trace_hash,
            "problems": self.problems,
        }


def true_digest(job: bytes) -> bytes:
    return hashlib.sha256(b"right" + job).digest()


def wrong_digest(job: bytes, node: bytes) -> bytes:
    return hashlib.sha256(b"wrong" + job + node).digest()


class MarketSim:
    def __init__(self, scenario: MarketScenario) -> None:
        self.sc = scenario
        self.rng = np.random.Generator(np.random.PCG64(scenario.seed))
        self.nodes = self._make_nodes()
        self.by_key = {n.key: n for n in self.nodes}
        self.users = [Identity.derive(f"market-sim-user-{scenario.seed}", i) for i in range(8)]
        params = LedgerParams(
            epoch_blocks=scenario.epoch_blocks, min_stake=1_000, min_fee=FEE,
            txs_per_account_per_block_max=10_000, market=scenario.market,
        )  # fmt: skip
        accounts = [n.key for n in self.nodes] + [u.public_key for u in self.users]
        allocations = tuple(sorted((a, BALANCE) for a in accounts))
        operators = tuple(GenesisOperator(n.key, STAKE, 500) for n in self.nodes)
        self.state: LedgerState = Genesis(CHAIN, allocations, operators, params).initial_state()
        self.chain_id = CHAIN.encode()
        self.nonces: dict[bytes, int] = {}
        self.signed: dict[bytes, Tx] = {}
        self.trace = hashlib.sha256()
        self.submitted: list[bytes] = []
        self.down_since: dict[bytes, int] = {}
        """node -> the block it went offline (crash or flaky outage), while offline."""
        self.reroute_ms: list[int] = []
        """Block time from a node going offline to its replica's replacement being assigned."""
        self.awaiting: dict[bytes, list[int]] = {}
        self.reroutes_missed = 0
        self.available_blocks = 0
        self.price_series: list[dict[str, int]] = []
        """Every GPU class's price after each block."""
        """Blocks in which at least `redundancy` offering nodes were up (ledger's view)."""
        self.faulty_seen: dict[str, set[tuple[bytes, bytes]]] = {}
        self.salt = hashlib.sha256(b"salt%d" % scenario.seed).digest()

    # -- set-up ----------------------------------------------------------------------------------

    def _make_nodes(self) -> list[SimNode]:
        sc, rng = self.sc, self.rng
        kinds: list[str] = []
        for behaviour in BEHAVIOURS[1:]:
            kinds += [behaviour] * round(sc.behaviours.get(behaviour, 0.0) * sc.nodes)
        kinds = (kinds + ["honest"] * sc.nodes)[: sc.nodes]
        order = rng.permutation(sc.nodes)
        nodes = []
        for i in range(sc.nodes):
            spec = GPU_MIX[i % len(GPU_MIX)]
            ident = Identity.derive(f"market-sim-node-{sc.seed}", i)
            nodes.append(SimNode(ident, kinds[int(order[i])], sum(g.count for g in spec)))
        submit_blocks = max(1, -(-sc.jobs // sc.jobs_per_block))
        crashing = rng.permutation(sc.nodes)[: round(sc.churn * sc.nodes)]
        for i in sorted(int(c) for c in crashing):
            start = 5 + int(rng.integers(0, submit_blocks))
            nodes[i].outages.append((start, start + self._outage()))
        if sc.mtbf_blocks:
            horizon = 2 + submit_blocks + sc.drain_blocks + sc.extra_blocks
            for node in nodes:
                at = 5
                while True:
                    at += 1 + int(rng.exponential(sc.mtbf_blocks))
                    if at >= horizon:
                        break
                    end = at + self._outage()
                    node.outages.append((at, end))
                    at = end
                node.outages.sort()
        for node in nodes:
            node.crashed_ever = bool(node.outages)
        return nodes

    def _outage(self) -> int:
        return int(self.rng.integers(*self.sc.outage_blocks, endpoint=True))

    def _tx(self, who: Identity, record_type: type[LedgerTx], **fields: Any) -> bytes:
        nonce = self.nonces.get(who.public_key, 0)
        self.nonces[who.public_key] = nonce + 1
        signed = sign(record_type(nonce=nonce, fee=FEE, **fields), who, self.chain_id)
        data = signed.encode()
        self.signed[data] = signed
        return data

    def _decode(self, data: bytes) -> Tx:
        return self.signed.pop(data)

    # -- the run ---------------------------------------------------------------------------------

    def run(self, progress: Callable[[int, int], None] | None = None) -> MarketResult:
        sc = self.sc
        submit_blocks = max(-(-sc.jobs // sc.jobs_per_block), sc.surge[1])
        last = 2 + submit_blocks + sc.drain_blocks + sc.extra_blocks
        txs = [self._offer(n) for n in self.nodes]
        height = 0
        while height < last:
            height += 1
            txs += self._submissions(height)
            self._apply(height, txs)
            if progress is not None:
                progress(height, last)
            if height > submit_blocks + 2 + sc.extra_blocks and self._all_closed():
                break
            txs = self._node_actions(height + 1)
        return self._result(height)

    def _offer(self, node: SimNode) -> bytes:
        spec: tuple[GpuSpec, ...] = GPU_MIX[self.nodes.index(node) % len(GPU_MIX)]
        if node.behaviour == "liar":
            spec = tuple(GpuSpec(g.model, g.count * 2, g.memory_mib) for g in spec)
        region = REGIONS[self.nodes.index(node) % len(REGIONS)]
        price = PRICE + 10_000 * int(self.rng.integers(0, 30))
        if node.behaviour != "honest" and self.sc.cheaters_undercut:
            price = PRICE * 9 // 10  # cheaters bid low to win work
        return self._tx(node.ident, OfferCapacity, gpus=spec, region=region,
                        price_per_gpu_hour=price)  # fmt: skip

    def _submissions(self, height: int) -> list[bytes]:
        sc = self.sc
        out: list[bytes] = []
        first, last, surge_rate = sc.surge
        rate = surge_rate if first <= height <= last else sc.jobs_per_block
        while len(self.submitted) < sc.jobs and len(out) < rate and height >= 2:
            user = self.users[len(self.submitted) % len(self.users)]
            nonce = self.nonces.get(user.public_key, 0)
            out.append(self._tx(
                user, SubmitJob, kind="matmul", params=b"%d" % len(self.submitted), inputs=(),
                gpu_model="", min_memory_mib=0, gpus=1, region="", max_rtt_ms=0,
                redundancy=sc.redundancy, deadline_height=height + sc.deadline_blocks,
                max_price_per_gpu_hour=2 * PRICE, max_hours_milli=10,
            ))  # fmt: skip
            self.submitted.append(job_id(self.chain_id, user.public_key, nonce))
        return out

    def _apply(self, height: int, txs: list[bytes]) -> None:
        before = {j: (r.status, r.excluded) for j, r in self.state.jobs.items()}
        outcome = apply_block(self.state, txs, BlockContext(height), decode=self._decode)
        self.signed.clear()
        up = sum(1 for node in self.state.offers if not is_down(self.state, node, height))
        self.available_blocks += up >= self.sc.redundancy
        self.trace.update(height.to_bytes(8, "big") + outcome.state_root)
        self.price_series.append(dict(self.state.prices))
        for job, record in self.state.jobs.items():
            old = before.get(job)
            if old is not None and record.excluded != old[1]:
                for node in set(record.excluded) - set(old[1]):
                    since = self.down_since.get(node)
                    if since is not None:  # a crashed node's replica: time its replacement
                        self.awaiting.setdefault(job, []).append(since)
            if job in self.awaiting and record.status != JobStatus.PENDING:
                for since in self.awaiting.pop(job):
                    if record.status == JobStatus.ASSIGNED:
                        self.reroute_ms.append((height - since) * self.sc.block_ms)
                    else:  # closed before a replacement was found
                        self.reroutes_missed += 1

    def _node_actions(self, height: int) -> list[bytes]:
        """What each node sends for inclusion in block `height`, seen from the state after
        block `height - 1`."""
        state, market = self.state, self.sc.market
        txs: list[bytes] = []
        for node in self.nodes:
            was_up = node.key not in self.down_since
            if not node.online(height):
                if was_up:
                    self.down_since[node.key] = height
                node.running.clear()
                continue
            if not was_up:
                del self.down_since[node.key]
            live = state.liveness.get(node.key)
            if live is not None and height - live.last_heartbeat >= market.heartbeat_blocks:
                txs.append(self._tx(node.ident, Heartbeat))
        for job in sorted(state.jobs):
            record = state.jobs[job]
            if record.status not in (JobStatus.ASSIGNED, JobStatus.REVEALING):
                continue
            for replica in record.replicas:
                node = self.by_key[replica.node]
                if not node.online(height):
                    continue
                data = self._replica_step(node, job, record.status, replica, height)
                if data is not None:
                    txs.append(data)
        return txs

    def _fault(self, node: SimNode, job: bytes) -> None:
        """This replica misbehaved (as its node's behaviour says): the ledger should catch it."""
        self.faulty_seen.setdefault(node.behaviour, set()).add((node.key, job))

    def _replica_step(
        self, node: SimNode, job: bytes, status: int, replica: Any, height: int
    ) -> bytes | None:
        b = node.behaviour
        digest = true_digest(job)
        if b in ("wrong", "lazy"):
            digest = wrong_digest(job, node.key)
        salt = hashlib.sha256(self.salt + job + node.key).digest()
        if status == JobStatus.ASSIGNED and not replica.committed:
            if job in node.dropped:
                return None
            if job not in node.running:
                if b == "liar" and len(node.running) >= node.gpus:
                    node.dropped.add(job)  # promised GPUs it does not have
                    self._fault(node, job)
                    return None
                low, high = self.sc.runtime_blocks
                node.running[job] = height + (0 if b == "lazy" else int(
                    self.rng.integers(low, high, endpoint=True)))  # fmt: skip
                if b == "flaky" and self.rng.random() < 0.5:
                    node.offline_until = height + int(
                        self.rng.integers(*self.sc.flaky_outage_blocks, endpoint=True)
                    )
                    self._fault(node, job)
                    return None
            if height < node.running[job]:
                return None
            del node.running[job]
            if b in ("wrong", "lazy"):
                self._fault(node, job)
            commitment = result_commitment(job, node.key, digest, salt)
            token = result_token(job, digest)
            return self._tx(node.ident, CommitResult, job_id=job, commitment=commitment,
                            token=token)  # fmt: skip
        if status == JobStatus.REVEALING and not replica.revealed:
            if b == "withhold":
                self._fault(node, job)
                return None
            runtime = 1_000 * (1 + int(job[0]) % 5)
            return self._tx(node.ident, RevealResult, job_id=job, digest=digest, salt=salt,
                            runtime_ms=runtime)  # fmt: skip
        return None

    def _all_closed(self) -> bool:
        """Every submitted job closed (the protocol's own challenge jobs are not waited for)."""
        jobs = self.state.jobs
        if len(self.submitted) < self.sc.jobs:
            return False
        return all(j in jobs and jobs[j].status in FINAL for j in self.submitted)

    # -- results and checkers --------------------------------------------------------------------

    def _result(self, blocks: int) -> MarketResult:
        state = self.state
        counts = {s: 0 for s in JobStatus}
        problems: list[str] = []
        for job in self.submitted:
            record = state.jobs.get(job)
            if record is None:
                problems.append(f"job {job.hex()[:12]} was submitted but never recorded")
                continue
            counts[JobStatus(record.status)] += 1
            if record.status in FINAL and job in state.escrows:
                problems.append(f"job {job.hex()[:12]} closed with its escrow still held")
            if record.status in FINAL:
                total = record.paid + record.fee_paid + record.refunded
                if total != record.escrowed + record.subsidy:
                    problems.append(
                        f"job {job.hex()[:12]} paid out {total} of {record.escrowed} escrowed "
                        f"+ {record.subsidy} from the protocol"
                    )
        honest_slashed = [
            n.key.hex()[:16]
            for n in self.nodes
            if n.behaviour == "honest" and not n.crashed_ever
            and state.operators[n.key].slashed_total > 0
        ]  # fmt: skip
        if honest_slashed:
            problems.append(f"honest nodes slashed: {honest_slashed}")
        caught = {}
        for behaviour, seen in sorted(self.faulty_seen.items()):
            found = sum(
                1 for node, job in seen if self._penalised(node, job) or self._outvoted(node, job)
            )
            caught[behaviour] = (found, len(seen))
        open_jobs = sum(counts[s] for s in (JobStatus.PENDING, JobStatus.ASSIGNED,
                                             JobStatus.REVEALING))  # fmt: skip
        if open_jobs:
            problems.append(f"{open_jobs} jobs still open after the drain period")
        up = sum(
            live.up_blocks + sum(h[1] for h in live.history) for live in state.liveness.values()
        )
        counted = sum(
            live.counted_blocks + sum(h[2] for h in live.history)
            for live in state.liveness.values()
        )
        return MarketResult(
            self.sc, blocks, len(self.submitted), counts[JobStatus.SETTLED],
            counts[JobStatus.FAILED], counts[JobStatus.EXPIRED], open_jobs, self.reroute_ms,
            honest_slashed, caught, 100 * up / counted if counted else 100.0,
            100 * self.available_blocks / blocks, self.trace.hexdigest(), problems,
        )  # fmt: skip

    def _outvoted(self, node: bytes, job: bytes) -> bool:
        """Its digest lost the job's verdict: unpaid, and struck or slashed."""
        record = self.state.jobs.get(job)
        if record is None or record.status != JobStatus.SETTLED:
            return False
        mine = next((r for r in record.replicas if r.node == node), None)
        return mine is not None and mine.revealed and mine.digest != record.result_digest

    def _penalised(self, node: bytes, job: bytes) -> bool:
        from consensus.ledger.job_flow import NO_SHOW, WITHHELD, WRONG_RESULT, penalty_digest

        return any(
            penalty_digest(kind, job, node) in self.state.evidence_seen
            for kind in (NO_SHOW, WITHHELD, WRONG_RESULT)
        )


def run_market(scenario: MarketScenario) -> MarketResult:
    return MarketSim(scenario).run()
