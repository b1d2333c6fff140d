"""The book table's loops over cells, compiled (numba), for `sim_harness.book_table`.

Why: a wave writes one origin's cell in every receiver's book and a core asks about every
origin's cell in its own book; in numpy each is a handful of gathers and temporaries over
n cells, which at 10,000 nodes and a thousand messages a simulated second cost more than
the rest of the simulator. Each function here is one pass over the cells with the table's
own rules, stated in `BookTable`; tests/sim/test_book_table.py holds the table to
`AnnouncementBook` through them.

Arrays are the table's: `cur`, `cur_at` (half ms), `prev`, `dropped` [origin, receiver]
int32, and `seqs`/`exps` per message id with the EMPTY (-1) item last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

F = TypeVar("F", bound=Callable[..., Any])
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

EMPTY = -1
NEVER = 1 << 62
UNKNOWN = -(1 << 62)
"""A floor that bounds nothing (see `BookTable.held_floor`)."""


def _compiled(fn: F) -> F:
    return cast(F, numba.njit(cache=True, nogil=True)(fn))


@_compiled
def wave_write(
    o: int,
    mid: int,
    t0: int,
    rows: I64,
    times: I64,
    cells: tuple[I32, I32, I32],
    seqs: I64,
    exp: int,
    floors: tuple[I64, I64],
    to_core: Bools,
) -> int:
    """Write message `mid` of origin `o` (published at true time t0, arriving at `times`)
    into each receiver in `rows` whose newest entry from `o` has arrived and is older; mark
    the others in `to_core`. Lowers both floors of the receivers written to `exp`. Returns
    how many took it."""
    cur, cur_at, prev = cells
    held_floor, cover_floor = floors
    seq = seqs[mid]
    taken = 0
    for i in range(len(rows)):
        v = rows[i]
        held = cur[o, v]
        held_seq = seqs[held] if held != EMPTY else -1
        if (held != EMPTY and cur_at[o, v] > 2 * t0) or held_seq >= seq:
            to_core[i] = True
            continue
        to_core[i] = False
        prev[o, v] = held
        cur[o, v] = mid
        cur_at[o, v] = 2 * times[i]
        if exp < held_floor[v]:
            held_floor[v] = exp
        if exp < cover_floor[v]:
            cover_floor[v] = exp
        taken += 1
    return taken


@_compiled
def _in_force(
    cur: I32, cur_at: I32, prev: I32, o: int, v: int, clock: int, exps: I64
) -> tuple[int, int]:
    """Cell [o, v] at `clock`: the entry in force (the newest if it has arrived, else the
    one before it), and the expiry of an entry still on its way there (NEVER if none)."""
    c = cur[o, v]
    if cur_at[o, v] <= clock:
        return c, NEVER
    return prev[o, v], exps[c] if c != EMPTY else NEVER


@_compiled
def row_expiries(
    v: int, clock: int, cells: tuple[I32, I32, I32, I32], exps: I64
) -> tuple[int, int]:
    """Receiver v's first expiry among the entries its book holds now (NEVER if none), and
    the first among those and the entries still on their way to it: a floor under every
    entry it will hold until something new is written (`BookTable.held_floor`)."""
    cur, cur_at, prev, dropped = cells
    first = NEVER
    floor = NEVER
    for o in range(cur.shape[0]):
        entry, coming = _in_force(cur, cur_at, prev, o, v, clock, exps)
        floor = min(floor, coming)
        if entry != EMPTY and entry != dropped[o, v] and exps[entry] < first:
            first = exps[entry]
    return first, min(first, floor)


@_compiled
def row_covers(
    v: int, clock: int, local_now: int, cols: I64, cells: tuple[I32, I32, I32, I32], exps: I64
) -> int:
    """Whether receiver v holds an unexpired entry from every origin in `cols`: UNKNOWN if
    not, else the first expiry among those entries and the ones on their way from them (a
    floor under their expiries until one is wiped or dropped: `BookTable.cover_floor`)."""
    cur, cur_at, prev, dropped = cells
    floor = NEVER
    for i in range(len(cols)):
        o = cols[i]
        entry, coming = _in_force(cur, cur_at, prev, o, v, clock, exps)
        floor = min(floor, coming)
        if entry == EMPTY or entry == dropped[o, v]:
            return UNKNOWN
        e = exps[entry]
        if e <= local_now:
            return UNKNOWN
        if e < floor:
            floor = e
    return floor


@_compiled
def rows_cover(
    want: Bools, clock: int, local_now: I64, cols: I64, cells: tuple[I32, I32, I32, I32],
    exps: I64, out: I64,
) -> None:  # fmt: skip
    """`row_covers` for every receiver v with want[v], in one pass along the origins' rows
    (contiguous memory: for when most receivers need it at once); local_now is per
    receiver. Results go to out[v]."""
    cur, cur_at, prev, dropped = cells
    n = cur.shape[1]
    for v in range(n):
        out[v] = NEVER if want[v] else UNKNOWN
    for i in range(len(cols)):
        o = cols[i]
        for v in range(n):
            floor = out[v]
            if floor == UNKNOWN:
                continue
            entry, coming = _in_force(cur, cur_at, prev, o, v, clock, exps)
            floor = min(floor, coming)
            if entry == EMPTY or entry == dropped[o, v] or exps[entry] <= local_now[v]:
                out[v] = UNKNOWN
                continue
            out[v] = min(floor, exps[entry])
