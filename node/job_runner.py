"""JobRunner: the node's side of the market, next to its ChainService (trio).

It watches the committed state and does what the ledger expects of this node:
- keeps the node's committed offer (`OfferCapacity`) equal to what it has: its GPUs, region
  and price from the config and GPU detection, and the RTTs its pings measure to its peers
  (refreshed every RTT_REFRESH_BLOCKS blocks at most);
- runs each replica assigned to it (in a worker thread, one at a time per GPU slot, stopped
  at the job's hours cap), stores the result, and commits to its digest (`CommitResult`);
- once every replica has committed, reveals (`RevealResult`);
- sends a `Heartbeat` every `heartbeat_blocks` blocks while it has an offer (the ledger
  measures uptime from them, and reroutes a silent node's replicas at once);
- every ANOMALY_EVERY_BLOCKS blocks, looks for nodes whose runtimes do not fit their GPU
  class (node/anomaly.py) and flags them (`FlagNode`), which makes the ledger audit them;
- fetches a job's input blobs by content hash from peers (node/blobs.py) and serves its own;
- serves stored results to peers over `PROTOCOL_RESULT`, and fetches a settled job's result
  from a winning replica for the CLI, checking its bytes against the committed digest.

Nothing is lost on a crash: a result and its salt are on disk (fsync'ed, then renamed)
before the commitment leaves, so a restarted node can still reveal what it committed to. A
transaction that did not make it into a block is sent again after `RESEND_BLOCKS` blocks.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus

from consensus.ledger.job_records import JobRecord, JobStatus
from consensus.ledger.liveness import is_watched
from consensus.ledger.market_records import (
    RTT_MS_MAX,
    RTTS_MAX,
    CommitResult,
    FlagNode,
    Heartbeat,
    OfferCapacity,
    PeerRtt,
    RevealResult,
)
from consensus.ledger.state import LedgerState
from consensus.ledger.tx import LedgerTx
from consensus.market.verify import result_commitment, result_token
from node.anomaly import anomalies_among, samples_from_state
from node.blobs import PROTOCOL_BLOB, BlobStore
from node.chain_service import ChainService, account_of, peer_of
from node.job_exec import JobParamsError, execute, output_digest
from node.logs import LOGGER_NAME, log_event
from node.workloads import DeadlineExceeded
from p2p.announcements import GpuSpec
from p2p.errors import DecodeError
from p2p.identity import Identity
from p2p.transport import MessageTooLarge, PeerId, RequestFailed, Transport
from p2p.wire import sign

PROTOCOL_RESULT = "/gpumesh/result/1"
POLL_S = 0.2
RESEND_BLOCKS = 4
FETCH_TIMEOUT_MS = 10_000
MS_PER_MILLI_HOUR = 3_600
HEADS_KEPT = 200
RTT_STEP_MS = 5
RTT_REFRESH_BLOCKS = 100
RTT_FIRST_WAIT_BLOCKS = 50
"""How long a node's first RTTs wait for every connected node to be measured (a peer's RTT
needs two pings, and a peer busy answering us is pinged every fifth round) before they go on
chain as they are; the rest then wait for the next refresh, RTT_REFRESH_BLOCKS later."""
ANOMALY_EVERY_BLOCKS = 20


@dataclass(frozen=True)
class WantedOffer:
    gpus: tuple[GpuSpec, ...]
    region: str
    price_per_gpu_hour: int


@dataclass(frozen=True)
class StoredResult:
    digest: bytes
    salt: bytes
    runtime_ms: int
    backend: str


class ResultStore:
    """`<job>.npy` (the result array) and `<job>.json` (digest, salt, runtime), each written
    to a temporary file, fsync'ed and renamed; the JSON goes last, so its presence means
    the whole result is there."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job: bytes, suffix: str) -> Path:
        return self.root / f"{job.hex()}{suffix}"

    def get(self, job: bytes) -> StoredResult | None:
        try:
            doc = json.loads(self._path(job, ".json").read_text())
            return StoredResult(
                bytes.fromhex(doc["digest"]), bytes.fromhex(doc["salt"]),
                int(doc["runtime_ms"]), str(doc["backend"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError):
            return None

    def output(self, job: bytes) -> bytes | None:
        try:
            return self._path(job, ".npy").read_bytes()
        except OSError:
            return None

    def put(self, job: bytes, result: StoredResult, output: bytes) -> None:
        self._write(self._path(job, ".npy"), output)
        doc = {
            "digest": result.digest.hex(),
            "salt": result.salt.hex(),
            "runtime_ms": result.runtime_ms,
            "backend": result.backend,
        }
        self._write(self._path(job, ".json"), json.dumps(doc).encode())

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class JobRunner:
    def __init__(
        self,
        identity: Identity,
        chain: ChainService,
        results_dir: Path,
        offer: WantedOffer,
        *,
        slots: int = 1,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.identity, self.chain, self.offer = identity, chain, offer
        self.results = ResultStore(results_dir)
        self.blobs = BlobStore(results_dir.parent / "blobs")
        self._on_change = on_change
        self._log = logging.getLogger(f"{LOGGER_NAME}.jobs")
        self._limiter = trio.CapacityLimiter(max(1, slots))
        self._send_lock = trio.Lock()
        self._running: set[bytes] = set()
        self._sent: dict[tuple[bytes, str], int] = {}
        """(job or b"offer", step) -> the height we sent it at."""
        self._transport: Transport | None = None
        self._rtts_since: int | None = None
        """The height at which our first RTTs were measured (None until then)."""
        self._flagged: set[tuple[bytes, int]] = set()
        """(node, epoch) flagged from here; earlier epochs are dropped as the epoch moves."""
        self._anomaly_round = 0
        self._heads: collections.deque[tuple[int, int]] = collections.deque(maxlen=HEADS_KEPT)
        """(height, block time ms) of the heads seen: the block interval for uptime views."""
        self.counts: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(
        self, transport: Transport, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._transport = transport
        transport.set_request_handler(PROTOCOL_RESULT, self._serve_result)
        transport.set_request_handler(PROTOCOL_BLOB, self._serve_blob)
        async with trio.open_nursery() as nursery:
            task_status.started()
            seen = -1
            while True:
                engine = self.chain.engine
                if engine is not None and engine.chain.height != seen:
                    seen = engine.chain.height
                    if seen > 0:  # genesis has no block time of its own
                        self._heads.append((seen, engine.chain.head_time_ms))
                    await self._step(engine.chain.state, nursery)
                await trio.sleep(POLL_S)

    async def _step(self, state: LedgerState, nursery: trio.Nursery) -> None:
        me = self.identity.public_key
        await self._keep_offer(state)
        await self._heartbeat(state)
        anomaly_round = state.height // ANOMALY_EVERY_BLOCKS
        if anomaly_round != self._anomaly_round and me in state.operators:
            # by round, not `height % N == 0`: the heads we see may skip that very height
            self._anomaly_round = anomaly_round
            await self._flag_anomalies(state)
        for job, record in sorted(state.jobs.items()):
            if record.status not in (JobStatus.ASSIGNED, JobStatus.REVEALING):
                continue
            mine = next((r for r in record.replicas if r.node == me), None)
            if mine is None:
                continue
            stored = self.results.get(job)
            if record.status == JobStatus.ASSIGNED and not mine.committed:
                if stored is not None:
                    commitment = result_commitment(job, me, stored.digest, stored.salt)
                    await self._send_once(state, job, "commit", CommitResult, job_id=job,
                                          commitment=commitment,
                                          token=result_token(job, stored.digest))  # fmt: skip
                elif job not in self._running:
                    self._running.add(job)
                    nursery.start_soon(self._execute, job, record)
            elif record.status == JobStatus.REVEALING and not mine.revealed and stored is not None:
                await self._send_once(state, job, "reveal", RevealResult, job_id=job,
                                      digest=stored.digest, salt=stored.salt,
                                      runtime_ms=stored.runtime_ms)  # fmt: skip

    async def _keep_offer(self, state: LedgerState) -> None:
        me = self.identity.public_key
        if me not in state.operators:
            return
        have = state.offers.get(me)
        want = self.offer
        rtts = self.measured_rtts()
        # Same capacity: refresh only the RTTs, and rarely (each refresh is a transaction).
        if (
            have is not None
            and (have.gpus, have.region, have.price_per_gpu_hour)
            == (want.gpus, want.region, want.price_per_gpu_hour)
            and not self._rtts_due(state.height, have.height, have.rtt_ms, rtts)
        ):
            return
        if have is None and not want.gpus:
            return
        price = want.price_per_gpu_hour
        await self._send_once(state, b"offer", "offer", OfferCapacity, gpus=want.gpus,
                              region=want.region, price_per_gpu_hour=price,
                              rtt_ms=rtts)  # fmt: skip

    def _rtts_due(
        self, height: int, offered_at: int, offered: tuple[PeerRtt, ...], rtts: tuple[PeerRtt, ...]
    ) -> bool:
        """Whether to put `rtts` on chain in place of the `offered` ones (an offer made at
        `offered_at`): the first ones once ready (`_first_rtts_ready`); a node newly measured
        while the offer lists fewer than RTTS_MAX (new information, each node once); else a
        change, every RTT_REFRESH_BLOCKS at most."""
        if not rtts:
            return False
        if not offered:
            return self._first_rtts_ready(height, rtts)
        listed = {r.node for r in offered}
        if len(listed) < RTTS_MAX and any(r.node not in listed for r in rtts):
            return True
        return height - offered_at >= RTT_REFRESH_BLOCKS and rtts != offered

    def _first_rtts_ready(self, height: int, rtts: tuple[PeerRtt, ...]) -> bool:
        """Whether our first RTTs may go on chain: once every connected node (up to RTTS_MAX)
        is measured, or RTT_FIRST_WAIT_BLOCKS after the first was. Published at the first
        measurement, an offer carried one or two of its peers for the next 100 blocks."""
        if self._rtts_since is None:
            self._rtts_since = height
        transport = self._transport
        peers = transport.connected_peers() if transport is not None else frozenset()
        nodes = sum(self._other_node(peer) is not None for peer in peers)
        complete = len(rtts) >= min(nodes, RTTS_MAX)
        return complete or height - self._rtts_since >= RTT_FIRST_WAIT_BLOCKS

    def _other_node(self, peer: PeerId) -> bytes | None:
        """The account of `peer` if it is another node (not us, not a non-node peer id)."""
        account = account_of(peer)
        return account if account is not None and account != self.identity.public_key else None

    def measured_rtts(self) -> tuple[PeerRtt, ...]:
        """The transport's ping RTTs to other nodes (windowed minima), rounded up to RTT_STEP_MS
        (so a little jitter does not change the offer), the closest RTTS_MAX, sorted by node."""
        transport = self._transport
        if transport is None:
            return ()
        found = []
        for peer, ms in transport.peer_rtt_ms().items():
            account = self._other_node(peer)
            if account is not None:
                stepped = min(
                    RTT_MS_MAX, max(RTT_STEP_MS, math.ceil(ms / RTT_STEP_MS) * RTT_STEP_MS)
                )
                found.append(PeerRtt(account, stepped))
        closest = sorted(found, key=lambda r: (r.ms, r.node))[:RTTS_MAX]
        return tuple(sorted(closest, key=lambda r: r.node))

    async def _heartbeat(self, state: LedgerState) -> None:
        """Say we are alive every `heartbeat_blocks` blocks while we have an offer."""
        live = state.liveness.get(self.identity.public_key)
        if live is None or self.identity.public_key not in state.offers:
            return
        if state.height - live.last_heartbeat >= state.params.market.heartbeat_blocks:
            await self._send_once(state, b"heartbeat", "heartbeat", Heartbeat)

    async def _flag_anomalies(self, state: LedgerState) -> None:
        """Flag nodes whose runtimes do not fit their GPU class (node/anomaly.py), each at
        most once per epoch from here (the ledger bounds flags per operator too)."""
        me = self.identity.public_key
        # The samples are read here, on the trio thread: the next block changes the ledger
        # state in place, so a worker thread must not walk it. Only the numpy part goes out.
        samples = samples_from_state(state)
        found = await trio.to_thread.run_sync(anomalies_among, samples, (me,))
        self._flagged = {k for k in self._flagged if k[1] == state.epoch}
        for anomaly in found:
            key = (anomaly.node, state.epoch)
            if key in self._flagged or is_watched(state, anomaly.node):
                continue
            self._flagged.add(key)
            log_event(self._log, "runtime_anomaly", {
                "node": anomaly.node.hex()[:16], "gpu_class": anomaly.gpu_class,
                "typical_log2_ratio": round(anomaly.typical, 2),
                "class_log2_ratio": round(anomaly.class_typical, 2), "samples": anomaly.samples,
            }, logging.WARNING)  # fmt: skip
            await self._send_once(state, anomaly.node, "flag", FlagNode, node=anomaly.node,
                                  job_id=anomaly.evidence_job)  # fmt: skip

    def block_ms(self) -> float:
        """The chain's mean block interval over the heads this node has seen lately (the
        engine's empty-block interval until two heads are known)."""
        seen = self._heads
        if len(seen) >= 2 and seen[-1][0] > seen[0][0]:
            return (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])
        return float(self.chain.settings.engine.empty_block_ms)

    # -- running a replica -----------------------------------------------------------------------

    async def _execute(self, job: bytes, record: JobRecord) -> None:
        terms = record.terms
        deadline_s = terms.max_hours_milli * MS_PER_MILLI_HOUR / 1000
        fields: dict[str, object] = {"job": job.hex()[:16], "kind": terms.kind}
        try:
            inputs = await self._inputs(terms.inputs)
            if inputs is None:
                log_event(self._log, "job_inputs_missing", fields, logging.WARNING)
                return  # asked again at the next block, while the commit window lasts
            async with self._limiter:
                log_event(self._log, "job_started", fields)
                done = await trio.to_thread.run_sync(
                    lambda: execute(terms.kind, terms.params, deadline_s=deadline_s, inputs=inputs)
                )
            result = StoredResult(done.digest, secrets.token_bytes(32), done.runtime_ms,
                                  done.backend)  # fmt: skip
            await trio.to_thread.run_sync(self.results.put, job, result, done.output)
            self._count("jobs_executed")
            log_event(self._log, "job_executed", {**fields, "runtime_ms": done.runtime_ms,
                      "backend": done.backend, "digest": done.digest.hex()[:16]})  # fmt: skip
        except (JobParamsError, DeadlineExceeded) as exc:
            # Nothing to commit to: the ledger's commit window turns this into a no-show,
            # which is the truth (the job asked for work this node cannot deliver).
            self._count("jobs_refused")
            log_event(self._log, "job_refused", {**fields, "reason": str(exc)[:200]},
                      logging.WARNING)  # fmt: skip
        finally:
            self._running.discard(job)
            self._on_change()

    async def _inputs(self, names: tuple[bytes, ...]) -> list[bytes] | None:
        """The job's input blobs in order: ours, or fetched from a peer and hash-checked;
        None if some peer did not have one."""
        found = []
        for digest in names:
            data = await trio.to_thread.run_sync(self.blobs.get, digest)
            if data is None:
                data = await self._fetch_blob(digest)
            if data is None:
                return None
            found.append(data)
        return found

    async def _fetch_blob(self, digest: bytes) -> bytes | None:
        transport = self._transport
        if transport is None:
            return None
        for peer in sorted(transport.connected_peers()):
            try:
                data = await transport.request(
                    peer, PROTOCOL_BLOB, digest, timeout_ms=FETCH_TIMEOUT_MS
                )
            except (RequestFailed, MessageTooLarge):
                continue
            accepted: bool = await trio.to_thread.run_sync(self.blobs.accept, digest, data)
            if accepted:
                self._count("blobs_fetched")
                return data
        return None

    async def _serve_blob(self, peer: PeerId, data: bytes) -> bytes:
        if len(data) != 32:
            return b""
        return await trio.to_thread.run_sync(self.blobs.get, data) or b""

    # -- transactions ----------------------------------------------------------------------------

    async def _send_once(
        self, state: LedgerState, key: bytes, step: str, kind: type[LedgerTx], **fields: Any
    ) -> None:
        """Send our transaction for this step unless one went out in the last RESEND_BLOCKS
        blocks (it may still be on its way into a block)."""
        sent = self._sent.get((key, step))
        if sent is not None and state.height < sent + RESEND_BLOCKS:
            return
        engine = self.chain.engine
        if engine is None:
            return
        async with self._send_lock:
            me = self.identity.public_key
            nonce = engine.mempool.next_nonce(me, engine.chain.state)
            record = kind(nonce=nonce, fee=engine.chain.state.params.min_fee, **fields)
            data = sign(record, self.identity, engine.chain.chain_id).encode()
            verdict = await self.chain.submit_tx(data)
        self._sent[(key, step)] = state.height
        self._count(f"{step}_sent" if verdict.accepted else f"{step}_refused")
        quiet = logging.DEBUG if step == "heartbeat" else logging.INFO
        level = quiet if verdict.accepted else logging.WARNING
        log_event(self._log, f"{step}_sent", {"job": key.hex()[:16], "accepted": verdict.accepted,
                  "code": verdict.code, "reason": verdict.reason[:200]}, level)  # fmt: skip

    # -- results ---------------------------------------------------------------------------------

    async def _serve_result(self, peer: PeerId, data: bytes) -> bytes:
        if len(data) != 32:
            return b""
        output = await trio.to_thread.run_sync(self.results.output, data)
        self._count("results_served" if output else "results_missing")
        return output or b""

    async def fetch_result(self, job: bytes) -> bytes | None:
        """A settled job's result array (.npy bytes), checked against the committed digest:
        from our own store if we ran it, else from each winning replica in turn."""
        engine = self.chain.engine
        record = engine.chain.state.jobs.get(job) if engine is not None else None
        if record is None or record.status != JobStatus.SETTLED:
            return None
        winners = [r.node for r in record.replicas if r.digest == record.result_digest]
        local = await trio.to_thread.run_sync(self.results.output, job)
        candidates: list[bytes | None] = [None] if local else []
        candidates += [n for n in winners if n != self.identity.public_key]
        for node in candidates:
            data = local if node is None else await self._ask(node, job)
            if data and self._matches(record, data):
                return data
        return None

    async def _ask(self, node: bytes, job: bytes) -> bytes | None:
        transport = self._transport
        if transport is None:
            return None
        try:
            return await transport.request(
                peer_of(node), PROTOCOL_RESULT, job, timeout_ms=FETCH_TIMEOUT_MS
            )
        except (RequestFailed, MessageTooLarge):
            self._count("result_fetch_failed")
            return None

    def _matches(self, record: JobRecord, data: bytes) -> bool:
        try:
            ok = output_digest(record.terms.kind, data) == record.result_digest
        except DecodeError:
            ok = False
        if not ok:
            self._count("results_rejected")
        return ok

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
