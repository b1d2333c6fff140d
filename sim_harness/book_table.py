"""Every simulated node's announcement book as numpy columns, so that one gossip message
reaches a thousand books in a few array operations instead of a thousand core steps.

Why: at 1,000 nodes each gossiping every 10 s, a simulated second holds ~100,000 deliveries.
Handing each one to its node's `NodeCore` costs ~8 us, which holds the simulator at real
time; the issue asks for 20x. Everything a core does with a valid announcement from an
honest publisher is one rule of `p2p.announcements.AnnouncementBook.offer`: keep it if its
seq is above the one held. That rule is applied here to all receivers at once (`add_wave`),
and each core reads its own row through `RowBook`, which answers every question the core,
the checkers and the state digest ask of a book exactly as `AnnouncementBook` would.

Cells: [o, v] for origin o and receiver v (a wave writes along one origin's row; "row v"
below means receiver v's book, a column of the arrays). Each cell holds two slots:
- `cur`: the newest entry, with its true arrival time `cur_at` in half milliseconds (see
  `clock`; it may still be on its way: waves are written when the message is published);
- `prev`: the entry in force until `cur` arrives (it has always arrived).
Reads never look back in time, so two slots hold every answer. `dropped` names the entry a
core's `expire` removed, which the real book would have deleted from its dict.

The table takes a wave only where that rule is all there is to it: the receiver's newest
entry from the origin has arrived and is older. Everything else goes through the receiver's
core as an ordinary delivery event, judged by `RowBook.offer` when it lands: a cell still
waiting for an earlier message of the same origin, a book holding the same or a newer seq (an
origin whose clock went back: what the core has dropped by then decides), and an entry on its
way that a newer one overtakes (`handed_back`).

tests/sim/test_book_table.py holds `RowBook` to `AnnouncementBook` on random offer streams
(clocks going back included); tests/sim/test_determinism.py runs scenarios both ways and
demands the same final books, convergence, checker verdicts and message counts.
"""

from __future__ import annotations

from collections.abc import Sequence, Set

import numpy as np
import numpy.typing as npt

from p2p.announcements import (
    BookConfig,
    CapacityAnnouncement,
    SupplyTotals,
    Verdict,
    check_announcement,
    summarise,
)
from p2p.wire import Signed
from sim_harness.book_kernels import (
    NEVER,
    UNKNOWN,
    row_covers,
    row_expiries,
    rows_cover,
    wave_write,
)

EMPTY = -1
STATE_PIECE_BYTES = 48


def state_piece(ann: CapacityAnnouncement) -> bytes:
    """What the simulator's state digest hashes of one held announcement: node id, seq and
    expiry (a book's state, whichever way the book is kept)."""
    return ann.node_id + ann.seq.to_bytes(8, "big") + ann.expires_ms.to_bytes(8, "big")


I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


