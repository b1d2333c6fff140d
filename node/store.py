"""The node's durable store (SQLite): committed blocks, state snapshots, our own votes, meta.

Why: a node must lose no committed block when killed at any moment, and a committee member
must never forget a vote it has sent, or after a restart it could vote twice (equivocate).
Every write method is one `BEGIN IMMEDIATE ... COMMIT` in WAL mode with `synchronous=FULL`
(both read back on open, or the store refuses to run): on return the write is fsync'ed and
survives SIGKILL and power loss; a crash part-way leaves all of it or none of it.

Contract, "persist, then send" (DESIGN.md, principle 3): the runtime writes here first and
sends a block, vote or lock only after the call returns. A write that raised did not happen.

The store knows no formats: everything is opaque bytes keyed by integers. Blocks sit at
contiguous heights from 1 (0 is genesis, never stored) and are never overwritten. Meta keys
starting with "store." are the store's own (schema version, chain id). A worker thread may
call it (`check_same_thread=False`), but only one thread at a time per `NodeStore`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
CHAIN_ID_BYTES_MAX = 64
META_KEY_CHARS_MAX = 128
RESERVED_META_PREFIX = "store."
_KEY_SCHEMA, _KEY_CHAIN = "store.schema_version", "store.chain_id"
_BUSY_TIMEOUT_S = 5.0
_CORRUPT_CODES = ("SQLITE_NOTADB", "SQLITE_CORRUPT")
_BLOCK_COLUMNS = "height, hash, block, cert, state_root"
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE blocks (height INTEGER PRIMARY KEY, hash BLOB NOT NULL, block BLOB NOT NULL,"
    " cert BLOB NOT NULL, state_root BLOB NOT NULL)",
    "CREATE TABLE states (height INTEGER PRIMARY KEY, state BLOB NOT NULL)",
    "CREATE TABLE votes (height INTEGER NOT NULL, round INTEGER NOT NULL, kind INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (height, round, kind)) WITHOUT ROWID",
)


class StoreError(Exception):
    """The store cannot do what was asked; the message names the file and the problem."""


class StoreCorrupt(StoreError):
    """Not a SQLite file, integrity check failed, or not a store of a schema we know."""


class StoreConflict(StoreError):
    """Refused to overwrite: another block at a stored height, or other data for a logged
    vote. `stored_hash`/`offered_hash`: the block hashes, or SHA-256 of the two vote data."""

    def __init__(self, message: str, *, height: int, stored_hash: bytes, offered_hash: bytes):
        super().__init__(message)
        self.height, self.stored_hash, self.offered_hash = height, stored_hash, offered_hash


class ChainMismatch(StoreError):
    """The store on disk belongs to another chain id."""


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_bytes(name: str, value: object, *, nonempty: bool = True) -> None:
    if not isinstance(value, bytes) or (nonempty and not value):
        raise ValueError(f"{name} must be {'non-empty ' * nonempty}bytes, got {value!r:.80}")


@dataclass(frozen=True)
class StoredBlock:
    """A committed block as opaque bytes; `cert` is the commit certificate that proves it."""

    height: int
    block_hash: bytes
    block: bytes
    cert: bytes
    state_root: bytes

    def __post_init__(self) -> None:
        _check_int("height", self.height, 1)
        for name in ("block_hash", "block", "state_root"):
            _check_bytes(name, getattr(self, name))
        _check_bytes("cert", self.cert, nonempty=False)


@dataclass(frozen=True)
class LoggedVote:
    """One of our own consensus messages (`kind` is the caller's), logged before it is sent."""

    height: int
    round: int
    kind: int
    data: bytes

    def __post_init__(self) -> None:
        for name in ("height", "round", "kind"):
            _check_int(name, getattr(self, name), 0)
        _check_bytes("data", self.data)


class NodeStore:
    """One SQLite file per node. Open with `NodeStore.open`; see the module docstring."""

    def __init__(self, path: Path, conn: sqlite3.Connection, snapshots_kept: int) -> None:
        """Use `open`, which checks the file; this only holds a ready connection."""
        self.path = path
        self.snapshots_kept = snapshots_kept
        self._db: sqlite3.Connection | None = conn

    @classmethod
    def open(cls, path: Path | str, *, chain_id: bytes, snapshots_kept: int = 8) -> NodeStore:
        """Open (or create) the store at `path`; its folder must exist. An existing file must
        hold our schema version and `chain_id`, and pass `PRAGMA quick_check`."""
        path = Path(path)
        _check_bytes("chain_id", chain_id)
        if len(chain_id) > CHAIN_ID_BYTES_MAX:
            raise ValueError(f"chain_id is {len(chain_id)} bytes, at most {CHAIN_ID_BYTES_MAX}")
        _check_int("snapshots_kept", snapshots_kept, 1)
        if not path.parent.is_dir():
            raise StoreError(f"{path}: folder {path.parent} does not exist")
        if path.exists() and not path.is_file():
            raise StoreError(f"{path}: exists and is not a regular file")
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
            )
        except sqlite3.Error as e:
            raise _wrap(path, "cannot open", e) from e
        try:
            _set_pragmas(path, conn)
            _init_or_check(path, conn, chain_id)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, snapshots_kept)

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise StoreError."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> NodeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._db

    def _write(self, what: str) -> AbstractContextManager[sqlite3.Connection]:
        return _transaction(self._conn, self.path, what)

    def _one(self, sql: str, *args: object) -> Any:
        return self._conn.execute(sql, args).fetchone()

    def commit_block(
        self,
        block: StoredBlock,
        *,
        state: bytes | None = None,
        prune_votes_below: int | None = None,
    ) -> None:
        """Store `block`, the state snapshot at its height and the vote pruning, atomically.

        The same block again (same hash) is a no-op, whatever `state` and `cert` say (a block
        may have several valid certificates; the first stored is kept). Votes may be pruned
        only up to the committed height (`prune_votes_below <= block.height + 1`): forgetting
        a vote for an undecided height could let us equivocate.
        """
        if state is not None:
            _check_bytes("state", state)
        if prune_votes_below is not None:
            _check_int("prune_votes_below", prune_votes_below, 0)
            if prune_votes_below > block.height + 1:
                raise ValueError(
                    f"prune_votes_below={prune_votes_below} is above height {block.height} + 1"
                )
        h = block.height
        with self._write(f"commit_block at height {h}") as conn:
            stored = conn.execute("SELECT hash FROM blocks WHERE height = ?", (h,)).fetchone()
            if stored is not None:
                if stored[0] == block.block_hash:
                    return
                raise StoreConflict(
                    f"{self.path}: height {h} holds block {stored[0].hex()}, "
                    f"refusing {block.block_hash.hex()}",
                    height=h, stored_hash=stored[0], offered_hash=block.block_hash,
                )  # fmt: skip
            head = _head(conn)
            if h != head + 1:
                raise StoreError(
                    f"{self.path}: heights must be contiguous: expected {head + 1}, offered {h}"
                )
            row = (h, block.block_hash, block.block, block.cert, block.state_root)
            conn.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", row)
            if state is not None:
                conn.execute("INSERT INTO states VALUES (?, ?)", (h, state))
                conn.execute(
                    "DELETE FROM states WHERE height < (SELECT MIN(height) FROM "
                    "(SELECT height FROM states ORDER BY height DESC LIMIT ?))",
                    (self.snapshots_kept,),
                )
            if prune_votes_below is not None:
                conn.execute("DELETE FROM votes WHERE height < ?", (prune_votes_below,))

    def head_height(self) -> int:
        """The highest committed height; 0 (genesis) when no block is stored."""
        return _head(self._conn)

    def block(self, height: int) -> StoredBlock | None:
        """The block at `height`, or None if not stored."""
        _check_int("height", height, 0)
        row = self._one(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE height = ?", height)
        return None if row is None else StoredBlock(*row)

    def blocks(
        self, start: int, end: int, *, limit: int = 256, bytes_max: int = 4 * 1024 * 1024
    ) -> list[StoredBlock]:
        """Blocks start..end inclusive, ascending, for block sync: at most `limit`, stopping
        before block+cert bytes would pass `bytes_max`, but at least one if any is in range
        (so a single huge block can still be served). An empty range gives []."""
        for name, value, minimum in (("start", start, 0), ("end", end, 0), ("limit", limit, 1)):
            _check_int(name, value, minimum)
        _check_int("bytes_max", bytes_max, 1)
        out: list[StoredBlock] = []
        total = 0
        cursor = self._conn.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE height BETWEEN ? AND ? "
            "ORDER BY height LIMIT ?",
            (start, end, limit),
        )
        for row in cursor:
            total += len(row[2]) + len(row[3])
            if out and total > bytes_max:
                break
            out.append(StoredBlock(*row))
        cursor.close()
        return out

    def latest_state(self) -> tuple[int, bytes] | None:
        """The newest snapshot as (height, state bytes), or None if there is none."""
        row = self._one("SELECT height, state FROM states ORDER BY height DESC LIMIT 1")
        return None if row is None else (row[0], row[1])

    def state_at(self, height: int) -> bytes | None:
        """The snapshot at exactly `height`, or None (never taken, or pruned)."""
        _check_int("height", height, 0)
        row = self._one("SELECT state FROM states WHERE height = ?", height)
        return None if row is None else bytes(row[0])

    def log_vote(self, vote: LoggedVote) -> None:
        """Log our own vote before sending it; durable on return. The identical vote again is
        a no-op (a resend); other data for a logged (height, round, kind) is refused with
        StoreConflict, since sending it would be equivocation: the caller has a bug."""
        key = (vote.height, vote.round, vote.kind)
        with self._write(f"log_vote at height {vote.height}") as conn:
            where = "WHERE height = ? AND round = ? AND kind = ?"
            row = conn.execute(f"SELECT data FROM votes {where}", key).fetchone()
            if row is None:
                conn.execute("INSERT INTO votes VALUES (?, ?, ?, ?)", (*key, vote.data))
            elif row[0] != vote.data:
                raise StoreConflict(
                    f"{self.path}: another vote is logged at height {vote.height} round "
                    f"{vote.round} kind {vote.kind}; refusing to equivocate",
                    height=vote.height, stored_hash=hashlib.sha256(row[0]).digest(),
                    offered_hash=hashlib.sha256(vote.data).digest(),
                )  # fmt: skip

    def votes_from(self, height: int) -> list[LoggedVote]:
        """All logged votes at heights >= `height`, ordered by (height, round, kind): what a
        restarted node must remember (and may resend) before it votes again."""
        _check_int("height", height, 0)
        rows = self._conn.execute(
            "SELECT height, round, kind, data FROM votes WHERE height >= ? "
            "ORDER BY height, round, kind",
            (height,),
        )
        return [LoggedVote(*r) for r in rows]

    def put_meta(self, key: str, value: bytes) -> None:
        """Set a small named value (e.g. the consensus lock); durable on return."""
        _check_meta_key(key)
        if key.startswith(RESERVED_META_PREFIX):
            raise ValueError(f"key {key!r}: the prefix {RESERVED_META_PREFIX!r} is reserved")
        _check_bytes("value", value, nonempty=False)
        with self._write(f"put_meta {key!r}") as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> bytes | None:
        """The value under `key`, or None. Reserved "store." keys may be read."""
        _check_meta_key(key)
        row = self._one("SELECT value FROM meta WHERE key = ?", key)
        return None if row is None else bytes(row[0])


