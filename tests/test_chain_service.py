"""node.chain_service without libp2p: one trio run, the in-memory transport, real SQLite
stores in a temporary folder.

- A service stopped between heights, or between a step and its writes (the engine a block
  ahead of the store), and restarted from its store comes back at the height it reported,
  with the same head, and goes on: its restored statements re-decide a pending block.
- A fresh (unprovisioned) store votes only once block sync has brought it to a peer's head.
- Config errors name the field: a genesis of another chain, a missing genesis file.
Every wait is on the service's own change notifications, under a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from consensus.bft.tendermint import BftConfig, Persist
from consensus.engine import CommitBlock, ConsensusEngine, EngineConfig, EngineTick
from consensus.ledger.genesis import Genesis, load_genesis_toml
from node.chain_restore import (
    ChainSettings,
    init_chain_store,
    load_chain_settings,
    open_chain,
    store_path,
    to_logged,
)
from node.chain_service import ChainService
from node.chain_views import block_tx_ids
from node.config import ConfigError, default_config
from node.peer_sender import REQUEST_TIMEOUT_MS, PeerSenders
from node.store import NodeStore, StoreCorrupt
from p2p.identity import Identity
from p2p.memory_transport import MemoryNetwork

CHAIN = "svc-test"
A, B = Identity.derive("chain-service", 0), Identity.derive("chain-service", 1)
FAST = EngineConfig(
    bft=BftConfig(timeout_propose_ms=200, timeout_vote_ms=100, rebroadcast_ms=100),
    empty_block_ms=20,
    sync_interval_ms=100,
)


def genesis_text(stakes: dict[Identity, int], chain_id: str = CHAIN) -> str:
    ops = "".join(
        f'[[operators]]\naccount = "{who.public_key.hex()}"\nself_stake = {stake}\n'
        "commission_bps = 0\n"
        for who, stake in stakes.items()
    )
    return f'chain_id = "{chain_id}"\n[params]\nmin_stake = 1000\n{ops}'


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Watched:
    """A service plus an event set after each of its engine steps."""

    def __init__(self, identity: Identity, genesis: Genesis, data: Path, **kw: object) -> None:
        self._changed = trio.Event()
        settings = ChainSettings(genesis, data, FAST)
        self.svc = ChainService(
            identity,
            settings,
            clock_ms=wall_ms,
            on_change=self._notify,
            **kw,  # type: ignore[arg-type]
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(
        self, ready: Callable[[dict[str, object]], bool], timeout_s: float = 10
    ) -> None:
        with trio.fail_after(timeout_s):
            while not ready(self.svc.status()):
                await self._changed.wait()

    async def height(self, at_least: int) -> dict[str, object]:
        await self.until(lambda s: int(s.get("height", 0)) >= at_least)  # type: ignore[call-overload]
        return self.svc.status()


async def test_restarts_resume_from_the_store_at_the_reported_height(tmp_path: Path) -> None:
    genesis = load_genesis_toml(genesis_text({A: 1_000_000}))
    assert init_chain_store(tmp_path, genesis, wall_ms())
    net, reported, head = MemoryNetwork(), 0, ""
    for cycle in range(4):
        node = Watched(A, genesis, tmp_path)
        async with net.open(A) as transport, trio.open_nursery() as nursery:
            await nursery.start(node.svc.run, transport)
            first = node.svc.status()
            assert int(first["height"]) >= reported  # type: ignore[call-overload]
            if cycle:
                assert first["fresh_store"] is False and first["may_vote_from"] is None
            await node.height(reported + 3)
            if cycle % 2:  # stop between a step and its writes: the engine is a block ahead
                with trio.fail_after(10):
                    while not _ahead(node.svc.status()):
                        await trio.lowlevel.checkpoint()
            snap = node.svc.status()
            reported, head = int(snap["height"]), str(snap["head_hash"])  # type: ignore[call-overload]
            nursery.cancel_scope.cancel()
        with NodeStore.open(store_path(tmp_path), chain_id=CHAIN.encode()) as store:
            assert store.head_height() >= reported
            stored = store.block(reported)
            assert stored is not None and stored.block_hash.hex() == head
    # a cold rebuild from the store matches what the service last reported
    again = open_chain(tmp_path, genesis, wall_ms())
    try:
        assert again.chain.height >= reported and not again.fresh
    finally:
        again.store.close()


async def test_a_crash_after_the_votes_before_the_block_recommits_the_same_block(
    tmp_path: Path,
) -> None:
    """The crash the store exists for: our precommit is durable (and may have been sent), the
    block is not. The restarted member must commit that very block, not lose it or sign
    another, and carry on."""
    genesis = load_genesis_toml(genesis_text({A: 1_000_000}))
    init_chain_store(tmp_path, genesis, wall_ms())
    restored = open_chain(tmp_path, genesis, wall_ms())
    engine = ConsensusEngine(restored.chain, A, FAST, wall_ms())
    pending: CommitBlock | None = None
    with restored.store as store:
        while pending is None:
            for act in engine.step(wall_ms(), EngineTick()).actions:
                if isinstance(act, Persist):
                    store.log_vote(to_logged(act.statement))
                elif isinstance(act, CommitBlock):
                    pending = act  # "killed" before this write
                    break
        assert store.head_height() == 0 and len(store.votes_from(1)) >= 3
    node = Watched(A, genesis, tmp_path)
    async with MemoryNetwork().open(A) as transport, trio.open_nursery() as nursery:
        await nursery.start(node.svc.run, transport)
        await node.height(pending.height + 3)
        assert (await node.svc.block(pending.height)) == {
            "height": pending.height,
            "hash": pending.block_hash.hex(),
            "state_root": pending.state_root.hex(),
            "block_bytes": len(pending.block),
            "txs": block_tx_ids(pending.block),
        }
        nursery.cancel_scope.cancel()


def _ahead(snap: dict[str, object]) -> bool:
    return int(snap["engine_height"]) > int(snap["height"])  # type: ignore[call-overload]


async def test_a_fresh_store_votes_only_after_its_first_sync(tmp_path: Path) -> None:
    # A holds 3/4 of the stake: it commits alone while B, fresh, must not vote
    genesis = load_genesis_toml(genesis_text({A: 3_000_000, B: 1_000_000}))
    init_chain_store(tmp_path / "a", genesis, wall_ms())
    net = MemoryNetwork()
    async with (
        net.open(A) as ta,
        net.open(B) as tb,
        trio.open_nursery() as nursery,
    ):
        a = Watched(A, genesis, tmp_path / "a")
        await nursery.start(a.svc.run, ta)
        await a.height(3)

        async def dial(peer: str, addrs: tuple[str, ...]) -> None:
            await tb.connect(addrs[0])

        def addrs_of(key: bytes) -> tuple[str, ...]:
            return ta.listen_addrs if key == A.public_key else ()

        b = Watched(B, genesis, tmp_path / "b", addrs_of=addrs_of, dial=dial)
        await nursery.start(b.svc.run, tb)
        first = b.svc.status()
        assert first["fresh_store"] is True and first["awaiting_sync_to_vote"] is True
        assert first["may_vote_from"] == 1 << 62
        await b.until(lambda s: s["awaiting_sync_to_vote"] is False)
        allowed = int(b.svc.status()["may_vote_from"])  # type: ignore[call-overload]
        a_head = int(a.svc.status()["height"])  # type: ignore[call-overload]
        assert 3 <= allowed <= a_head + 2
        snap = await b.height(a_head)  # B caught up through block sync
        assert snap["fresh_store"] is True
        nursery.cancel_scope.cancel()


def test_a_store_of_another_genesis_is_refused(tmp_path: Path) -> None:
    init_chain_store(tmp_path, load_genesis_toml(genesis_text({A: 1_000_000})), 0)
    other = load_genesis_toml(genesis_text({B: 1_000_000}))
    with pytest.raises(StoreCorrupt, match="another genesis"):
        open_chain(tmp_path, other, 0)


def test_genesis_errors_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "genesis.toml").write_text(genesis_text({A: 1_000_000}, chain_id="other"))
    cfg = default_config("n", chain_id=CHAIN, genesis="genesis.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        load_chain_settings(cfg)
    assert err.value.field == "chain.genesis"
    assert "'other'" in str(err.value) and f"'{CHAIN}'" in str(err.value)
    missing = default_config("n", genesis="nope.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"chain\.genesis: .*file not found"):
        load_chain_settings(missing)
    settings = load_chain_settings(default_config("n", chain_id="other", genesis="genesis.toml",
                                                  base_dir=tmp_path))  # fmt: skip
    assert settings is not None and settings.data_dir == tmp_path / "data"


async def test_peer_senders_retry_then_drop_and_bound_their_queues(autojump_clock: object) -> None:
    net = MemoryNetwork()
    async with net.open(A) as ta, net.open(B) as tb, trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def handler(peer: str, data: bytes) -> bytes:
            got.append(data)
            return b"ok"

        tb.set_request_handler("/t", handler)
        senders = PeerSenders(ta, "/t", nursery, queue_max=4)
        senders.send(B.peer_id, b"lost")  # not connected: three tries, then dropped
        await trio.sleep(1)
        assert senders.stats.dropped_failed == 1 and senders.stats.retries == 2
        await ta.connect(tb.listen_addrs[0])
        for i in range(6):  # the queue keeps the newest four
            senders.send(B.peer_id, bytes([i]))
        await trio.sleep(1)
        assert got == [bytes([i]) for i in range(2, 6)]
        assert senders.stats.dropped_queue_full == 2 and senders.stats.sent == 4
        nursery.cancel_scope.cancel()


async def test_peer_senders_do_not_resend_a_frame_whose_ack_was_late(
    autojump_clock: object,
) -> None:
    """A late acknowledgement is no proof of loss: the slow peer got the frame once, the
    frame is counted as timed out, and the next frame goes out as usual."""
    net = MemoryNetwork()
    async with net.open(A) as ta, net.open(B) as tb, trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def slow_handler(peer: str, data: bytes) -> bytes:
            got.append(data)
            if data == b"slow":
                await trio.sleep(REQUEST_TIMEOUT_MS / 1000 + 1)
            return b"ok"

        tb.set_request_handler("/t", slow_handler)
        await ta.connect(tb.listen_addrs[0])
        senders = PeerSenders(ta, "/t", nursery)
        senders.send(B.peer_id, b"slow")
        await trio.sleep(REQUEST_TIMEOUT_MS / 1000 + 2)
        assert got == [b"slow"]
        assert senders.stats.timed_out == 1 and senders.stats.dropped_failed == 1
        assert senders.stats.retries == 0 and senders.stats.sent == 0
        senders.send(B.peer_id, b"next")
        await trio.sleep(1)
        assert got == [b"slow", b"next"] and senders.stats.sent == 1
        nursery.cancel_scope.cancel()


async def test_peer_senders_send_a_backlog_as_one_batch(autojump_clock: object) -> None:
    net = MemoryNetwork()
    async with net.open(A) as ta, net.open(B) as tb, trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def handler(peer: str, data: bytes) -> bytes:
            got.append(data)
            return b"ok"

        tb.set_request_handler("/t", handler)
        await ta.connect(tb.listen_addrs[0])
        senders = PeerSenders(ta, "/t", nursery, batch=lambda fs: b"|".join(fs))
        for i in range(5):  # queued before the sender task runs: one request carries them
            senders.send(B.peer_id, bytes([65 + i]))
        await trio.sleep(1)
        assert got == [b"A|B|C|D|E"]
        assert senders.stats.sent == 5 and senders.stats.batched == 5
        senders.send(B.peer_id, b"F")  # a lone frame goes as it is
        await trio.sleep(1)
        assert got[-1] == b"F" and senders.stats.sent == 6
        nursery.cancel_scope.cancel()