class BookTable:
    """The books of `n` simulated nodes whose public keys are `keys` (row and column order).

    `now` is the simulator's true time, set before any core reads its book; arrival times in
    the table are true times, expiries are the announcement's own (local clock) times."""

    def __init__(self, keys: Sequence[bytes], config: BookConfig) -> None:
        n = len(keys)
        if n > config.entries_max:
            raise ValueError(f"{n} nodes exceed a book's {config.entries_max} entries")
        self.n, self.config, self.keys = n, config, list(keys)
        self.column = {k: i for i, k in enumerate(keys)}
        self.key_rank = np.argsort(np.array(keys, dtype=object)).astype(np.int64)
        """Columns in node-id order (the order `live` and `expire` answer in)."""
        cells = np.full((n, n, 4), EMPTY, np.int32)
        cells[:, :, 1] = 0
        self.cur, self.cur_at, self.prev, self.dropped = (cells[:, :, k] for k in range(4))
        """(origin, receiver) cells, interleaved: a cell's four values share one cache line,
        so a row's scan (`row_expiries`: one receiver, every origin, a stride of n cells)
        reads one line per origin instead of four."""
        self.now = 0
        self.version = 0
        """Bumped by every write, so that a row's view can be reused until the next one."""
        self.reading_first = False
        """True while something reads that runs before the deliveries due at `now` (the
        simulator's samples and checkers, queued before the run): waves due now are not in
        yet, while what cores offered at this instant is."""
        self.handing = 2**62
        """The send order of the message a core is being handed now, or "after everything"
        outside deliveries. A wave entry due at this very instant counts as arrived only if
        its wave was sent before: the per-node simulator would have queued it first."""
        self._order: list[int] = []
        """Per message: the send order of the wave that wrote it (offers: none yet)."""
        self.handed_back: list[tuple[int, int, int]] = []
        """(receiver, message, true arrival time) of wave entries taken back from the table
        (overtaken on the way): the simulator delivers each through the receiver's core."""
        self._signed: list[Signed[CapacityAnnouncement]] = []
        self._seq: list[int] = []
        self._seq_arr: I64 = np.full(1, -1, np.int64)
        self._exp_arr: I64 = np.full(1, -(2**62), np.int64)
        """Every message's seq and expiry by id, with room to grow; the last item is the one
        EMPTY (-1) indexes: seq -1 and an expiry before any clock reading."""
        self._pieces: npt.NDArray[np.uint8] = np.zeros((0, STATE_PIECE_BYTES), np.uint8)
        """Every message's `state_piece` by id (the state digest reads a whole book's pieces
        in one gather), but for the newest, held in `_new_pieces` until the next read:
        writing a numpy row per message cost more than the rest of `message`."""
        self._new_pieces = bytearray()
        self._ids: dict[CapacityAnnouncement, int] = {}
        self._last: tuple[CapacityAnnouncement | None, int] = (None, EMPTY)
        """The record `message` answered for last, and its id."""
        self.verdicts: dict[str, int] = {}
        """Verdicts of the deliveries applied here (the cores count the rest)."""
        self.held_floor = np.full(n, UNKNOWN, np.int64)
        """Per receiver, an expiry no entry it holds or has on its way falls below: every
        write lowers it to the new entry's expiry, and only a scan of the row raises it. A
        core's "anything expired?" and "first expiry before my next announcement?" are
        answered from it without reading the row (at 10,000 nodes the row is 10,000 cells
        spread over memory)."""
        self.cover_floor = np.full(n, UNKNOWN, np.int64)
        """Per receiver, UNKNOWN or an expiry below which no entry from `_cover_cols` falls
        while none of them is wiped or dropped (which resets it): a book whose floor is past
        its clock covers those columns, no scan needed (`covers_rows`)."""
        self._cover_cols: I64 = np.zeros(0, np.int64)
        self._cols_of: dict[frozenset[bytes], I64] = {}
        self._cells = (self.cur, self.cur_at, self.prev, self.dropped)

    # -- messages -------------------------------------------------------------------------------

    def message(self, signed: Signed[CapacityAnnouncement]) -> int:
        """The id of an announcement (the same record always has the same id)."""
        record = signed.record
        last_record, last_mid = self._last
        if record is last_record:  # a wave of what a core has just offered: no hashing
            return last_mid
        mid = self._ids.get(record)
        if mid is None:
            if record.node_id not in self.column:
                raise KeyError("an announcement from a node outside the simulation")
            mid = self._ids[record] = len(self._signed)
            self._signed.append(signed)
            self._seq.append(record.seq)
            self._order.append(-1)
            if mid + 1 >= len(self._seq_arr):  # grow, keeping the EMPTY item last
                more = len(self._seq_arr)
                self._seq_arr = np.concatenate([self._seq_arr[:-1], np.full(more + 1, -1)])
                self._exp_arr = np.concatenate([self._exp_arr[:-1], np.full(more + 1, -(2**62))])
            self._seq_arr[mid] = record.seq
            self._exp_arr[mid] = record.expires_ms
            self._new_pieces += state_piece(record)
        self._last = (record, mid)
        return mid

    def state_pieces(self, ids: I32) -> bytes:
        """The `state_piece`s of these messages, joined in order."""
        if self._new_pieces:
            new = np.frombuffer(bytes(self._new_pieces), np.uint8).reshape(-1, STATE_PIECE_BYTES)
            self._pieces = np.concatenate([self._pieces, new])
            self._new_pieces.clear()
        return self._pieces[ids].tobytes()

    def clock(self) -> int:
        """`now` in half milliseconds, the unit of `cur_at`: a wave arriving at t is stored
        at 2t, an entry a core offered at t at 2t - 1 (it is in before any wave due then)."""
        return 2 * self.now - self.reading_first

    def _arrays(self) -> tuple[I64, I64]:
        return self._seq_arr, self._exp_arr

    def _count(self, verdict: Verdict, k: int = 1) -> None:
        if k:
            name = verdict.value
            count = self.verdicts.get(name, 0) + k
            if count:
                self.verdicts[name] = count
            else:
                del self.verdicts[name]

    # -- waves ----------------------------------------------------------------------------------

    def add_wave(self, mid: int, t0: int, order: int, rows: I64, times: I64) -> Bools:
        """Write message `mid`, published at true time `t0` as the `order`-th message sent,
        into the books of `rows`, where it arrives at `times` (first copies only: a second
        copy is a core's business).

        Only a receiver whose newest entry from that origin has arrived and is older takes
        it here (that is all a fresh announcement meets). The others are returned as a mask
        over `rows`, for their cores to judge on arrival: a cell still waiting for an
        earlier message of the same origin, and a book that holds the same or a newer seq
        (an origin whose clock went back), where what the core has dropped by then
        decides."""
        o = self.column[self._signed[mid].record.node_id]
        self._order[mid] = order
        self.version += 1
        seqs, exps = self._arrays()
        to_core = np.empty(len(rows), np.bool_)
        taken = wave_write(o, mid, t0, rows, times, self._cells[:3], seqs, int(exps[mid]),
                           (self.held_floor, self.cover_floor), to_core)  # fmt: skip
        self._count(Verdict.ACCEPTED, taken)
        return to_core

    def wipe(self, v: int) -> None:
        """Node v's process died: its book goes with it. Entries still on their way were sent
        to the node it will be when it comes back (the network only schedules arrivals at a
        node that is up), so they stay: each was newer than anything the book held, so the
        empty book it finds accepts it too."""
        self.version += 1
        gone = self.cur_at[:, v] <= self.clock()
        self.cur[gone, v] = EMPTY
        self.prev[:, v] = EMPTY
        self.dropped[:, v] = EMPTY
        self.cover_floor[v] = UNKNOWN

    # -- one row --------------------------------------------------------------------------------

    def view(self, v: int) -> I32:
        """Row v's entries in force now (EMPTY where none), ignoring `dropped`."""
        return np.where(self.cur_at[:, v] <= self.clock(), self.cur[:, v], self.prev[:, v])

    def held(self, v: int) -> tuple[I32, Bools]:
        """Row v's entries in force now, and which of them its core has not dropped."""
        entries = self.view(v)
        return entries, (entries != EMPTY) & (entries != self.dropped[:, v])

    def offer_now(self, v: int, mid: int) -> Verdict:
        """`AnnouncementBook.offer`'s bookkeeping for an entry that arrives now, after the
        stateless checks passed."""
        o = self.column[self._signed[mid].record.node_id]
        self.version += 1
        exp = int(self._exp_arr[mid])
        self.held_floor[v] = min(int(self.held_floor[v]), exp)
        self.cover_floor[v] = min(int(self.cover_floor[v]), exp)
        cur, cur_at, prev = int(self.cur[o, v]), int(self.cur_at[o, v]), int(self.prev[o, v])
        now = 2 * self.now
        waiting = cur != EMPTY and (
            cur_at > now or (cur_at == now and self._order[cur] > self.handing)
        )
        in_force = prev if waiting else cur
        if in_force != EMPTY and in_force != int(self.dropped[o, v]):
            verdict = self._judge(mid, in_force)
            if verdict is not Verdict.ACCEPTED:
                return verdict
        self.dropped[o, v] = EMPTY  # whatever was dropped, this entry is fresh
        if waiting and self._seq[cur] > self._seq[mid]:
            self.prev[o, v] = mid  # in force until the newer one on its way arrives
        elif waiting:
            # The one on its way is overtaken. What it meets on arrival (this entry, or
            # nothing if the core drops this one first) is for its core to judge then.
            self._count(Verdict.ACCEPTED, -1)  # add_wave counted it in
            self.handed_back.append((v, cur, cur_at // 2))
            self.cur[o, v], self.cur_at[o, v] = mid, now - 1
        else:
            self.prev[o, v] = cur
            self.cur[o, v], self.cur_at[o, v] = mid, now - 1
        return Verdict.ACCEPTED

    def _judge(self, mid: int, held: int) -> Verdict:
        seq, held_seq = self._seq[mid], self._seq[held]
        if seq < held_seq:
            return Verdict.STALE
        if seq == held_seq:
            if mid == held:
                return Verdict.DUPLICATE
            return Verdict.CONFLICT
        return Verdict.ACCEPTED

    def covers_rows(self, rows: Sequence[int], cols: I64, local_now: I64) -> Bools:
        """For each row, whether it holds an unexpired entry from every column in `cols`
        (what `RowBook.covers` answers, for many books at once). A book whose cover floor
        is past its clock is answered from it; the others are scanned (one by one when few,
        else in one pass along the table's rows) and their floors renewed."""
        r = np.asarray(rows, np.int64)
        local = np.asarray(local_now, np.int64)
        if not len(r):
            return np.zeros(0, np.bool_)
        if not np.array_equal(cols, self._cover_cols):
            self._cover_cols = np.array(cols, np.int64)
            self.cover_floor.fill(UNKNOWN)
        floors = self.cover_floor
        ok = floors[r] > local
        if ok.all():
            return ok
        todo = np.flatnonzero(~ok)
        clock, exps = self.clock(), self._exp_arr
        if len(todo) * 8 > self.n:
            want = np.zeros(self.n, np.bool_)
            want[r[todo]] = True
            at = np.zeros(self.n, np.int64)
            at[r] = local
            out = np.empty(self.n, np.int64)
            rows_cover(want, clock, at, self._cover_cols, self._cells, exps, out)
            found = out[r[todo]]
        else:
            cols, cells = self._cover_cols, self._cells
            found = np.array(
                [row_covers(int(r[i]), clock, int(local[i]), cols, cells, exps) for i in todo],
                np.int64,
            )
        floors[r[todo]] = found
        ok[todo] = found != UNKNOWN
        return ok

    def columns_of(self, node_ids: frozenset[bytes]) -> I64 | None:
        """The columns of these node ids in order, or None if one is not in the table;
        remembered per set (the checkers ask it of every book with the same set)."""
        cols = self._cols_of.get(node_ids)
        if cols is None:
            column = self.column
            if not all(k in column for k in node_ids):
                return None
            if len(self._cols_of) >= 8:
                self._cols_of.clear()
            cols = self._cols_of[node_ids] = np.array(sorted(column[k] for k in node_ids),
                                                      np.int64)  # fmt: skip
        return cols

    def renew_held_floor(self, v: int) -> int:
        """Scan row v: its first expiry among the entries it holds now (NEVER if none); its
        held floor becomes the first among those and the entries on their way."""
        first, floor = row_expiries(v, self.clock(), self._cells, self._exp_arr)
        self.held_floor[v] = floor
        return int(first)


class RowBook:
    """Node v's book, read from and written to its row of a `BookTable`. It has the methods
    of `AnnouncementBook` that a core, the checkers and the state digest use, with the same
    answers."""

    def __init__(self, table: BookTable, v: int) -> None:
        self.table, self.v = table, v
        self.config = table.config
        self._held: tuple[tuple[int, int], I32, Bools] | None = None

    def _entries(self) -> tuple[I32, Bools]:
        """`table.held` for this row, reused while neither the clock nor the table moved (a
        core step asks twice: expire, then the next expiry)."""
        table = self.table
        key = (table.clock(), table.version)
        memo = self._held
        if memo is None or memo[0] != key:
            memo = self._held = (key, *table.held(self.v))
        return memo[1], memo[2]

    def __len__(self) -> int:
        return int(np.count_nonzero(self._entries()[1]))

    def offer(self, signed: Signed[CapacityAnnouncement], now_ms: int) -> Verdict:
        problem = check_announcement(signed, now_ms, self.config)
        if problem is not None:
            return problem
        table = self.table
        return table.offer_now(self.v, table.message(signed))

    def expire(self, now_ms: int) -> list[bytes]:
        table = self.table
        if table.held_floor[self.v] > now_ms:
            return []  # nothing held or on its way expires by now
        entries, held = self._entries()
        _, exps = table._arrays()
        due = held & (exps[entries] <= now_ms)
        if due.any():
            cols = np.flatnonzero(due)
            table.dropped[cols, self.v] = entries[cols]
            table.version += 1
            table.cover_floor[self.v] = UNKNOWN
            gone = sorted(table.keys[c] for c in cols.tolist())
        else:
            gone = []
        table.renew_held_floor(self.v)
        return gone

    def next_expiry_ms(self, before: int | None = None) -> int | None:
        table = self.table
        if before is not None and table.held_floor[self.v] >= before:
            return None
        first = table.renew_held_floor(self.v)
        if first >= NEVER or (before is not None and first >= before):
            return None
        return first

    def covers(self, node_ids: Set[bytes], now_ms: int) -> bool:
        cols = self.table.columns_of(frozenset(node_ids))
        if cols is None:
            return False
        return bool(self.table.covers_rows([self.v], cols, np.array([now_ms], np.int64))[0])

    def signed(self, node_id: bytes) -> Signed[CapacityAnnouncement] | None:
        table = self.table
        o = table.column.get(node_id)
        if o is None:
            return None
        v = self.v
        arrived = table.cur_at[o, v] <= table.clock()
        entry = int(table.cur[o, v]) if arrived else int(table.prev[o, v])
        if entry == EMPTY or entry == int(table.dropped[o, v]):
            return None
        return table._signed[entry]

    def get(self, node_id: bytes) -> CapacityAnnouncement | None:
        held = self.signed(node_id)
        return held.record if held is not None else None

    def live_ids(self, now_ms: int) -> I32:
        """The table's ids of what `live` answers, in the same (node id) order."""
        table = self.table
        entries, held = self._entries()
        _, exps = table._arrays()
        keep = held & (exps[entries] > now_ms)
        return entries[table.key_rank[keep[table.key_rank]]]

    def live(self, now_ms: int) -> list[CapacityAnnouncement]:
        signed = self.table._signed
        return [signed[e].record for e in self.live_ids(now_ms).tolist()]

    def state_bytes(self, now_ms: int) -> bytes:
        """`state_piece` of each of `live`'s records, joined: what the simulator's state
        digest hashes for this book (here in one gather instead of a record at a time)."""
        return self.table.state_pieces(self.live_ids(now_ms))

    def totals(self, now_ms: int) -> SupplyTotals:
        return summarise(self.live(now_ms))
