"""ChainService: the edge around the pure `ConsensusEngine` in a real node (trio).

It owns the node's chain store, the engine and the three chain protocols:
- `PROTOCOL_CONSENSUS`: frames from other nodes become `FrameIn` (acknowledged with b"ok" as
  soon as they are queued); the engine's `SendFrame`s leave through per-peer senders.
- `PROTOCOL_SYNC`: served from the store; our `RequestSync`s run as tasks whose replies come
  back to the engine as `SyncReply`.
- `PROTOCOL_TX` (and `submit_tx`, which the loopback status endpoint's POST /tx calls): a
  transaction becomes `ClientTx` with a fresh ticket; the engine's `TxVerdict` answers it.

One task steps the engine (inputs from a bounded inbox, `EngineTick` at `wake_at_ms`) and
carries out each `EngineReady` strictly in order. Persist, then send: a `Persist` or
`CommitBlock` is durable in SQLite (the write returned, fsync'ed) before any later action of
the same step is even queued for sending, so a member restarted after SIGKILL never
contradicts a vote it sent and never loses a block it reported committed. Sends and syncs
never block the loop: they are queued to their own tasks, bounded, with drops counted.

Restart and wiped disks: see `node.chain_restore`. A fresh store (a new node, or a wiped
disk) starts the engine with `forgot_votes`: it votes nowhere until block sync has brought it
to a peer's head, and then only where it cannot have voted before the wipe (the engine's rule).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

from consensus.bft.messages import (
    FRAME_NAMES,
    PROTOCOL_CONSENSUS,
    PROTOCOL_SYNC,
    PROTOCOL_TX,
    SYNC_BLOCKS_MAX,
    BlockBatch,
    CommittedBlock,
    SyncRequest,
    TxReply,
    encode_batch,
    frame_tag,
)
from consensus.bft.tendermint import Persist
from consensus.engine import (
    ClientTx,
    CommitBlock,
    ConsensusEngine,
    EngineInput,
    EngineReady,
    EngineTick,
    FrameIn,
    RequestSync,
    SendFrame,
    SyncReply,
    TxVerdict,
)
from node.chain_restore import ChainSettings, open_chain, to_logged
from node.chain_views import account_view, block_tx_ids, ledger_view
from node.logs import LOGGER_NAME, log_event
from node.peer_sender import PeerSenders
from node.store import NodeStore, StoredBlock, StoreError
from p2p.errors import DecodeError
from p2p.identity import Identity, peer_id_from_public_key, public_key_from_peer_id, short_peer
from p2p.transport import MessageTooLarge, PeerId, RequestFailed, Transport

INBOX_MAX = 1024
TX_WAIT_S = 5.0
SYNC_TIMEOUT_MS = 5_000
SYNCS_CONCURRENT_MAX = 2
SYNC_REPLY_BYTES_MAX = 3 * 1024 * 1024
"""Below the transport's 4 MiB request limit, with room for the batch's framing."""
MEMBER_DIAL_INTERVAL_S = 2.0
NOT_YET = 1 << 62
"""`may_vote_from` of an engine that forgot its votes and has not caught up yet."""
_WARN_EVENTS = frozenset({"frame_refused", "sync_refused", "sync_block_refused", "equivocation"})
_T = TypeVar("_T")

Dialer = Callable[[PeerId, tuple[str, ...]], Awaitable[None]]
"""Dial a peer at one of its addresses (the runtime's, which honours the traffic policy)."""


@functools.lru_cache(maxsize=4_096)
def peer_of(account: bytes) -> PeerId:
    return peer_id_from_public_key(account)


@functools.lru_cache(maxsize=4_096)
def account_of(peer: PeerId) -> bytes | None:
    """The account key of a peer: our peer ids embed the ed25519 key (None for others)."""
    try:
        return public_key_from_peer_id(peer)
    except ValueError:
        return None


def _printable(text: str, limit: int) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:limit]


class _Waiter:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.verdict: TxVerdict | None = None


