"""node.store: round trips across reopen, refusals (conflict, gap, chain, corruption), block
sync ranges, snapshot and vote pruning, and the point of it all: a child process killed with
SIGKILL mid-stream loses no block it reported as committed."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.store import (
    ChainMismatch,
    LoggedVote,
    NodeStore,
    StoreConflict,
    StoreCorrupt,
    StoredBlock,
    StoreError,
)

ROOT = Path(__file__).resolve().parent.parent
CHAIN = b"gpumesh-test-chain"


# Deterministic content, a function of the height only: the SIGKILL child imports these, so
# the parent can recompute exactly what the child wrote.
def block_for(height: int) -> StoredBlock:
    digest = hashlib.sha256(height.to_bytes(8, "big")).digest()
    return StoredBlock(
        height=height,
        block_hash=digest,
        block=b"block:" + digest * 3,
        cert=b"cert:" + digest[:8],
        state_root=hashlib.sha256(b"root" + digest).digest(),
    )


def state_for(height: int) -> bytes:
    return b"state:%d:" % height + hashlib.sha256(b"state%d" % height).digest()


def vote_for(height: int) -> LoggedVote:
    return LoggedVote(height=height, round=0, kind=1, data=b"vote:%d" % height)


def open_store(path: Path, **kwargs: int) -> NodeStore:
    return NodeStore.open(path, chain_id=CHAIN, **kwargs)


def fill(store: NodeStore, heights: int, *, state_every: int = 0) -> None:
    for h in range(store.head_height() + 1, heights + 1):
        state = state_for(h) if state_every and h % state_every == 0 else None
        store.commit_block(block_for(h), state=state)


def test_reopen_keeps_everything_and_pragmas_are_in_force(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with open_store(path) as store:
        assert store.path == path
        assert store.head_height() == 0 and store.block(1) is None
        assert store.latest_state() is None and store.votes_from(0) == []
        fill(store, 5, state_every=2)
        store.log_vote(vote_for(6))
        store.put_meta("lock", b"round=3")
        store.put_meta("empty", b"")
        conn = store._conn  # the store's own connection: synchronous is per connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(StoreError, match="closed"):
        store.head_height()
    store.close()  # idempotent
    with open_store(path) as again:
        assert again.head_height() == 5
        assert [b.height for b in again.blocks(1, 5)] == [1, 2, 3, 4, 5]
        assert all(again.block(h) == block_for(h) for h in range(1, 6))
        assert again.latest_state() == (4, state_for(4))
        assert again.state_at(2) == state_for(2) and again.state_at(3) is None
        assert again.votes_from(0) == [vote_for(6)]
        assert again.get_meta("lock") == b"round=3" and again.get_meta("empty") == b""
        assert again.get_meta("missing") is None
        assert again.get_meta("store.chain_id") == CHAIN
        assert again._conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_commit_block_idempotent_conflict_gap_and_height_zero(tmp_path: Path) -> None:
    with open_store(tmp_path / "node.db") as store:
        fill(store, 3)
        store.commit_block(block_for(2))  # same block again: no-op
        other_cert = StoredBlock(2, block_for(2).block_hash, b"x", b"other cert", b"r")
        store.commit_block(other_cert)  # same hash: no-op, the first stored is kept
        assert store.block(2) == block_for(2) and store.head_height() == 3
        forged = StoredBlock(2, b"\x01" * 32, b"forged", b"cert", b"root")
        with pytest.raises(StoreConflict) as info:
            store.commit_block(forged, state=b"forged state", prune_votes_below=0)
        assert info.value.height == 2
        assert info.value.stored_hash == block_for(2).block_hash
        assert info.value.offered_hash == b"\x01" * 32
        assert str(store.path) in str(info.value)
        assert store.block(2) == block_for(2) and store.state_at(2) is None
        with pytest.raises(StoreError, match="expected 4, offered 5"):
            store.commit_block(block_for(5))
        assert store.head_height() == 3 and store.block(5) is None
        with pytest.raises(ValueError, match="height"):
            StoredBlock(0, b"h", b"b", b"c", b"r")
        with pytest.raises(ValueError, match="prune_votes_below"):
            store.commit_block(block_for(4), prune_votes_below=6)
        assert store.head_height() == 3


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((-1, b"h", b"b", b"c", b"r"), "height"),
        ((1, b"", b"b", b"c", b"r"), "block_hash"),
        ((1, b"h", b"", b"c", b"r"), "block"),
        ((1, b"h", b"b", "c", b"r"), "cert"),
        ((1, b"h", b"b", b"c", b""), "state_root"),
        ((True, b"h", b"b", b"c", b"r"), "height"),
    ],
)
def test_stored_block_validation_names_the_argument(args: tuple[object, ...], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        StoredBlock(*args)  # type: ignore[arg-type]


def test_argument_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="round"):
        LoggedVote(1, -1, 0, b"d")
    with pytest.raises(ValueError, match="data"):
        LoggedVote(1, 0, 0, b"")
    with pytest.raises(ValueError, match="chain_id"):
        NodeStore.open(tmp_path / "a.db", chain_id=b"")
    with pytest.raises(ValueError, match="snapshots_kept"):
        NodeStore.open(tmp_path / "a.db", chain_id=CHAIN, snapshots_kept=0)
    with pytest.raises(StoreError, match="does not exist"):
        NodeStore.open(tmp_path / "missing" / "a.db", chain_id=CHAIN)
    with pytest.raises(StoreError, match="not a regular file"):
        NodeStore.open(tmp_path, chain_id=CHAIN)
    with open_store(tmp_path / "node.db") as store:
        for call, name in [
            (lambda: store.block(-1), "height"),
            (lambda: store.blocks(-1, 3), "start"),
            (lambda: store.blocks(1, 3, limit=0), "limit"),
            (lambda: store.blocks(1, 3, bytes_max=0), "bytes_max"),
            (lambda: store.state_at(-2), "height"),
            (lambda: store.votes_from(-1), "height"),
            (lambda: store.commit_block(block_for(1), state=b""), "state"),
            (lambda: store.put_meta("store.chain_id", b"other"), "reserved"),
            (lambda: store.put_meta("", b"v"), "key"),
            (lambda: store.put_meta("k", "text"), "value"),  # type: ignore[arg-type]
        ]:
            with pytest.raises(ValueError, match=name):
                call()
        assert store.head_height() == 0 and store.get_meta("store.chain_id") == CHAIN


def test_blocks_range_limit_and_bytes_max(tmp_path: Path) -> None:
    with open_store(tmp_path / "node.db") as store:
        assert store.blocks(1, 10) == []
        fill(store, 20)
        assert [b.height for b in store.blocks(5, 9)] == [5, 6, 7, 8, 9]
        assert [b.height for b in store.blocks(0, 100, limit=3)] == [1, 2, 3]
        assert [b.height for b in store.blocks(18, 100)] == [18, 19, 20]
        assert store.blocks(21, 30) == [] and store.blocks(9, 5) == []
        size = len(block_for(1).block) + len(block_for(1).cert)  # same for every height
        assert [b.height for b in store.blocks(1, 20, bytes_max=3 * size)] == [1, 2, 3]
        assert [b.height for b in store.blocks(1, 20, bytes_max=3 * size - 1)] == [1, 2]
        assert store.blocks(4, 20, bytes_max=1) == [block_for(4)]  # at least one


def test_snapshot_pruning_keeps_newest(tmp_path: Path) -> None:
    with open_store(tmp_path / "node.db", snapshots_kept=3) as store:
        fill(store, 30, state_every=5)
        assert store.latest_state() == (30, state_for(30))
        kept = [h for h in range(0, 31) if store.state_at(h) is not None]
        assert kept == [20, 25, 30]
        assert all(store.state_at(h) == state_for(h) for h in kept)
        fill(store, 34)  # blocks without a state prune nothing
        assert store.latest_state() == (30, state_for(30)) and store.state_at(20) is not None


def test_vote_log_idempotent_conflict_order_and_prune(tmp_path: Path) -> None:
    with open_store(tmp_path / "node.db") as store:
        votes = [LoggedVote(h, r, k, b"%d/%d/%d" % (h, r, k)) for h in (3, 1, 2) for r in (1, 0)
                 for k in (2, 1)]  # fmt: skip
        for vote in votes:
            store.log_vote(vote)
        store.log_vote(votes[0])  # a resend: no-op
        expected = sorted(votes, key=lambda v: (v.height, v.round, v.kind))
        assert store.votes_from(0) == expected
        assert store.votes_from(2) == [v for v in expected if v.height >= 2]
        twin = LoggedVote(3, 1, 2, b"something else")
        with pytest.raises(StoreConflict, match="equivocate") as info:
            store.log_vote(twin)
        assert info.value.height == 3
        assert info.value.stored_hash == hashlib.sha256(b"3/1/2").digest()
        assert info.value.offered_hash == hashlib.sha256(b"something else").digest()
        assert store.votes_from(3)[-1] == LoggedVote(3, 1, 2, b"3/1/2")
        store.commit_block(block_for(1), prune_votes_below=2)
        assert store.votes_from(0) == [v for v in expected if v.height >= 2]
    with open_store(tmp_path / "node.db") as again:
        assert again.votes_from(0) == [v for v in expected if v.height >= 2]


def test_chain_mismatch_garbage_foreign_and_unknown_schema(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    open_store(path).close()
    with pytest.raises(ChainMismatch, match=re.escape(str(path))):
        NodeStore.open(path, chain_id=b"another chain")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(hashlib.sha256(b"noise").digest() * 200)
    with pytest.raises(StoreCorrupt, match=re.escape(str(garbage))):
        open_store(garbage)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreCorrupt, match="not a node store"):
        open_store(foreign)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'store.schema_version'", (b"99",))
    conn.close()
    with pytest.raises(StoreCorrupt, match="schema version"):
        open_store(path)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=64), max_size=12),
    states=st.dictionaries(st.integers(1, 12), st.binary(min_size=1, max_size=32)),
    votes=st.dictionaries(
        st.tuples(st.integers(0, 20), st.integers(0, 3), st.integers(0, 5)),
        st.binary(min_size=1, max_size=16),
        max_size=8,
    ),
    meta=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: "." not in k),
                         st.binary(max_size=16), max_size=4),
)  # fmt: skip
def test_round_trip_property(
    payloads: list[bytes],
    states: dict[int, bytes],
    votes: dict[tuple[int, int, int], bytes],
    meta: dict[str, bytes],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "node.db"
        blocks = [
            StoredBlock(h, hashlib.sha256(p).digest() + bytes([h]), p, p[:3], b"root%d" % h)
            for h, p in enumerate(payloads, start=1)
        ]
        with open_store(path, snapshots_kept=100) as store:
            for key, data in votes.items():
                store.log_vote(LoggedVote(*key, data))
            for b in blocks:
                store.commit_block(b, state=states.get(b.height))
            for name, value in meta.items():
                store.put_meta(name, value)
        with open_store(path) as again:
            assert again.head_height() == len(blocks)
            assert again.blocks(0, 100) == blocks
            kept = {h: s for h, s in states.items() if h <= len(blocks)}
            assert {h: again.state_at(h) for h in kept} == kept
            if kept:
                assert again.latest_state() == (max(kept), kept[max(kept)])
            assert again.votes_from(0) == [LoggedVote(*k, d) for k, d in sorted(votes.items())]
            assert {k: again.get_meta(k) for k in meta} == meta


CHILD_CODE = """
import sys
from node.store import NodeStore
from tests.test_store import CHAIN, block_for, state_for, vote_for

