"""Opening a node's chain: its settings (the [chain] section and the genesis it names), its
store, and rebuilding the committed chain and our own statements from it after a restart.

The chain is rebuilt from the newest state snapshot plus the blocks stored after it, each
replayed through `Chain.check_commit` and `Chain.apply`, exactly as a block from a peer would
be; a replayed block whose hash or state root differs from what the store recorded means the
disk or this build disagrees with what we committed before, and the node refuses to run.

Our own statements above the head (votes, proposals, the lock) come back from the store, so
a restarted committee member never contradicts what it signed before the crash.

Fresh stores. A store is *fresh* when it lacks the `store_created_ms` meta key: a new node,
or one whose disk was wiped. A wiped member forgot which votes it signed, so it must not vote
again where it may have voted before. It cannot tell a new store from a wiped one by itself,
so a fresh store starts the engine with `forgot_votes`: no votes at all until block sync has
brought it to a peer's head, and then only where the engine's rule says it cannot have voted
before (`ConsensusEngine`, `_resume_voting`). A store provisioned together with a brand-new key
(`init_chain_store`, run by `gpumesh swarm up` and `gpumesh chain init`) is not fresh: a key
born with its store has voted nowhere, so such a node votes from genesis at once: a network
whose members all start together must not depend on the resume rule, which cannot tell a
genesis start from a wipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from consensus.bft.tendermint import BftConfig, Statement
from consensus.chain import Chain, InvalidBlock
from consensus.engine import EngineConfig
from consensus.ledger.errors import GenesisError
from consensus.ledger.genesis import Genesis, load_genesis_toml
from node.config import ConfigError, NodeConfig
from node.store import LoggedVote, NodeStore, StoreCorrupt, StoredBlock

STORE_FILE = "chain.sqlite"
META_CREATED_MS = "store_created_ms"
META_GENESIS = "genesis_digest"
REPLAY_PAGE = 256


@dataclass(frozen=True)
class ChainSettings:
    genesis: Genesis
    data_dir: Path
    engine: EngineConfig


def load_chain_settings(config: NodeConfig) -> ChainSettings | None:
    """The [chain] section made ready to run: None without a genesis. Raises ConfigError
    naming `chain.genesis` for a missing or invalid genesis file, or one of another chain."""
    c = config.chain
    if c.genesis is None:
        return None

    def problem(text: str) -> ConfigError:
        return ConfigError(config.path, "chain.genesis", f"{c.genesis}: {text}")

    try:
        genesis = load_genesis_toml(c.genesis.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise problem("file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise problem(f"cannot read: {exc}") from None
    except GenesisError as exc:
        raise problem(str(exc)) from None
    if genesis.chain_id != config.node.chain_id:
        raise problem(
            f"the genesis chain_id {genesis.chain_id!r} differs from node.chain_id "
            f"{config.node.chain_id!r}; they must be equal"
        )
    bft = BftConfig(timeout_propose_ms=c.timeout_propose_ms, timeout_vote_ms=c.timeout_vote_ms)
    engine = EngineConfig(
        bft=bft,
        empty_block_ms=c.empty_block_ms,
        sync_interval_ms=c.sync_interval_ms,
        snapshot_every=c.snapshot_every,
    )
    return ChainSettings(genesis, config.chain_data_dir, engine)


@dataclass
class RestoredChain:
    store: NodeStore
    chain: Chain
    restored: list[Statement]
    """Our own statements at heights above the head, oldest first."""
    fresh: bool
    """The store lacked `store_created_ms`: a new node or a wiped disk (see module doc)."""
    replayed: int
    """Blocks replayed on top of the snapshot (or genesis)."""


def store_path(data_dir: Path) -> Path:
    return Path(data_dir) / STORE_FILE


def _open(data_dir: Path, genesis: Genesis) -> NodeStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = NodeStore.open(store_path(data_dir), chain_id=genesis.chain_id.encode("ascii"))
    digest = store.get_meta(META_GENESIS)
    if digest is None:
        store.put_meta(META_GENESIS, genesis.digest())
    elif digest != genesis.digest():
        store.close()
        raise StoreCorrupt(
            f"{store.path}: the store was made from another genesis (digest {digest.hex()[:16]}"
            f"...), not the configured one ({genesis.digest().hex()[:16]}...)"
        )
    return store


def init_chain_store(data_dir: Path, genesis: Genesis, now_ms: int) -> bool:
    """Provision the store of a node whose key was just made, so it may vote from genesis.
    Returns False (and changes nothing) if the store already existed."""
    with _open(Path(data_dir), genesis) as store:
        if store.get_meta(META_CREATED_MS) is not None:
            return False
        store.put_meta(META_CREATED_MS, str(now_ms).encode())
        return True


def open_chain(data_dir: Path, genesis: Genesis, now_ms: int) -> RestoredChain:
    """Open (or create) the store in `data_dir` and rebuild the chain from it. Blocking: run
    it in a worker thread. Raises StoreError (StoreCorrupt when replay disagrees)."""
    store = _open(Path(data_dir), genesis)
    try:
        fresh = store.get_meta(META_CREATED_MS) is None
        if fresh:
            store.put_meta(META_CREATED_MS, str(now_ms).encode())
        chain, replayed = rebuild_chain(store, genesis)
        restored = [to_statement(v) for v in store.votes_from(chain.height + 1)]
    except BaseException:
        store.close()
        raise
    return RestoredChain(store, chain, restored, fresh, replayed)


def rebuild_chain(store: NodeStore, genesis: Genesis) -> tuple[Chain, int]:
    """The newest snapshot (or genesis) plus every stored block after it, re-verified."""
    latest = store.latest_state()
    if latest is None:
        chain = Chain.from_genesis(genesis)
    else:
        height, snapshot = latest
        chain = Chain.from_snapshot(snapshot)
        stored = store.block(height)
        if chain.height != height or stored is None or stored.block_hash != chain.head_hash:
            raise StoreCorrupt(f"{store.path}: the snapshot at height {height} does not match")
    head, replayed = store.head_height(), 0
    while chain.height < head:
        page = store.blocks(chain.height + 1, head, limit=REPLAY_PAGE)
        if not page:
            raise StoreCorrupt(f"{store.path}: block {chain.height + 1} is missing")
        for stored in page:
            _replay(store, chain, stored)
            replayed += 1
    return chain, replayed


def _replay(store: NodeStore, chain: Chain, stored: StoredBlock) -> None:
    try:
        commit = chain.check_commit(stored.block, stored.cert)
    except InvalidBlock as exc:
        raise StoreCorrupt(f"{store.path}: stored block {stored.height}: {exc}") from None
    if commit.block_hash != stored.block_hash:
        raise StoreCorrupt(f"{store.path}: stored block {stored.height}: hash differs")
    outcome = chain.apply(commit)
    if outcome.state_root != stored.state_root:
        raise StoreCorrupt(
            f"{store.path}: replaying block {stored.height} gives state root "
            f"{outcome.state_root.hex()[:16]}..., the store recorded "
            f"{stored.state_root.hex()[:16]}..."
        )


def to_statement(vote: LoggedVote) -> Statement:
    return Statement(vote.height, vote.round, vote.kind, vote.data)


def to_logged(st: Statement) -> LoggedVote:
    return LoggedVote(st.height, st.round, st.kind, st.data)
