"""`RowBook` (a node's row of the simulator's shared book table) against `AnnouncementBook`,
the book every real node keeps: the same offers, at the same times, in the same order, give
the same verdicts and the same answers to every question a core or a checker asks. Waves
(`BookTable.add_wave`, a message written into many books at once before it arrives) must end
in what offering it on arrival would give."""

from __future__ import annotations

import random

import numpy as np
import pytest

from p2p.announcements import (
    AnnouncementBook,
    BookConfig,
    CapacityAnnouncement,
    GpuSpec,
    Verdict,
)
from p2p.identity import Identity
from p2p.wire import Signed, sign
from sim_harness.book_table import BookTable, RowBook

CHAIN = b"book-table-test"
NODES = 6
IDS = [Identity.derive("book-table", i) for i in range(NODES)]
KEYS = [x.public_key for x in IDS]


def announcement(
    i: int, seq: int, issued: int, ttl: int, free: int = 1
) -> Signed[CapacityAnnouncement]:
    ann = CapacityAnnouncement(
        node_id=KEYS[i],
        seq=seq,
        issued_ms=issued,
        expires_ms=issued + ttl,
        region="eu-west",
        gpus=(GpuSpec("A100", 2, 81_920),),
        price_per_gpu_hour=100,
        free_gpus=free,
        load_permille=0,
        gpu_source="declared",
        addrs=(),
    )
    return sign(ann, IDS[i], CHAIN)


def answers(book: object, now: int) -> tuple[object, ...]:
    """Everything a core, the checkers and the state digest read of a book."""
    assert isinstance(book, AnnouncementBook | RowBook)
    return (
        len(book),
        book.live(now),
        book.totals(now),
        book.next_expiry_ms(),
        book.covers(frozenset(KEYS[:3]), now),
        book.covers(frozenset(KEYS), now),
        [book.get(k) for k in KEYS],
    )


@pytest.mark.parametrize("seed", range(40))
def test_a_row_answers_like_the_real_book_under_random_offers(seed: int) -> None:
    rng = random.Random(seed)
    config = BookConfig(ttl_max_ms=5_000, clock_skew_max_ms=1_000)
    table = BookTable(KEYS, config)
    real, row = AnnouncementBook(CHAIN, config), RowBook(table, 2)
    made: list[Signed[CapacityAnnouncement]] = []
    now = 10_000
    for _ in range(300):
        now += rng.choice([0, 0, 1, 7, 150, 900])
        table.now = now
        local = now - rng.choice([0, 0, 0, 2_000])  # a receiver whose clock went back
        if made and rng.random() < 0.3:  # a copy or a replay of something seen before
            signed = rng.choice(made)
        else:
            i = rng.randrange(NODES)
            issued = now + rng.randint(-1_500, 1_200)
            signed = announcement(i, rng.randint(1, 40), issued, rng.choice([800, 3_000, 6_000]),
                                  rng.randint(0, 2))  # fmt: skip
            made.append(signed)
        assert row.offer(signed, local) is real.offer(signed, local)
        if rng.random() < 0.5:
            assert row.expire(local) == real.expire(local)
        assert answers(row, local) == answers(real, local)


def test_a_wave_written_ahead_shows_only_once_it_arrived() -> None:
    table = BookTable(KEYS, BookConfig())
    rows = [RowBook(table, v) for v in range(NODES)]
    first = announcement(0, 1, 0, 60_000)
    mid = table.message(first)
    table.add_wave(mid, 0, 1, np.array([1, 2, 3]), np.array([40, 25, 90]))
    table.now = 30
    assert [r.get(KEYS[0]) is not None for r in rows[1:4]] == [False, True, False]
    assert table.covers_rows([1, 2, 3], np.array([0]), np.array([100, 100, 100])).tolist() == [
        False,
        True,
        False,
    ]
    table.now = 90
    assert all(r.get(KEYS[0]) == first.record for r in rows[1:4])
    table.reading_first = True  # a sample queued before the deliveries due at 90
    assert rows[3].get(KEYS[0]) is None
    table.reading_first = False
    assert table.verdicts == {"accepted": 3}


def test_a_newer_wave_replaces_an_entry_only_when_it_arrives() -> None:
    table = BookTable(KEYS, BookConfig())
    row = RowBook(table, 1)
    old, new = announcement(0, 1, 0, 60_000), announcement(0, 2, 10_000, 60_000)
    table.add_wave(table.message(old), 0, 1, np.array([1]), np.array([50]))
    table.now = 10_000
    waiting = table.add_wave(table.message(new), 10_000, 2, np.array([1]), np.array([10_080]))
    assert not waiting.any()
    table.now = 10_050
    assert row.get(KEYS[0]) == old.record
    table.now = 10_080
    assert row.get(KEYS[0]) == new.record


