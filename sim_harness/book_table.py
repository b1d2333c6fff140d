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

EMPTY = -1
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
        self.cur = np.full((n, n), EMPTY, np.int32)
        self.cur_at = np.zeros((n, n), np.int32)
        self.prev = np.full((n, n), EMPTY, np.int32)
        self.dropped = np.full((n, n), EMPTY, np.int32)
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
        self._ids: dict[CapacityAnnouncement, int] = {}
        self.verdicts: dict[str, int] = {}
        """Verdicts of the deliveries applied here (the cores count the rest)."""

    # -- messages -------------------------------------------------------------------------------

    def message(self, signed: Signed[CapacityAnnouncement]) -> int:
        """The id of an announcement (the same record always has the same id)."""
        record = signed.record
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
        return mid

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
        seq = self._seq[mid]
        self._order[mid] = order
        self.version += 1
        held = self.cur[o, rows]
        seqs, _ = self._arrays()
        to_core = ((held != EMPTY) & (self.cur_at[o, rows] > 2 * t0)) | (seqs[held] >= seq)
        if to_core.any():
            take = ~to_core
            rows, held, times = rows[take], held[take], times[take]
        self._count(Verdict.ACCEPTED, len(rows))
        self.prev[o, rows] = held
        self.cur[o, rows] = mid
        self.cur_at[o, rows] = 2 * times
        return to_core  # type: ignore[no-any-return]

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
        (what `RowBook.covers` answers, for many books at once)."""
        r = np.asarray(rows, np.int64)
        if not len(r):
            return np.zeros(0, np.bool_)
        if not len(cols):
            return np.ones(len(r), np.bool_)
        arrays = (self.cur, self.cur_at, self.prev, self.dropped)
        if len(cols) == self.n and len(r) == self.n and (r == np.arange(self.n)).all():
            cur, cur_at, prev, dropped = arrays  # every book, every origin: no copies
        else:
            pick = np.ix_(cols, r)
            cur, cur_at, prev, dropped = (a[pick] for a in arrays)
        entries = np.where(cur_at <= self.clock(), cur, prev)
        _, exps = self._arrays()
        ok = (entries != dropped) & (exps[entries] > np.asarray(local_now, np.int64)[None, :])
        return ok.all(axis=0)  # type: ignore[no-any-return]


class RowBook:
    """Node v's book, read from and written to its row of a `BookTable`. It has the methods
    of `AnnouncementBook` that a core, the checkers and the state digest use, with the same
    answers."""

    def __init__(self, table: BookTable, v: int) -> None:
        self.table, self.v = table, v
        self.config = table.config
        self._covers_cache: tuple[frozenset[bytes], I64] | None = None
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
        entries, held = self._entries()
        _, exps = table._arrays()
        due = held & (exps[entries] <= now_ms)
        if not due.any():
            return []
        cols = np.flatnonzero(due)
        table.dropped[cols, self.v] = entries[cols]
        table.version += 1
        return sorted(table.keys[c] for c in cols.tolist())

    def next_expiry_ms(self) -> int | None:
        table = self.table
        entries, held = self._entries()
        if not held.any():
            return None
        _, exps = table._arrays()
        return int(exps[entries[held]].min())

    def covers(self, node_ids: Set[bytes], now_ms: int) -> bool:
        cache = self._covers_cache
        if cache is None or cache[0] != node_ids:
            column = self.table.column
            if not all(k in column for k in node_ids):
                return False
            cols = np.array(sorted(column[k] for k in node_ids), np.int64)
            cache = self._covers_cache = (frozenset(node_ids), cols)
        return bool(self.table.covers_rows([self.v], cache[1], np.array([now_ms], np.int64))[0])

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

    def live(self, now_ms: int) -> list[CapacityAnnouncement]:
        table = self.table
        entries, held = self._entries()
        _, exps = table._arrays()
        keep = held & (exps[entries] > now_ms)
        cols = table.key_rank[keep[table.key_rank]]
        return [table._signed[e].record for e in entries[cols].tolist()]

    def totals(self, now_ms: int) -> SupplyTotals:
        return summarise(self.live(now_ms))
