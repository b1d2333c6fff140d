"""What goes into and comes out of the consensus engine (`consensus.engine`): its
configuration, its inputs, and the actions the runtime or simulator carries out, in order.
Kept apart so that drivers (the node's chain service, the simulator, tests) can name them
without the engine's internals."""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.bft.block import BLOCK_BYTES_MAX, BLOCK_TXS_MAX
from consensus.bft.tendermint import BftConfig, Persist


@dataclass(frozen=True)
class EngineConfig:
    bft: BftConfig = field(default_factory=BftConfig)
    block_txs_max: int = 4_000
    block_bytes_max: int = 1024 * 1024
    empty_block_ms: int = 1_000
    """With nothing to order, the proposer still proposes after this long: blocks mark time
    (epochs, unbonding) and show the committee is alive."""
    tx_forward_ms: int = 100
    """Transactions clients hand us are forwarded in batches this often..."""
    tx_forward_leaders: int = 2
    """...to the proposers of this many views ahead, and to the current one while we still
    wait for its proposal (0: to every member; see `ConsensusEngine._forward_targets`)."""
    sync_interval_ms: int = 1_000
    clock_drift_max_ms: int = 10_000
    snapshot_every: int = 10
    """Persist the whole state with every this-many blocks (restart cost vs disk traffic)."""
    recent_blocks_kept: int = 64
    """Committed blocks held in memory to push to members that fall behind."""
    future_statements_max: int = 4_096
    vote_hub_from: int = 8
    """Committees of at least this many members route block votes through the round's
    proposer (`consensus.vote_hub`): about 6n frames a height instead of 2n^2. Below it,
    all-to-all costs little and saves the extra hop."""
    hub_flush_ms: int = 200
    """How long a hub holds the votes of a slot that has no quorum yet before relaying them
    anyway (so members see a round whose block votes fall short)."""

    def __post_init__(self) -> None:
        if not 0 < self.block_txs_max <= BLOCK_TXS_MAX:
            raise ValueError(f"block_txs_max must be 1..{BLOCK_TXS_MAX}")
        if not 0 < self.block_bytes_max <= BLOCK_BYTES_MAX:
            raise ValueError(f"block_bytes_max must be 1..{BLOCK_BYTES_MAX}")
        if self.tx_forward_leaders < 0:
            raise ValueError("tx_forward_leaders must be non-negative")
        if self.vote_hub_from < 2:
            raise ValueError("vote_hub_from must be at least 2")
        if self.hub_flush_ms <= 0:
            raise ValueError("hub_flush_ms must be positive")
        if self.empty_block_ms >= self.bft.timeout_propose_ms:
            raise ValueError("empty_block_ms must be below bft.timeout_propose_ms")


@dataclass(frozen=True)
class FrameIn:
    """A frame on the consensus protocol from the member with account key `sender`."""

    sender: bytes
    data: bytes


@dataclass(frozen=True)
class ClientTx:
    """A transaction a client submitted; answered by a `TxVerdict` with the same ticket."""

    data: bytes
    ticket: int


@dataclass(frozen=True)
class SyncReply:
    sender: bytes
    data: bytes


@dataclass(frozen=True)
class EngineTick:
    pass


EngineInput = FrameIn | ClientTx | SyncReply | EngineTick


@dataclass(frozen=True)
class SendFrame:
    to: bytes
    frame: bytes


@dataclass(frozen=True)
class RequestSync:
    to: bytes
    start: int
    end: int


@dataclass(frozen=True)
class CommitBlock:
    height: int
    block_hash: bytes
    block: bytes
    cert: bytes
    state_root: bytes
    snapshot: bytes | None
    txs: int
    rejected: int


@dataclass(frozen=True)
class TxVerdict:
    ticket: int
    accepted: bool
    code: str
    reason: str


EngineAction = Persist | CommitBlock | SendFrame | RequestSync | TxVerdict


@dataclass
class EngineReady:
    actions: list[EngineAction] = field(default_factory=list)
    events: list[tuple[str, dict[str, int | str]]] = field(default_factory=list)
    wake_at_ms: int = 0