class ChainService:
    def __init__(
        self,
        identity: Identity,
        settings: ChainSettings,
        *,
        clock_ms: Callable[[], int],
        on_change: Callable[[], None] = lambda: None,
        addrs_of: Callable[[bytes], tuple[str, ...]] = lambda key: (),
        dial: Dialer | None = None,
    ) -> None:
        self.identity, self.settings, self.clock_ms = identity, settings, clock_ms
        self._on_change, self._addrs_of, self._dial = on_change, addrs_of, dial
        self._log = logging.getLogger(f"{LOGGER_NAME}.chain")
        self.engine: ConsensusEngine | None = None
        self.store: NodeStore | None = None
        self.fresh = False
        self._store_lock = trio.Lock()
        self._inbox_send, self._inbox = trio.open_memory_channel[EngineInput](INBOX_MAX)
        self._tickets = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._syncing: set[PeerId] = set()
        self._dialling: set[PeerId] = set()
        self._sync_limiter = trio.CapacityLimiter(SYNCS_CONCURRENT_MAX)
        self._senders: PeerSenders | None = None
        self._transport: Transport | None = None
        self.counts: dict[str, int] = {}
        self._closed = False
        self._durable = (0, b"")
        """Height and hash of the newest block the store holds (the engine may be one step
        ahead while the write runs): what the status reports as committed."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(
        self, transport: Transport, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the store, rebuild the chain, serve the protocols and run the engine until
        cancelled. Reports started once the handlers are set."""
        s = self.settings
        restored = await trio.to_thread.run_sync(open_chain, s.data_dir, s.genesis, self.clock_ms())
        self.store, self.fresh = restored.store, restored.fresh
        self._durable = (restored.chain.height, restored.chain.head_hash)
        try:
            self.engine = ConsensusEngine(
                restored.chain, self.identity, s.engine, self.clock_ms(),
                restored=restored.restored, forgot_votes=restored.fresh,
            )  # fmt: skip
            log_event(
                self._log,
                "chain_opened",
                {
                    "store": str(restored.store.path),
                    "height": restored.chain.height,
                    "head": restored.chain.head_hash.hex()[:16],
                    "replayed": restored.replayed,
                    "restored_statements": len(restored.restored),
                    "fresh_store": restored.fresh,
                },
            )
            async with trio.open_nursery() as nursery:
                self._transport = transport
                self._senders = PeerSenders(
                    transport, PROTOCOL_CONSENSUS, nursery, batch=encode_batch
                )
                transport.set_request_handler(PROTOCOL_CONSENSUS, self._serve_consensus)
                transport.set_request_handler(PROTOCOL_SYNC, self._serve_sync)
                transport.set_request_handler(PROTOCOL_TX, self._serve_tx)
                nursery.start_soon(self._keep_members_connected, nursery)
                task_status.started()
                await self._engine_loop(nursery)
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                async with self._store_lock:
                    restored.store.close()

    # -- the engine loop -------------------------------------------------------------------------

    async def _engine_loop(self, nursery: trio.Nursery) -> None:
        engine = self._engine()
        # The first step returns what the constructor decided too (restored statements may
        # complete a step at once), so nothing is lost or sent unpersisted.
        wake_at_ms = 0
        while True:
            inp: EngineInput = EngineTick()
            with trio.move_on_after(max(0, wake_at_ms - self.clock_ms()) / 1000):
                inp = await self._inbox.receive()
            ready = engine.step(self.clock_ms(), inp)
            await self._execute(ready, nursery)
            wake_at_ms = ready.wake_at_ms
            self._on_change()

    async def _execute(self, ready: EngineReady, nursery: trio.Nursery) -> None:
        """Strictly in order; a store write returns (durable) before the next action runs."""
        store, senders = self._require_store(), self._require_senders()
        for act in ready.actions:
            if isinstance(act, Persist):
                await self._db(store.log_vote, to_logged(act.statement))
            elif isinstance(act, CommitBlock):
                await self._db(self._commit, store, act)
                self._durable = (act.height, act.block_hash)
            elif isinstance(act, SendFrame):
                senders.send(peer_of(act.to), act.frame)
                self._count(f"sent_{FRAME_NAMES.get(frame_tag(act.frame), 'other')}")
            elif isinstance(act, RequestSync):
                if peer_of(act.to) not in self._syncing:
                    self._syncing.add(peer_of(act.to))
                    nursery.start_soon(self._sync, act)
            elif isinstance(act, TxVerdict):
                waiter = self._waiting.get(act.ticket)
                if waiter is not None:
                    waiter.verdict = act
                    waiter.done.set()
            else:  # a new kind of action this edge does not know: never skip one silently
                raise AssertionError(f"unknown engine action {type(act).__name__}")
        for name, fields in ready.events:
            if name == "block_committed":
                self._count("rounds_failed", int(fields.get("round", 0)))
            level = logging.WARNING if name in _WARN_EVENTS else logging.INFO
            log_event(self._log, name, dict(fields), level)

    @staticmethod
    def _commit(store: NodeStore, act: CommitBlock) -> None:
        block = StoredBlock(act.height, act.block_hash, act.block, act.cert, act.state_root)
        # votes at heights up to the committed one are no longer needed; never above it
        store.commit_block(block, state=act.snapshot, prune_votes_below=act.height + 1)

    async def _db(self, fn: Callable[..., _T], *args: object) -> _T:
        """One store call at a time, in a worker thread (the store allows one thread at a
        time); not abandoned on cancellation, so a write that started completes."""
        async with self._store_lock:
            return await trio.to_thread.run_sync(fn, *args)

    # -- block sync ------------------------------------------------------------------------------

    async def _sync(self, act: RequestSync) -> None:
        peer = peer_of(act.to)
        try:
            async with self._sync_limiter:
                reply = await self._require_transport().request(
                    peer,
                    PROTOCOL_SYNC,
                    SyncRequest(act.start, act.end).encode(),
                    timeout_ms=SYNC_TIMEOUT_MS,
                    keep_stream=True,  # a member behind asks every second: no negotiation each
                )
        except (RequestFailed, MessageTooLarge) as exc:
            self._count("sync_failed")
            log_event(
                self._log,
                "sync_failed",
                {"peer": short_peer(peer), "reason": str(exc)[:200]},
                logging.DEBUG,
            )
            return
        finally:
            self._syncing.discard(peer)
        self._count("sync_replies")
        await self._inbox_send.send(SyncReply(act.to, reply))

    async def _serve_sync(self, peer: PeerId, data: bytes) -> bytes:
        if self._closed:
            return b"closing"
        store = self._require_store()
        try:
            req = SyncRequest.decode(data, max_bytes=64)
        except DecodeError:
            self._count("sync_requests_refused")
            return BlockBatch((), await self._db(store.head_height)).encode()
        end = min(req.end, req.start + SYNC_BLOCKS_MAX - 1)
        try:
            blocks, head = await self._db(self._read_blocks, store, req.start, end)
        except StoreError:  # closed under us: the node is stopping
            return b"closing"
        self._count("sync_requests_served")
        return BlockBatch(tuple(CommittedBlock(b.block, b.cert) for b in blocks), head).encode()

    @staticmethod
    def _read_blocks(store: NodeStore, start: int, end: int) -> tuple[list[StoredBlock], int]:
        blocks = store.blocks(start, end, limit=SYNC_BLOCKS_MAX, bytes_max=SYNC_REPLY_BYTES_MAX)
        return blocks, store.head_height()

    # -- frames and transactions -----------------------------------------------------------------

    async def _serve_consensus(self, peer: PeerId, data: bytes) -> bytes:
        sender = account_of(peer)
        if sender is None or self._closed:
            return b"refused"
        try:
            self._inbox_send.send_nowait(FrameIn(sender, data))
        except trio.WouldBlock:
            self._count("frames_dropped_inbox_full")  # the sender's core re-sends what matters
            return b"busy"
        return b"ok"

    async def _serve_tx(self, peer: PeerId, data: bytes) -> bytes:
        v = await self.submit_tx(data)
        return TxReply(int(v.accepted), _printable(v.code, 64), _printable(v.reason, 400)).encode()

    async def submit_tx(self, data: bytes) -> TxVerdict:
        """Hand a client's transaction to the engine; its verdict (or a timeout)."""
        (verdict,) = await self.submit_txs([data])
        return verdict

    async def submit_txs(self, batch: list[bytes]) -> list[TxVerdict]:
        """Hand a client's transactions to the engine in their order (one sender's nonces
        must arrive in sequence) and wait for all the verdicts; those not given within
        TX_WAIT_S are timeouts."""
        tickets = [next(self._tickets) for _ in batch]
        waiters = [_Waiter() for _ in batch]
        self._waiting.update(zip(tickets, waiters, strict=True))
        try:
            with trio.move_on_after(TX_WAIT_S):
                for data, ticket in zip(batch, tickets, strict=True):
                    await self._inbox_send.send(ClientTx(data, ticket))
                for waiter in waiters:
                    await waiter.done.wait()
        finally:
            for ticket in tickets:
                del self._waiting[ticket]
        late = f"no verdict within {TX_WAIT_S:.0f} s"
        return [
            w.verdict if w.verdict is not None else TxVerdict(t, False, "timeout", late)
            for t, w in zip(tickets, waiters, strict=True)
        ]

    # -- keeping in touch with the committee -----------------------------------------------------

    async def _keep_members_connected(self, nursery: trio.Nursery) -> None:
        """Dial committee members we have no link to, at addresses their capacity
        announcements carry: consensus frames and syncs travel on direct streams only."""
        transport, me = self._require_transport(), self.identity.public_key
        while True:
            connected = transport.connected_peers()
            for member in self._engine().chain.committee.members:
                peer = peer_of(member)
                if member == me or peer in connected or peer in self._dialling:
                    continue
                addrs = self._addrs_of(member)
                if addrs and self._dial is not None:
                    self._dialling.add(peer)
                    nursery.start_soon(self._dial_member, peer, addrs)
            await trio.sleep(MEMBER_DIAL_INTERVAL_S)

    async def _dial_member(self, peer: PeerId, addrs: tuple[str, ...]) -> None:
        try:
            if self._dial is not None:
                await self._dial(peer, addrs)
        finally:
            self._dialling.discard(peer)

    # -- views -----------------------------------------------------------------------------------

    @property
    def height(self) -> int:
        """The last height committed to disk (what /status reports as the chain's height)."""
        return self._durable[0]

    def status(self) -> dict[str, object]:
        engine = self.engine
        if engine is None:
            return {"state": "opening"}
        snap = engine.status()
        state, machine = engine.chain.state, engine.machine
        snap.update(
            {
                "state": "running",
                "height": self._durable[0],
                "head_hash": self._durable[1].hex(),
                "engine_height": engine.chain.height,
                "chain_id": engine.chain.chain_id.decode("ascii", "replace"),
                "epoch": state.epoch,
                "epoch_blocks": state.params.epoch_blocks,
                "min_fee": state.params.min_fee,
                "proposer": machine.proposer.hex() if machine is not None else None,
                "last_commit_age_ms": self.clock_ms() - engine.last_commit_ms,
                "may_vote_from": engine.may_vote_from or None,
                "awaiting_sync_to_vote": engine.may_vote_from >= NOT_YET,
                "fresh_store": self.fresh,
                "service": dict(sorted(self.counts.items())),
                "frames": self._require_senders().stats.as_dict() if self._senders else {},
            }
        )
        return snap

    def account(self, account: bytes) -> dict[str, object] | None:
        return account_view(self._engine().chain.state, account)

    def ledger(self, limit: int) -> dict[str, object]:
        return ledger_view(self._engine().chain.state, limit)

    def tx_pending(self, tx_id: bytes) -> bool:
        """Whether the transaction with this id waits in our mempool."""
        pending = self._engine().mempool.pending()
        return any(hashlib.sha256(data).digest() == tx_id for data in pending)

    async def block(self, height: int) -> dict[str, object] | None:
        """A committed block's hash, state root and transaction ids, from the store (None if
        not stored)."""
        if self._closed:
            return None
        found = await self._db(self._read_block, self._require_store(), height)
        if found is None:
            return None
        stored, txs = found
        return {
            "height": stored.height,
            "hash": stored.block_hash.hex(),
            "state_root": stored.state_root.hex(),
            "block_bytes": len(stored.block),
            "txs": txs,
        }

    @staticmethod
    def _read_block(store: NodeStore, height: int) -> tuple[StoredBlock, list[str]] | None:
        """The stored block and its transaction ids (decoded in the worker thread, not on
        the trio loop: a full block holds thousands)."""
        stored = store.block(height)
        return None if stored is None else (stored, block_tx_ids(stored.block))

    # -- helpers ---------------------------------------------------------------------------------

    def _count(self, key: str, k: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + k

    def _engine(self) -> ConsensusEngine:
        if self.engine is None:
            raise RuntimeError("the chain service is not running")  # our bug
        return self.engine

    def _require_store(self) -> NodeStore:
        if self.store is None:
            raise RuntimeError("the chain store is not open")  # our bug
        return self.store

    def _require_senders(self) -> PeerSenders:
        if self._senders is None:
            raise RuntimeError("the chain service is not running")  # our bug
        return self._senders

    def _require_transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("the chain service is not running")  # our bug
        return self._transport