def _check_meta_key(key: object) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= META_KEY_CHARS_MAX:
        raise ValueError(f"key must be a str of 1..{META_KEY_CHARS_MAX} chars, got {key!r:.80}")


def _head(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(height) FROM blocks").fetchone()
    return 0 if row[0] is None else int(row[0])


def _wrap(path: Path, what: str, e: sqlite3.Error) -> StoreError:
    """SQLite's 'not a database' and 'corrupt' become StoreCorrupt; the rest StoreError."""
    name = getattr(e, "sqlite_errorname", "") or ""
    kind = StoreCorrupt if name.startswith(_CORRUPT_CODES) else StoreError
    return kind(f"{path}: {what}: {e}")


@contextmanager
def _transaction(conn: sqlite3.Connection, path: Path, what: str) -> Iterator[sqlite3.Connection]:
    """One IMMEDIATE transaction: the write lock is taken before our checks read, so checks
    and writes see one state; COMMIT returns after the fsync. Any exception rolls back."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise _wrap(path, what, e) from e


def _set_pragmas(path: Path, conn: sqlite3.Connection) -> None:
    """WAL + synchronous=FULL make each COMMIT durable; refuse to run if either did not take."""
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        got = [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous")]
    except sqlite3.Error as e:
        raise _wrap(path, "cannot open", e) from e
    if got != ["wal", 2]:
        raise StoreError(f"{path}: journal_mode=WAL, synchronous=FULL(2) did not take: {got!r}")


def _init_or_check(path: Path, conn: sqlite3.Connection, chain_id: bytes) -> None:
    """Create the schema in an empty file, else check the schema version and chain id; then
    `PRAGMA quick_check`."""
    with _transaction(conn, path, "cannot open"):
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not names:
            for statement in _SCHEMA:
                conn.execute(statement)
            version = str(SCHEMA_VERSION).encode()
            meta = [(_KEY_SCHEMA, version), (_KEY_CHAIN, chain_id)]
            conn.executemany("INSERT INTO meta VALUES (?, ?)", meta)
        elif "meta" not in names:
            raise StoreCorrupt(f"{path}: a SQLite file but not a node store (no meta table)")
        else:
            stored = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'store.%'"))
            if stored.get(_KEY_SCHEMA) != str(SCHEMA_VERSION).encode():
                raise StoreCorrupt(
                    f"{path}: schema version {stored.get(_KEY_SCHEMA)!r} unknown, "
                    f"this build reads {SCHEMA_VERSION}"
                )
            if stored.get(_KEY_CHAIN) != chain_id:
                raise ChainMismatch(
                    f"{path}: store belongs to chain {stored.get(_KEY_CHAIN)!r}, not {chain_id!r}"
                )
        rows = conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise StoreCorrupt(f"{path}: quick_check failed: {rows[:5]!r}")
