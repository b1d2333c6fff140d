"""The consensus engine: one node's part in ordering and committing blocks, as a pure state
machine (`step(now_ms, input) -> EngineReady`).

It composes the committed chain (`consensus.chain`), the mempool, and, while this node sits
on the committee, one Tendermint `HeightMachine` per height. It also keeps the node in step
with the network: statements from a height ahead of ours mean we are behind, so we ask their
sender for the blocks we miss (block sync); statements from a height behind ours mean a
member is behind, so we push it the blocks it misses; a follower (not on the committee) asks
a member for new blocks every `sync_interval_ms`. Every block enters the chain only with a
certificate checked against the committee recorded in state.

The runtime (or the simulator) carries out `EngineReady.actions` in order. `Persist` and
`CommitBlock` must be durable before any later `SendFrame` leaves: that is how a restarted
member never contradicts a vote it sent, and how a crash never loses a committed block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consensus.bft.block import Block, block_hash_of, decode_block
from consensus.bft.machine_types import Step
from consensus.bft.mempool import Mempool
from consensus.bft.messages import (
    RELAY_MAX,
    SYNC_BLOCKS_MAX,
    TAG_BATCH,
    TAG_BLOCKS,
    TAG_PROPOSAL,
    TAG_RELAY,
    TAG_TXS,
    TAG_VOTE,
    BlockBatch,
    CommittedBlock,
    Relay,
    TxBatch,
    decode_frame,
    encode_frame,
    encode_proposal_frame,
    split_batch,
    split_proposal_payload,
)
from consensus.bft.tendermint import (
    App,
    Broadcast,
    Decide,
    EvidenceFound,
    HeightMachine,
    Persist,
    Statement,
)
from consensus.bft.votes import NIL, PROPOSAL_SLOT, Proposal, Vote, decode_statement
from consensus.chain import Chain, InvalidBlock, VerifiedCommit
from consensus.engine_types import (
    ClientTx,
    CommitBlock,
    EngineAction,
    EngineConfig,
    EngineInput,
    EngineReady,
    EngineTick,
    FrameIn,
    RequestSync,
    SendFrame,
    SyncReply,
    TxVerdict,
)
from consensus.ledger.errors import InvalidTransaction
from consensus.ledger.evidence import Equivocation
from consensus.vote_hub import VoteHub
from p2p.errors import BadSignature, DecodeError
from p2p.wire import Signed, Signer, sign

FUTURE_BYTES_MAX = 16 * 1024 * 1024
"""Statements (and proposed blocks) of the next height held until we get there."""
REPORT_AGAIN_BLOCKS = 20
"""An offender reported at height h is reported again (if still unjailed) from h + this."""
SLOT_HEIGHTS_KEPT = 16
"""Heights back for which first statements are kept to catch equivocation in late relays."""
VERIFIED_MAX = 8_192
"""Verified statements remembered by their bytes (a few MiB at most)."""
FORWARD_BATCH_MAX = 1_000
FORWARD_BATCH_BYTES = 512 * 1024
"""Transactions and bytes per forwarded frame (a backlog goes as several frames)."""

__all__ = [
    "ClientTx",
    "CommitBlock",
    "ConsensusEngine",
    "EngineAction",
    "EngineConfig",
    "EngineInput",
    "EngineReady",
    "EngineTick",
    "FrameIn",
    "RequestSync",
    "SendFrame",
    "SyncReply",
    "TxVerdict",
]

# -- the engine ---------------------------------------------------------------------------------


class ConsensusEngine(App):
    def __init__(
        self,
        chain: Chain,
        signer: Signer,
        config: EngineConfig,
        now_ms: int,
        *,
        restored: list[Statement] | None = None,
        may_vote_from: int = 0,
        forgot_votes: bool = False,
        decode_statement_fn: Callable[[bytes], Signed[Any]] | None = None,
    ) -> None:
        """`restored`: our statements from the store (heights above the head).

        `forgot_votes`: the node lost its store (a wiped disk) and may have voted before at
        heights it cannot know. It then votes at no height until a peer's blocks bring it up
        to that peer's head h, and from h + 2 on: heights up to h are decided, and at h + 1
        it may have voted before the wipe, so it stays silent there. (A member that also
        lost the head it had reached could still contradict itself if every peer it syncs
        from is behind it; that needs a Byzantine majority of its sync peers.)
        `may_vote_from`: the least height at which we vote (tests)."""
        self.chain, self.signer, self.config = chain, signer, config
        self.me = signer.public_key
        self.mempool = Mempool(chain.chain_id)
        self._restored = list(restored or [])
        self.may_vote_from = 1 << 62 if forgot_votes else may_vote_from
        self._forgot = forgot_votes
        self._caught_up_with: set[bytes] = set()
        """Members whose head we reached while `_forgot`: voting resumes once they weigh
        more than the committee tolerates as Byzantine, so one lying peer cannot cause it."""
        chain_id = chain.chain_id
        self._decode_statement: Callable[[bytes], Signed[Any]] = decode_statement_fn or (
            lambda data: decode_statement(data, chain_id)
        )
        self._ready = EngineReady()
        self._recent: dict[int, CommittedBlock] = {}
        self._future: list[tuple[bytes, bytes]] = []
        self._future_bytes = 0
        self._seen: set[bytes] = set()
        """Statements of this height already handled: a relayed copy is skipped unverified."""
        self._verified: dict[bytes, Signed[Any]] = {}
        """Statements whose signature was checked, by their exact bytes: members re-send their
        votes on a timer and relay each other's, so at n = 16 a node met each vote many times
        over and spent most of its consensus CPU verifying copies it had verified already.
        Bounded by VERIFIED_MAX (cleared when full)."""
        self._relay: list[bytes] = []
        self._next_relay_ms = now_ms + config.bft.rebroadcast_ms
        self._relay_ticks = 0
        """Relay ticks since the last commit: like re-sends, they back off while a height
        stalls (`BftConfig.rebroadcast_after`)."""
        self._forward: dict[bytes, None] = {}
        """Client transactions to forward at the next tick, in order, each once."""
        self._next_forward_ms = 0
        self._client_pending: dict[bytes, int] = {}
        """Client transactions we forwarded and have not seen committed -> the height we
        were at when we last forwarded them (see `_reforward`)."""
        self._next_sync_ms = now_ms
        self._sync_turn = 0
        self._pushed_ms: dict[bytes, int] = {}
        self._asked_ms: dict[bytes, int] = {}
        self._slots: dict[int, dict[tuple[bytes, int, int], bytes]] = {}
        """height -> (signer, round, kind) -> the first statement seen for that slot."""
        self._reported: set[tuple[Any, ...]] = set()
        self._reported_at: dict[bytes, int] = {}
        self.counts: dict[str, int] = {}
        self.last_commit_ms = now_ms
        self._last_height_ms = 0
        """How long the last height took, commit to commit (paces `_slow`)."""
        self.machine: HeightMachine | None = None
        self._hub: VoteHub | None = None
        """This height's vote routing (`consensus.vote_hub`); None: all-to-all."""
        self._witness: list[bytes] = []
        """With a hub: the first proposal and hub-signed votes of each slot this height, sent
        to the next proposer as the height ends (`consensus.vote_hub`)."""
        self._now = now_ms
        self._new_height(now_ms)

    # -- the one entry point ---------------------------------------------------------------

    def step(self, now_ms: int, inp: EngineInput) -> EngineReady:
        """Handle one input. The first step also returns what the constructor decided (a
        restart with persisted statements may act, or even decide, at once)."""
        self._now = now_ms
        if isinstance(inp, FrameIn):
            self._on_frame(now_ms, inp.sender, inp.data)
        elif isinstance(inp, ClientTx):
            self._on_client_tx(now_ms, inp)
        elif isinstance(inp, SyncReply):
            self._on_blocks(now_ms, inp.sender, inp.data)
        if self.machine is not None:
            self.machine.on_time(now_ms)
            self._drain(now_ms)
        self._on_time(now_ms)
        ready, self._ready = self._ready, EngineReady()
        ready.wake_at_ms = self._next_wake(now_ms)
        return ready

    # -- App: what the height machine asks of us --------------------------------------------

    def validate(self, block: Block, block_hash: bytes) -> str | None:
        problem = self.chain.check_block(block)
        if problem is not None:
            return problem
        if block.time_ms > self._now + self.config.clock_drift_max_ms:
            return f"block time {block.time_ms} is ahead of our clock {self._now}"
        if len(block.txs) > self.config.block_txs_max:
            return f"{len(block.txs)} transactions exceed {self.config.block_txs_max}"
        for data in block.txs:
            try:
                self.mempool.verify(data, self.chain.state)
            except InvalidTransaction as exc:
                return f"transaction does not verify: {exc}"
        return None

    def make_block(self, now_ms: int, round_: int, round_started_ms: int) -> Block | int:
        cfg, state = self.config, self.chain.state
        txs = self.mempool.batch(state, cfg.block_txs_max, cfg.block_bytes_max)
        if not txs and round_ == 0 and now_ms < round_started_ms + cfg.empty_block_ms:
            return round_started_ms + cfg.empty_block_ms
        time_ms = max(now_ms, self.chain.head_time_ms + 1)
        c = self.chain
        return Block(c.height + 1, c.head_hash, c.head_root, time_ms, self.me, txs)

    # -- frames from members ----------------------------------------------------------------

    def _on_frame(self, now_ms: int, sender: bytes, data: bytes, *, nested: bool = False) -> None:
        try:
            tag, payload = decode_frame(data)
            if tag == TAG_VOTE:
                self._on_statement(now_ms, sender, payload, None)
            elif tag == TAG_PROPOSAL:
                env, block, pol = split_proposal_payload(payload)
                for vote in pol:
                    if vote not in self._seen:
                        self._on_statement(now_ms, sender, vote, None, relayed=True)
                self._on_statement(now_ms, sender, env, block)
            elif tag == TAG_TXS:
                for tx in TxBatch.decode(payload, max_bytes=len(payload)).txs:
                    self._admit(tx)
                if self.machine is not None and len(self.mempool):
                    self.machine.nudge(now_ms)  # a proposer waiting for something proposes now
                    self._drain(now_ms)
            elif tag == TAG_BLOCKS:
                self._on_blocks(now_ms, sender, payload)
            elif tag == TAG_BATCH and not nested:
                for inner in split_batch(payload):
                    self._on_frame(now_ms, sender, inner, nested=True)
            elif tag == TAG_RELAY:
                for env in Relay.decode(payload, max_bytes=len(payload)).statements:
                    if env not in self._seen:
                        self._on_statement(now_ms, sender, env, None, relayed=True)
        except (DecodeError, BadSignature) as exc:
            self._count("frames_refused")
            self._event("frame_refused", reason=str(exc)[:200])

    def _on_statement(
        self, now_ms: int, sender: bytes, env: bytes, block: bytes | None, *, relayed: bool = False
    ) -> None:
        signed = self._verified_statement(env)
        rec = signed.record
        h = self.chain.height + 1
        first_of_slot = self._check_slot(signed, env)
        if relayed:
            if rec.height != h or self.machine is None:
                return  # a relay of another height only serves to catch equivocation
            self._seen.add(env)  # only now: a copy that comes back at our height still counts
            if isinstance(rec, Proposal):
                self.machine.on_relayed_proposal(signed, env)
            else:
                if self._hub is not None and signed.signer != self.me:
                    self._hub_receives(now_ms, signed, env, first_of_slot, direct=False)
                self.machine.on_vote(signed, env, now_ms)
            self._drain(now_ms)
            return
        if rec.height > h:
            self._behind(now_ms, sender, rec.height)
            size = len(env) + len(block or b"")
            if (
                rec.height == h + 1
                and signed.signer in self.chain.committee
                and len(self._future) < self.config.future_statements_max
                and self._future_bytes + size <= FUTURE_BYTES_MAX
            ):
                self._future.append((env, block or b""))
                self._future_bytes += size
            return
        if rec.height < h:
            self._help(now_ms, sender, rec.height)
            return
        m = self.machine
        if m is None:
            return
        if signed.signer != self.me and env not in self._seen:
            self._seen.add(env)
            self._relay.append(env)
            if self._hub is not None:
                self._hub_receives(now_ms, signed, env, first_of_slot, direct=True)
        if isinstance(rec, Vote):
            m.on_vote(signed, env, now_ms)
        elif isinstance(rec, Proposal) and block is not None:
            if block_hash_of(block) != rec.block_hash:
                self._count("proposal_hash_mismatch")
                return
            m.on_proposal(signed, env, decode_block(block), block, rec.block_hash, now_ms)
        self._drain(now_ms)

    def _verified_statement(self, env: bytes) -> Signed[Any]:
        """`env` decoded and its signature checked, once per distinct envelope."""
        signed = self._verified.get(env)
        if signed is None:
            signed = self._decode_statement(env)
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.clear()
            self._verified[env] = signed
        return signed

    def _drain(self, now_ms: int) -> None:
        m = self.machine
        while m is not None:
            actions = m.drain()
            if not actions:
                return
            for act in actions:
                if isinstance(act, Persist):
                    self._ready.actions.append(act)
                elif isinstance(act, Broadcast):
                    if act.vote is not None and self._hub is not None:
                        self._hub_sends(now_ms, act.envelope, act.vote)
                        continue
                    frame = (
                        encode_frame(TAG_VOTE, act.envelope)
                        if act.block is None
                        else encode_proposal_frame(act.envelope, act.block, act.pol)
                    )
                    self._to_members(frame)
                elif isinstance(act, EvidenceFound):
                    self._report(act, None)
                elif isinstance(act, Decide):
                    self._commit(now_ms, act)
                    m = self.machine
                    break

    # -- committing -------------------------------------------------------------------------

    def _commit(self, now_ms: int, d: Decide) -> None:
        cert_bytes = d.cert.encode()
        commit = VerifiedCommit(d.block, d.block_bytes, d.cert.block_hash, d.cert, cert_bytes)
        self._apply(now_ms, commit)

    def _apply(self, now_ms: int, commit: VerifiedCommit) -> None:
        chain = self.chain
        outcome = chain.apply(commit, self.mempool.decoder(chain.state))
        self.mempool.remove_committed(commit.block.txs, chain.state)
        h = chain.height
        snapshot = chain.snapshot() if h % self.config.snapshot_every == 0 else None
        self._ready.actions.append(
            CommitBlock(h, commit.block_hash, commit.block_bytes, commit.cert_bytes,
                        outcome.state_root, snapshot, len(outcome.receipts),
                        len(outcome.rejected))
        )  # fmt: skip
        self._recent[h] = CommittedBlock(commit.block_bytes, commit.cert_bytes)
        self._recent.pop(h - self.config.recent_blocks_kept, None)
        self._count("blocks_committed")
        self._count("txs_committed", len(outcome.receipts))
        self._event("block_committed", height=h, txs=len(outcome.receipts),
                    rejected=len(outcome.rejected), round=commit.cert.round)  # fmt: skip
        self._last_height_ms = now_ms - self.last_commit_ms
        self.last_commit_ms = now_ms
        self._relay_ticks = 0
        self._next_relay_ms = min(self._next_relay_ms, now_ms + self.config.bft.rebroadcast_ms)
        self._new_height(now_ms)

    def _new_height(self, now_ms: int) -> None:
        h = self.chain.height + 1
        self._restored = [s for s in self._restored if s.height >= h]
        mine = [s for s in self._restored if s.height == h]
        self.machine = HeightMachine(
            h, self.chain.committee, self.config.bft, self.chain.chain_id, self.signer, self,
            now_ms, mine, may_vote=h >= self.may_vote_from,
        )  # fmt: skip
        self._seen = set()
        self._reforward()
        committee = self.chain.committee
        if self._witness:
            to = committee.leader_for(h)  # this height's first proposer
            if to != self.me and to in committee:
                self._relay_to(to, self._witness[:RELAY_MAX])
            self._witness = []
        self._hub = (
            VoteHub(committee, h, self.me, self.config.hub_flush_ms)
            if committee.size >= self.config.vote_hub_from and self.me in committee
            else None
        )
        for old in [x for x in self._slots if x < h - SLOT_HEIGHTS_KEPT]:
            del self._slots[old]
        future, self._future, self._future_bytes = self._future, [], 0
        for env, block in future:
            try:
                self._on_statement(now_ms, self.me, env, block or None)
            except (DecodeError, BadSignature):
                self._count("frames_refused")
        self._drain(now_ms)

    def _on_blocks(self, now_ms: int, sender: bytes, payload: bytes) -> None:
        """Blocks from sync or a push: apply those that extend our chain, in order."""
        try:
            batch = BlockBatch.decode(payload, max_bytes=len(payload))
        except DecodeError as exc:
            self._event("sync_refused", reason=str(exc)[:200])
            return
        for item in batch.blocks:
            try:
                block = decode_block(item.block)
            except DecodeError:
                break
            if block.height <= self.chain.height:
                continue
            try:
                commit = self.chain.check_commit(item.block, item.cert)
            except InvalidBlock as exc:
                self._count("sync_blocks_refused")
                self._event("sync_block_refused", height=block.height, reason=str(exc)[:200])
                break
            self._count("blocks_synced")
            self._apply(now_ms, commit)
        if batch.head > self.chain.height:
            self._asked_ms.pop(sender, None)
            self._behind(now_ms, sender, batch.head + 1)
        elif self._forgot:
            self._caught_up_with.add(sender)
            committee = self.chain.committee
            if committee.weight_of(self._caught_up_with) > committee.f_tolerated:
                self._resume_voting(now_ms)

    def _resume_voting(self, now_ms: int) -> None:
        """We forgot our votes (wiped disk) and have now caught up with a peer's head h:
        heights up to h are decided; at h + 1 we may have voted before the wipe, but only in
        rounds the committee had reached then. So we vote only from the round after the
        highest we hear of (`HeightMachine.resume_voting`). The residual risk: a pre-wipe
        vote in a round that no member we hear from has reached, which needs that vote to
        have reached members that all fell silent since."""
        self._forgot = False
        self.may_vote_from = self.chain.height + 1
        if self.machine is not None:
            self.machine.resume_voting(now_ms)
            self._drain(now_ms)
            self._event("voting_resumes", height=self.chain.height + 1,
                        round=self.machine.silent_below_round)  # fmt: skip

    # -- keeping up, and helping others keep up ----------------------------------------------

    def _behind(self, now_ms: int, peer: bytes, their_height: int) -> None:
        """`peer` is at a height above ours + 1's: ask it for what we miss (rate-limited)."""
        if now_ms - self._asked_ms.get(peer, -(10**12)) < self.config.sync_interval_ms:
            return
        self._asked_ms[peer] = now_ms
        start = self.chain.height + 1
        end = min(their_height - 1, start + SYNC_BLOCKS_MAX - 1)
        if end >= start:
            self._ready.actions.append(RequestSync(peer, start, end))

    def _help(self, now_ms: int, peer: bytes, their_height: int) -> None:
        """A member still works on a height we committed: push it the blocks (rate-limited)."""
        if peer == self.me or now_ms - self._pushed_ms.get(peer, -(10**12)) < 500:
            return
        self._pushed_ms[peer] = now_ms
        blocks = tuple(
            self._recent[h] for h in range(their_height, self.chain.height + 1) if h in self._recent
        )[:SYNC_BLOCKS_MAX]
        batch = BlockBatch(blocks, self.chain.height)
        self._ready.actions.append(SendFrame(peer, encode_frame(TAG_BLOCKS, batch.encode())))

    def _on_time(self, now_ms: int) -> None:
        if self._forward and now_ms >= self._next_forward_ms:
            txs, self._forward = list(self._forward), {}
            targets = self._forward_targets()
            for chunk in _chunks(txs, FORWARD_BATCH_MAX, FORWARD_BATCH_BYTES):
                frame = encode_frame(TAG_TXS, TxBatch(chunk).encode())
                for member in targets:
                    self._ready.actions.append(SendFrame(member, frame))
            self._next_forward_ms = now_ms + self.config.tx_forward_ms
        hub = self._hub
        if hub is not None and now_ms >= hub.flush_at_ms:
            self._relay_to_members(hub.take())
        if now_ms >= self._next_relay_ms:
            self._relay_ticks += 1
            self._next_relay_ms = now_ms + self.config.bft.rebroadcast_after(self._relay_ticks)
            if hub is not None and not self._slow(now_ms):
                self._relay = []  # a quick height: its hub relayed what mattered
            elif self._relay and self.me in self.chain.committee:
                batch, self._relay = self._relay[:RELAY_MAX], self._relay[RELAY_MAX:]
                self._relay_to_members(batch)
        if now_ms >= self._next_sync_ms:
            self._next_sync_ms = now_ms + self.config.sync_interval_ms
            members = [m for m in self.chain.committee.members if m != self.me]
            if members and (
                self.me not in self.chain.committee
                or now_ms - self.last_commit_ms > 2 * self.config.sync_interval_ms
            ):
                peer = members[self._sync_turn % len(members)]
                self._sync_turn += 1
                start = self.chain.height + 1
                self._ready.actions.append(RequestSync(peer, start, start + SYNC_BLOCKS_MAX - 1))

    def _next_wake(self, now_ms: int) -> int:
        wake = min(self._next_sync_ms, self._next_relay_ms)
        if self._hub is not None:
            wake = min(wake, self._hub.flush_at_ms)
        if self._forward:
            wake = min(wake, self._next_forward_ms)
        if self.machine is not None:
            wake = min(wake, self.machine.next_wake_ms())
        return max(wake, now_ms + 1)

    # -- transactions -----------------------------------------------------------------------

    def _on_client_tx(self, now_ms: int, inp: ClientTx) -> None:
        try:
            self._admit(inp.data, client=True)
        except InvalidTransaction as exc:
            self._ready.actions.append(TxVerdict(inp.ticket, False, exc.code.value, exc.reason))
            return
        self._ready.actions.append(TxVerdict(inp.ticket, True, "accepted", ""))
        if self.machine is not None:
            self.machine.nudge(now_ms)
            self._drain(now_ms)

    def _admit(self, data: bytes, *, client: bool = False) -> None:
        try:
            self.mempool.admit(data, self.chain.state)
        except InvalidTransaction:
            if client:
                raise
            return
        if client:  # members' batches went to the proposers already
            self._forward[data] = None
            if len(self._client_pending) < self.mempool.capacity:
                self._client_pending[data] = self.chain.height

    def _check_slot(self, signed: Signed[Any], env: bytes) -> bool:
        """Remember the first statement of each member per slot over recent heights; a second,
        different one is equivocation, whichever way it reached us (direct or relayed).
        True: `env` is the first statement we hold for its slot."""
        rec = signed.record
        h = self.chain.height + 1
        if (
            signed.signer not in self.chain.committee
            or not h - SLOT_HEIGHTS_KEPT <= rec.height <= h + 1
        ):
            return False  # strangers cannot be slashed, and far heights would grow memory
        kind = rec.kind if isinstance(rec, Vote) else PROPOSAL_SLOT
        by_height = self._slots.setdefault(rec.height, {})
        key = (signed.signer, rec.round, kind)
        old = by_height.get(key)
        if old is None:
            by_height[key] = env
            return True
        if old != env and self._verified_statement(old).record != rec:
            self._report(EvidenceFound(old, env, signed.signer), (rec.height, *key))
        return False

    # -- vote routing through the round's hub (consensus.vote_hub) ------------------------------

    def _hub_sends(self, now_ms: int, env: bytes, vote: Vote) -> None:
        """Our vote's first sending: to the round's hub, or held if we are it; nil votes go
        to every member. A copy relayed back to us is then skipped as seen."""
        hub = self._hub
        assert hub is not None
        self._seen.add(env)
        to = hub.route(vote, slow=self._slow(now_ms))
        if to is None:
            self._to_members(encode_frame(TAG_VOTE, env))
        elif to != self.me:
            self._ready.actions.append(SendFrame(to, encode_frame(TAG_VOTE, env)))
        elif hub.collect(env, self.me, vote, now_ms):
            self._relay_to_members(hub.take())

    def _hub_receives(
        self, now_ms: int, signed: Signed[Any], env: bytes, first_of_slot: bool, *, direct: bool
    ) -> None:
        """A member's statement, new to us. What the hub signed (its proposal, its votes) goes
        into our witness when it is the first we hold for its slot. A vote for a block is held
        for relay if we are its round's hub, or forwarded to the hub if it came straight to
        us, is the first for its slot that we hold, and its sender bypassed the hub (an
        equivocator's second version meets the first there)."""
        hub, vote, m = self._hub, signed.record, self.machine
        assert hub is not None
        if first_of_slot and signed.signer == hub.hub_of(vote.round):
            self._witness.append(env)
        if not isinstance(vote, Vote) or vote.block_hash == NIL or vote.height != hub.height:
            return
        if m is not None and vote.round > m.round + self.config.bft.rounds_ahead_max:
            return  # the machine ignores it too; holding it would only grow the hub
        if hub.is_hub_for(vote):
            if hub.collect(env, signed.signer, vote, now_ms):
                self._relay_to_members(hub.take())
        elif direct and first_of_slot and signed.signer != hub.hub_of(vote.round):
            self._relay_to(hub.hub_of(vote.round), [env])

    def _slow(self, now_ms: int) -> bool:
        """Has this height run long enough that the hub may be failing us? Then votes go to
        every member and what we received is relayed to every member (`consensus.vote_hub`),
        about n times the frames. "Long" is `rebroadcast_ms`, or twice the last height if that
        took longer, up to `rebroadcast_backoff_max` times `rebroadcast_ms`: on a host where
        every height takes seconds because the members are overloaded (16 live members on 2
        cores), a fixed second made every height slow, and the extra frames kept it so."""
        bft = self.config.bft
        after = min(max(bft.rebroadcast_ms, 2 * self._last_height_ms),
                    bft.rebroadcast_ms * bft.rebroadcast_backoff_max)  # fmt: skip
        return now_ms - self.last_commit_ms >= after

    def _relay_to_members(self, statements: list[bytes]) -> None:
        for i in range(0, len(statements), RELAY_MAX):
            batch = tuple(statements[i : i + RELAY_MAX])
            self._to_members(encode_frame(TAG_RELAY, Relay(batch).encode()))

    def _relay_to(self, member: bytes, statements: list[bytes]) -> None:
        frame = encode_frame(TAG_RELAY, Relay(tuple(statements)).encode())
        self._ready.actions.append(SendFrame(member, frame))

    def _report(self, found: EvidenceFound, slot: tuple[Any, ...] | None = None) -> None:
        """Turn equivocation into a slashing transaction signed by us (once per offence)."""
        key = slot or (found.offender, found.first, found.second)
        state = self.chain.state
        if key in self._reported or state.is_jailed(found.offender):
            return
        self._reported.add(key)
        last = self._reported_at.get(found.offender)
        if last is not None and self.chain.height - last < REPORT_AGAIN_BLOCKS:
            return  # one report in flight per offender; the ledger slashes once per jail
        self._reported_at[found.offender] = self.chain.height
        self._count("equivocations_reported")
        self._event("equivocation", offender=found.offender.hex()[:16])
        nonce = self.mempool.next_nonce(self.me, state)
        tx = Equivocation(nonce=nonce, fee=state.params.min_fee, first=found.first,
                          second=found.second)  # fmt: skip
        data = sign(tx, self.signer, self.chain.chain_id).encode()
        try:
            self._admit(data, client=True)
        except InvalidTransaction as exc:
            self._event("evidence_not_submitted", reason=exc.reason[:200])

    # -- small helpers ----------------------------------------------------------------------

    def _reforward(self) -> None:
        """Client transactions still not committed once every proposer we sent them to has
        had its height (more than `tx_forward_leaders` heights on) go again, to the proposers
        now ahead: the ones we picked may have proposed before our batch reached them (we
        lagged, or they were quick). Without this such a transaction waited for a block of
        our own, n heights away. Runs once per height applied (many when syncing); the
        forward set holds each transaction once, so a backlog is never multiplied."""
        h = self.chain.height
        for data, at in list(self._client_pending.items()):
            if not self.mempool.holds(data):
                del self._client_pending[data]
            elif h - at > self.config.tx_forward_leaders:
                self._forward[data] = None
                self._client_pending[data] = h

    def _forward_targets(self) -> list[bytes]:
        """Who gets the client transactions we took: the proposers of the
        `tx_forward_leaders` views after the current one (the next round's or height's
        first), not every member. The others verify them when they see them in a proposal,
        so a copy to each member bought nothing but frames: at n = 16 with clients spread
        over the members, every transaction cost 15 of them. The current view's proposer gets
        them too only while we still wait for its proposal: under load it proposes as its
        height starts, so a batch reaching it later waits for the next block anyway; on an
        idle chain it waits up to `empty_block_ms` for something to order, and a forwarded
        batch makes it propose at once. A transaction that none of those proposers includes
        goes again (`_reforward`) and at worst into a block of ours."""
        committee = self.chain.committee
        k = self.config.tx_forward_leaders
        if k == 0 or k >= committee.size - 1:
            return [m for m in committee.members if m != self.me]
        m = self.machine
        view = self.chain.height + 1 + (m.round if m is not None else 0)
        out: list[bytes] = []
        for i in range(1, committee.size + 1):
            leader = committee.leader_for(view + i)
            if leader != self.me and leader not in out:
                out.append(leader)
                if len(out) == k:
                    break
        current = committee.leader_for(view)
        if m is not None and m.step == Step.PROPOSE and current != self.me and current not in out:
            out.append(current)
        return out

    def _to_members(self, frame: bytes) -> None:
        for member in self.chain.committee.members:
            if member != self.me:
                self._ready.actions.append(SendFrame(member, frame))

    def _count(self, key: str, k: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + k

    def _event(self, name: str, **fields: int | str) -> None:
        self._ready.events.append((name, fields))

    def status(self) -> dict[str, object]:
        m, c = self.machine, self.chain
        return {
            "height": c.height,
            "head_hash": c.head_hash.hex(),
            "state_root": c.head_root.hex(),
            "committee": [x.hex() for x in c.committee.members],
            "member": self.me in c.committee,
            "round": m.round if m else 0,
            "step": int(m.step) if m else 0,
            "mempool": len(self.mempool),
            "last_commit_ms": self.last_commit_ms,
            "counts": dict(sorted(self.counts.items())),
        }


def _chunks(items: list[bytes], count_max: int, bytes_max: int) -> list[tuple[bytes, ...]]:
    """`items` in order, cut into runs of at most `count_max` items and `bytes_max` bytes
    (an item larger than `bytes_max` goes alone)."""
    out: list[tuple[bytes, ...]] = []
    run: list[bytes] = []
    size = 0
    for item in items:
        if run and (len(run) >= count_max or size + len(item) > bytes_max):
            out.append(tuple(run))
            run, size = [], 0
        run.append(item)
        size += len(item)
    if run:
        out.append(tuple(run))
    return out
