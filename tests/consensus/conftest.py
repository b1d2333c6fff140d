"""Shared helpers for the consensus tests: genesis building, signing, hand-made commits and a
tiny deterministic in-memory network of `ConsensusEngine`s.

The network (`Net`) is the runtime's stand-in: it routes `SendFrame` to the target engine's
`FrameIn`, answers `RequestSync(to, start, end)` with a `SyncReply` whose data is a
`BlockBatch` of the (block, cert) bytes it recorded from node `to`'s `CommitBlock` actions
(serving sync is the runtime's job, so the harness does it), and records everything each node
persisted, committed and was told. Delivery order can be shuffled and frames dropped, both from
one seeded `random.Random`, so every run is reproducible. Time only moves when the test says:
`Net.tick` advances `now_ms` and gives every engine an `EngineTick`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from consensus.bft.block import Block
from consensus.bft.messages import SYNC_BLOCKS_MAX, BlockBatch, CommittedBlock
from consensus.bft.tendermint import BftConfig, Persist, Statement
from consensus.bft.votes import CommitCertificate, Proposal, Vote, VoteKind
from consensus.chain import Chain
from consensus.engine import (
    ClientTx,
    CommitBlock,
    ConsensusEngine,
    EngineConfig,
    EngineInput,
    EngineTick,
    FrameIn,
    RequestSync,
    SendFrame,
    SyncReply,
    TxVerdict,
)
from consensus.ledger.genesis import Genesis, GenesisOperator
from consensus.ledger.params import LedgerParams
from consensus.ledger.tx import LedgerTx, Transfer
from p2p.identity import Identity
from p2p.wire import Record, Signed, sign

CHAIN = "bft-test"
CHAIN_ID = CHAIN.encode()
OPERATOR_STAKE = 1_000_000
USER_BALANCE = 10**12


def members(n: int = 4, label: str = "member") -> list[Identity]:
    return [Identity.derive("tests-consensus", label, i) for i in range(n)]


def users(n: int = 8) -> list[Identity]:
    return [Identity.derive("tests-consensus", "user", i) for i in range(n)]


def make_params(**overrides: int) -> LedgerParams:
    values = dict(committee_size=4, min_stake=1_000, min_fee=1, epoch_blocks=1_000)
    values.update(overrides)
    return LedgerParams(**values)


def make_genesis(
    operators: Sequence[Identity],
    accounts: Iterable[Identity] = (),
    *,
    params: LedgerParams | None = None,
    stakes: Sequence[int] | None = None,
    chain: str = CHAIN,
) -> Genesis:
    stakes = list(stakes) if stakes is not None else [OPERATOR_STAKE] * len(operators)
    allocations = {i.public_key: USER_BALANCE for i in (*operators, *accounts)}
    ops = sorted(
        (GenesisOperator(o.public_key, s, 500) for o, s in zip(operators, stakes, strict=True)),
        key=lambda o: o.account,
    )
    return Genesis(chain, tuple(sorted(allocations.items())), tuple(ops), params or make_params())


def signed_tx(record: LedgerTx, signer: Identity, chain_id: bytes = CHAIN_ID) -> bytes:
    return sign(record, signer, chain_id).encode()


def transfer(
    signer: Identity,
    nonce: int,
    to: bytes,
    amount: int = 1,
    fee: int = 1,
    chain_id: bytes = CHAIN_ID,
) -> bytes:
    return signed_tx(Transfer(nonce=nonce, fee=fee, to=to, amount=amount), signer, chain_id)


def signed(record: Record, signer: Identity, chain_id: bytes = CHAIN_ID) -> tuple[Signed, bytes]:
    s = sign(record, signer, chain_id)
    return s, s.encode()


def vote(
    signer: Identity,
    height: int,
    round_: int,
    kind: int,
    block_hash: bytes,
    chain_id: bytes = CHAIN_ID,
) -> tuple[Signed, bytes]:
    return signed(Vote(height, round_, kind, block_hash), signer, chain_id)


def proposal(
    signer: Identity,
    height: int,
    round_: int,
    block_hash: bytes,
    pol_round: int = -1,
    chain_id: bytes = CHAIN_ID,
) -> tuple[Signed, bytes]:
    return signed(Proposal(height, round_, pol_round + 1, block_hash), signer, chain_id)


# -- hand-made commits (no engine) --------------------------------------------------------------


def next_block(
    chain: Chain,
    txs: tuple[bytes, ...] = (),
    *,
    proposer: bytes | None = None,
    time_ms: int | None = None,
) -> Block:
    return Block(
        chain.height + 1,
        chain.head_hash,
        chain.head_root,
        time_ms if time_ms is not None else chain.head_time_ms + 1_000,
        proposer if proposer is not None else chain.committee.members[0],
        txs,
    )


def certify(
    block: Block, signers: Iterable[Identity], round_: int = 0, chain_id: bytes = CHAIN_ID
) -> CommitCertificate:
    h = block.block_hash()
    votes = [sign(Vote(block.height, round_, VoteKind.PRECOMMIT, h), s, chain_id) for s in signers]
    return CommitCertificate.from_votes(votes)


def extend(chain: Chain, keys: dict[bytes, Identity], txs: tuple[bytes, ...] = ()) -> Block:
    """Commit one block on `chain`, certified by its whole committee (identities from `keys`)."""
    block = next_block(chain, txs)
    cert = certify(block, [keys[m] for m in chain.committee.members])
    chain.apply(chain.check_commit(block.encode(), cert.encode()))
    return block


# -- the in-memory network ----------------------------------------------------------------------


def fast_config(**overrides: object) -> EngineConfig:
    """Short timeouts, so that a failed round costs a few ticks rather than seconds."""
    bft = BftConfig(
        timeout_propose_ms=600,
        timeout_propose_delta_ms=200,
        timeout_vote_ms=300,
        timeout_vote_delta_ms=100,
        rebroadcast_ms=300,
    )
    values: dict[str, object] = dict(
        bft=bft, empty_block_ms=200, sync_interval_ms=300, tx_forward_ms=20
    )
    values.update(overrides)
    return EngineConfig(**values)  # type: ignore[arg-type]


class AgreementViolation(AssertionError):
    pass


@dataclass
class Node:
    identity: Identity
    engine: ConsensusEngine
    commits: list[CommitBlock] = field(default_factory=list)
    persisted: list[Statement] = field(default_factory=list)
    verdicts: dict[int, TxVerdict] = field(default_factory=dict)
    events: list[tuple[str, dict]] = field(default_factory=list)
    requests: list[RequestSync] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    @property
    def chain(self) -> Chain:
        return self.engine.chain

    @property
    def height(self) -> int:
        return self.engine.chain.height


class Net:
    """Engines wired together in memory. Every commit of every node is checked against the
    first commit seen at that height (`AgreementViolation` on a fork)."""

    def __init__(
        self,
        genesis: Genesis,
        identities: Sequence[Identity],
        *,
        config: EngineConfig | None = None,
        seed: int = 0,
        drop: float = 0.0,
        shuffle: bool = False,
    ) -> None:
        self.genesis = genesis
        self.config = config or fast_config()
        self.rng = random.Random(seed)
        self.drop, self.shuffle = drop, shuffle
        self.now = 0
        self.nodes: dict[bytes, Node] = {}
        for ident in identities:
            engine = ConsensusEngine(Chain.from_genesis(genesis), ident, self.config, self.now)
            self.nodes[ident.public_key] = Node(ident, engine)
        self.queue: list[tuple[bytes, EngineInput]] = []
        self.isolated: set[bytes] = set()
        self.canonical: dict[int, bytes] = {}
        """height -> the first block hash any node committed there."""
        self.frames_sent = 0
        self.frames_dropped = 0
        self.syncs_served = 0
        self.ticket = 0
        self.sync_reply_enabled = True
        """False: RequestSync goes unanswered (blocks then arrive only by TAG_BLOCKS pushes)."""
        self.tap: Callable[[bytes, SendFrame], None] | None = None
        """Sees every frame a node sends (before drops), for tests that eavesdrop."""
        self.mutate: Callable[[bytes, SendFrame], bytes | None] | None = None
        """Rewrites a frame a node sends (None: it is not sent): Byzantine behaviour."""

    # -- routing --------------------------------------------------------------------------

    def step(self, key: bytes, inp: EngineInput) -> None:
        node = self.nodes[key]
        ready = node.engine.step(self.now, inp)
        node.events.extend(ready.events)
        for act in ready.actions:
            if isinstance(act, Persist):
                node.persisted.append(act.statement)
            elif isinstance(act, CommitBlock):
                self._record_commit(node, act)
            elif isinstance(act, SendFrame):
                self.frames_sent += 1
                if self.tap is not None:
                    self.tap(key, act)
                if self.mutate is not None:
                    frame = self.mutate(key, act)
                    if frame is None:
                        continue
                    act = SendFrame(act.to, frame)
                if self._cut(key, act.to) or (self.drop and self.rng.random() < self.drop):
                    self.frames_dropped += 1
                    continue
                self.queue.append((act.to, FrameIn(key, act.frame)))
            elif isinstance(act, RequestSync):
                node.requests.append(act)
                if self._cut(key, act.to) or not self.sync_reply_enabled:
                    continue
                self.queue.append(
                    (key, SyncReply(act.to, self.sync_reply(act.to, act.start, act.end)))
                )
            elif isinstance(act, TxVerdict):
                node.verdicts[act.ticket] = act

    def _cut(self, a: bytes, b: bytes) -> bool:
        return b not in self.nodes or a in self.isolated or b in self.isolated

    def sync_reply(self, server: bytes, start: int, end: int) -> bytes:
        node = self.nodes[server]
        self.syncs_served += 1
        by_height = {c.height: c for c in node.commits}
        end = min(end, start + SYNC_BLOCKS_MAX - 1)
        blocks = tuple(
            CommittedBlock(by_height[h].block, by_height[h].cert)
            for h in range(start, end + 1)
            if h in by_height
        )
        return BlockBatch(blocks, node.height).encode()

    def _record_commit(self, node: Node, act: CommitBlock) -> None:
        expected = len(node.commits) + 1
        assert act.height == expected, f"node committed height {act.height}, expected {expected}"
        node.commits.append(act)
        first = self.canonical.setdefault(act.height, act.block_hash)
        if first != act.block_hash:
            raise AgreementViolation(
                f"height {act.height}: {act.block_hash.hex()[:12]} != {first.hex()[:12]}"
            )

    def deliver_all(self, limit: int = 200_000) -> None:
        """Deliver queued inputs (and whatever they cause) at the current time."""
        n = 0
        while self.queue:
            n += 1
            assert n < limit, "the network does not quiesce"
            if self.shuffle:
                i = self.rng.randrange(len(self.queue))
                self.queue[i], self.queue[-1] = self.queue[-1], self.queue[i]
                to, inp = self.queue.pop()
            else:
                to, inp = self.queue.pop(0)
            if to in self.isolated and isinstance(inp, FrameIn | SyncReply):
                continue
            self.step(to, inp)

    def tick(self, ms: int = 50) -> None:
        self.now += ms
        for key in list(self.nodes):
            self.step(key, EngineTick())
        self.deliver_all()

    def run_until(self, done: Callable[[], bool], max_ms: int = 60_000, step_ms: int = 50) -> None:
        start = self.now
        self.deliver_all()
        while not done():
            assert self.now - start < max_ms, f"not done after {max_ms} ms: {self.describe()}"
            self.tick(step_ms)

    def run_for(self, ms: int, step_ms: int = 50) -> None:
        end = self.now + ms
        while self.now < end:
            self.tick(step_ms)

    # -- clients --------------------------------------------------------------------------

    def submit(self, key: bytes, tx: bytes) -> int:
        self.ticket += 1
        self.step(key, ClientTx(tx, self.ticket))
        return self.ticket

    # -- reading ------------------------------------------------------------------------

    def heights(self, keys: Iterable[bytes] | None = None) -> list[int]:
        return [self.nodes[k].height for k in (keys if keys is not None else self.nodes)]

    def all_at_least(self, h: int, keys: Iterable[bytes] | None = None) -> Callable[[], bool]:
        keys = list(keys) if keys is not None else list(self.nodes)
        return lambda: min(self.heights(keys)) >= h

    def describe(self) -> str:
        def one(n: Node) -> str:
            m = n.engine.machine
            return f"{n.identity.short}: h={n.height} r={m.round if m else '-'}"

        return ", ".join(one(n) for n in self.nodes.values())

    def assert_same_head(self, keys: Iterable[bytes] | None = None) -> None:
        nodes = [self.nodes[k] for k in (keys if keys is not None else self.nodes)]
        heads = {(n.height, n.chain.head_hash, n.chain.head_root) for n in nodes}
        assert len(heads) == 1, f"heads differ: {self.describe()}"