def test_a_cell_still_waiting_sends_the_next_message_through_the_core() -> None:
    """Two messages of one origin on their way to one node at once: the second is the
    core's (its delivery event), and offering it resolves which arrives first."""
    table = BookTable(KEYS, BookConfig())
    row = RowBook(table, 1)
    slow, fast = announcement(0, 1, 0, 60_000), announcement(0, 2, 100, 60_000)
    slow_id = table.message(slow)
    table.add_wave(slow_id, 0, 1, np.array([1]), np.array([5_000]))  # delayed
    table.now = 100
    waiting = table.add_wave(table.message(fast), 100, 2, np.array([1]), np.array([160]))
    assert waiting.tolist() == [True]
    table.now = 160
    assert row.offer(fast, table.now + 0) is Verdict.ACCEPTED  # overtakes the slow one
    assert row.get(KEYS[0]) == fast.record
    # the slow one leaves the table: its core judges it when it lands, against what it
    # holds then (the fast one, unless the core has dropped that by then)
    assert table.handed_back == [(1, slow_id, 5_000)]
    assert table.verdicts == {}  # its wave's count withdrawn: the core counts it
    table.now = 5_000
    assert row.offer(slow, 5_000) is Verdict.STALE
    assert row.get(KEYS[0]) == fast.record


def test_a_crash_wipes_what_arrived_and_keeps_what_is_on_its_way() -> None:
    table = BookTable(KEYS, BookConfig())
    early, late = announcement(0, 1, 0, 60_000), announcement(3, 1, 0, 60_000)
    table.add_wave(table.message(early), 0, 1, np.array([1]), np.array([10]))
    table.add_wave(table.message(late), 0, 2, np.array([1]), np.array([900]))
    table.now = 500
    table.wipe(1)
    row = RowBook(table, 1)  # the restarted node's core
    assert row.get(KEYS[0]) is None and row.get(KEYS[3]) is None
    table.now = 900
    assert row.get(KEYS[3]) == late.record


def test_a_record_offered_again_after_its_core_dropped_it_is_held_again() -> None:
    """A receiver whose clock went back sees an expired, dropped record valid again."""
    config = BookConfig()
    table = BookTable(KEYS, config)
    row, real = RowBook(table, 1), AnnouncementBook(CHAIN, config)
    ann = announcement(0, 5, 1_000, 8_000)  # expires at 9_000
    table.now = 1_000
    assert row.offer(ann, 1_000) is real.offer(ann, 1_000) is Verdict.ACCEPTED
    table.now = 9_500
    assert row.expire(9_500) == real.expire(9_500) == [KEYS[0]]
    table.now = 9_600  # the clock was set back by 1.5 s
    assert row.offer(ann, 8_100) is real.offer(ann, 8_100) is Verdict.ACCEPTED
    assert row.get(KEYS[0]) == real.get(KEYS[0]) == ann.record
    assert row.offer(ann, 8_101) is real.offer(ann, 8_101) is Verdict.DUPLICATE


def test_a_wave_older_than_what_a_book_holds_goes_to_its_core() -> None:
    """An origin whose clock went back sends a lower seq: whether its receivers take it
    depends on what their cores have dropped by the time it lands, so they judge it."""
    table = BookTable(KEYS, BookConfig())
    high, low = announcement(0, 200, 0, 9_000), announcement(0, 150, 5_000, 30_000)
    table.add_wave(table.message(high), 0, 1, np.array([1, 2]), np.array([100, 100]))
    table.now = 9_100
    to_core = table.add_wave(
        table.message(low), 9_100, 2, np.array([1, 2]), np.array([9_150, 9_160])
    )
    assert to_core.tolist() == [True, True]
    row = RowBook(table, 1)
    assert row.expire(9_150) == [KEYS[0]]
    table.now = 9_150
    assert row.offer(low, 9_150) is Verdict.ACCEPTED  # the real book takes it now too
    assert row.get(KEYS[0]) == low.record


def test_too_many_nodes_for_a_book_is_refused() -> None:
    with pytest.raises(ValueError, match="exceed"):
        BookTable(KEYS, BookConfig(entries_max=NODES - 1))