store = NodeStore.open(sys.argv[1], chain_id=CHAIN)
for h in range(1, 20_001):  # bounded: ends by itself if the parent is gone
    store.log_vote(vote_for(h))
    state = state_for(h) if h % 10 == 0 else None
    store.commit_block(block_for(h), state=state, prune_votes_below=max(0, h - 4))
    print(f"committed {h}", flush=True)
"""
CHILD_DEADLINE_S = 60.0


@pytest.mark.parametrize("kill_after", [50, 400])
def test_sigkill_loses_no_committed_block(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "node.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_CODE, str(path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(CHILD_DEADLINE_S, proc.kill)  # bounds the blocking reads
    watchdog.start()
    try:
        seen = 0
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks only until the child prints its next line
            seen = int(line.split()[1])
            if seen >= kill_after:
                break
        proc.kill()  # SIGKILL, by its pid
        rest, err = proc.communicate(timeout=CHILD_DEADLINE_S)
    finally:
        watchdog.cancel()
    assert seen >= kill_after, f"child stopped at {seen}: {err}"
    assert proc.returncode == -9, err
    reported = max([seen] + [int(x.split()[1]) for x in rest.splitlines(keepends=True)
                             if x.endswith("\n")])  # fmt: skip
    with open_store(path) as store:
        head = store.head_height()
        assert reported <= head <= reported + 1  # at most one commit not yet printed
        assert store.blocks(1, head, limit=head + 1, bytes_max=2**40) == [
            block_for(h) for h in range(1, head + 1)
        ]
        latest = store.latest_state()
        assert latest is not None and latest == ((head // 10) * 10, state_for((head // 10) * 10))
        heights = [v.height for v in store.votes_from(0)]
        assert heights in (list(range(head - 4, head + 1)), list(range(head - 4, head + 2)))
        assert all(v == vote_for(v.height) for v in store.votes_from(0))
        assert store._conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
