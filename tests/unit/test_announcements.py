"""The announcement book: verdicts, expiry, bounded size with deterministic eviction, matching
requirements, and determinism (the same offers in the same order give the same book)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from p2p import codec
from p2p.announcements import (
    AnnouncementBook,
    BookConfig,
    CapacityAnnouncement,
    GpuSpec,
    Requirement,
    SupplyTotals,
    Verdict,
    check_announcement,
    gossip_validator,
)
from p2p.identity import Identity
from p2p.wire import Signed, sign
from tests.strategies import capacity_announcements, mutated

CHAIN = b"gpumesh-test"
NODES = [Identity.derive("test-announcements", i) for i in range(8)]
NOW = 1_000_000
H100 = GpuSpec("NVIDIA H100", 8, 81_559)


def ann(ident: Identity = NODES[0], *, seq: int = 1, issued_ms: int = NOW,
        ttl_ms: int = 30_000, **changes: Any) -> CapacityAnnouncement:
    fields: dict[str, Any] = dict(
        node_id=ident.public_key, seq=seq, issued_ms=issued_ms, expires_ms=issued_ms + ttl_ms,
        region="eu-west", gpus=(H100,), price_per_gpu_hour=1_000, free_gpus=8,
        load_permille=0, gpu_source="declared", addrs=(),
    )
    fields.update(changes)
    return CapacityAnnouncement(**fields)


def signed(record: CapacityAnnouncement, ident: Identity | None = None,
           chain: bytes = CHAIN) -> Signed[CapacityAnnouncement]:
    signer = ident or next(n for n in NODES if n.public_key == record.node_id)
    return sign(record, signer, chain)


def node_ids(announcements: list[CapacityAnnouncement]) -> list[bytes]:
    return [a.node_id for a in announcements]


@pytest.fixture
def book() -> AnnouncementBook:
    return AnnouncementBook(CHAIN)


# ---------------------------------------------------------------------------------------------
# Verdicts


def test_accept_then_duplicate(book: AnnouncementBook) -> None:
    first = ann()
    assert book.offer(signed(first), NOW) is Verdict.ACCEPTED
    assert book.get(first.node_id) == first
    assert book.signed(first.node_id) == signed(first)
    assert book.offer(signed(first), NOW + 1) is Verdict.DUPLICATE
    assert len(book) == 1


def test_higher_seq_replaces_and_lower_seq_is_stale(book: AnnouncementBook) -> None:
    assert book.offer(signed(ann(seq=5)), NOW) is Verdict.ACCEPTED
    assert book.offer(signed(ann(seq=4, price_per_gpu_hour=1)), NOW) is Verdict.STALE
    assert book.offer(signed(ann(seq=0)), NOW) is Verdict.STALE
    assert book.get(NODES[0].public_key) == ann(seq=5)
    newer = ann(seq=6, price_per_gpu_hour=2_000)
    assert book.offer(signed(newer), NOW) is Verdict.ACCEPTED
    assert book.get(NODES[0].public_key) == newer
    assert len(book) == 1


def test_same_seq_different_content_is_a_conflict(book: AnnouncementBook) -> None:
    assert book.offer(signed(ann(seq=5)), NOW) is Verdict.ACCEPTED
    assert book.offer(signed(ann(seq=5, free_gpus=7)), NOW) is Verdict.CONFLICT
    assert book.get(NODES[0].public_key) == ann(seq=5)  # the first statement stays


def test_expiry_boundary(book: AnnouncementBook) -> None:
    record = ann(issued_ms=NOW - 30_000, ttl_ms=30_000)  # expires exactly now
    assert book.offer(signed(record), NOW) is Verdict.EXPIRED
    assert book.offer(signed(record), NOW - 1) is Verdict.ACCEPTED
    assert book.offer(signed(ann(issued_ms=0, ttl_ms=1)), NOW) is Verdict.EXPIRED


def test_future_boundary(book: AnnouncementBook) -> None:
    skew = book.config.clock_skew_max_ms
    assert book.offer(signed(ann(issued_ms=NOW + skew + 1)), NOW) is Verdict.FROM_FUTURE
    assert book.offer(signed(ann(issued_ms=NOW + skew)), NOW) is Verdict.ACCEPTED


def test_ttl_boundary(book: AnnouncementBook) -> None:
    ttl_max = book.config.ttl_max_ms
    assert book.offer(signed(ann(ttl_ms=ttl_max + 1)), NOW) is Verdict.TTL_TOO_LONG
    assert book.offer(signed(ann(ttl_ms=ttl_max)), NOW) is Verdict.ACCEPTED


def test_record_for_another_node_is_a_signer_mismatch(book: AnnouncementBook) -> None:
    """Mallory signs (validly) a statement that claims to be Alice's."""
    forged = signed(ann(NODES[0]), ident=NODES[1])
    assert book.offer(forged, NOW) is Verdict.SIGNER_MISMATCH
    assert book.offer_bytes(forged.encode(), NOW)[0] is Verdict.SIGNER_MISMATCH
    assert len(book) == 0


def test_offer_bytes_verdicts(book: AnnouncementBook) -> None:
    good = signed(ann()).encode()
    assert book.offer_bytes(good, NOW) == (Verdict.ACCEPTED, "accepted")
    assert book.offer_bytes(good, NOW) == (Verdict.DUPLICATE, "duplicate")

    verdict, reason = book.offer_bytes(b"\x00garbage", NOW)
    assert verdict is Verdict.MALFORMED and "msgpack" in reason
    verdict, _ = book.offer_bytes(signed(ann(NODES[1]), chain=b"other-chain").encode(), NOW)
    assert verdict is Verdict.MALFORMED

    items = codec.unpack(signed(ann(NODES[1])).encode())
    assert isinstance(items, list)
    items[6] = bytes(64)
    verdict, reason = book.offer_bytes(codec.pack(items), NOW)
    assert verdict is Verdict.BAD_SIGNATURE and "signature" in reason
    assert node_ids(book.live(NOW)) == [NODES[0].public_key]


def test_oversize_gossip_is_malformed(book: AnnouncementBook) -> None:
    verdict, reason = book.offer_bytes(codec.pack(b"x" * 9000), NOW)
    assert verdict is Verdict.MALFORMED and "exceeds" in reason


def test_only_misbehaviour_penalises_the_sender() -> None:
    misbehaviour = {Verdict.CONFLICT, Verdict.SIGNER_MISMATCH, Verdict.MALFORMED,
                    Verdict.BAD_SIGNATURE, Verdict.TTL_TOO_LONG, Verdict.FROM_FUTURE}
    honest = {Verdict.ACCEPTED, Verdict.DUPLICATE, Verdict.STALE, Verdict.EXPIRED,
              Verdict.BOOK_FULL}
    assert misbehaviour | honest == set(Verdict)
    assert {v for v in Verdict if v.penalises_sender} == misbehaviour


def test_check_announcement_is_stateless_and_ordered() -> None:
    config = BookConfig()
    assert check_announcement(signed(ann()), NOW, config) is None
    # Several problems at once: the signer is checked first, then the TTL, then the clock.
    both = signed(ann(NODES[0], issued_ms=NOW + 50_000, ttl_ms=200_000), ident=NODES[1])
    assert check_announcement(both, NOW, config) is Verdict.SIGNER_MISMATCH
    long_and_future = signed(ann(issued_ms=NOW + 50_000, ttl_ms=200_000))
    assert check_announcement(long_and_future, NOW, config) is Verdict.TTL_TOO_LONG


def test_gossip_validator() -> None:
    config = BookConfig()
    assert gossip_validator(signed(ann()).encode(), CHAIN, NOW, config)
    assert not gossip_validator(signed(ann()).encode(), b"other", NOW, config)
    assert not gossip_validator(signed(ann()).encode(), CHAIN, NOW + 30_000, config)
    assert not gossip_validator(signed(ann(NODES[0]), NODES[1]).encode(), CHAIN, NOW, config)
    assert not gossip_validator(b"", CHAIN, NOW, config)


# ---------------------------------------------------------------------------------------------
# Expiry and the size bound


def test_expire_drops_by_time_and_returns_sorted_ids(book: AnnouncementBook) -> None:
    for i, ttl in enumerate([10, 20, 30, 20]):
        assert book.offer(signed(ann(NODES[i], ttl_ms=ttl)), NOW) is Verdict.ACCEPTED
    assert book.expire(NOW + 9) == []
    gone = book.expire(NOW + 20)
    assert gone == sorted([NODES[0].public_key, NODES[1].public_key, NODES[3].public_key])
    assert len(book) == 1 and book.get(NODES[2].public_key) is not None
    assert book.expire(NOW + 30) == [NODES[2].public_key]
    assert len(book) == 0


def test_live_hides_expired_entries_before_expire_runs(book: AnnouncementBook) -> None:
    book.offer(signed(ann(NODES[0], ttl_ms=10)), NOW)
    book.offer(signed(ann(NODES[1], ttl_ms=20)), NOW)
    assert node_ids(book.live(NOW + 10)) == [NODES[1].public_key]
    assert len(book) == 2  # still held until expire()


def test_full_book_evicts_the_soonest_expiry() -> None:
    book = AnnouncementBook(CHAIN, BookConfig(entries_max=3))
    for i, ttl in enumerate([300, 100, 200]):
        assert book.offer(signed(ann(NODES[i], ttl_ms=ttl)), NOW) is Verdict.ACCEPTED
    # A newcomer that lasts longer than the soonest entry takes its place.
    assert book.offer(signed(ann(NODES[3], ttl_ms=150)), NOW) is Verdict.ACCEPTED
    assert book.get(NODES[1].public_key) is None
    assert len(book) == 3
    # A newcomer expiring sooner than everyone held is refused and changes nothing.
    before = book.live(NOW)
    assert book.offer(signed(ann(NODES[4], ttl_ms=149)), NOW) is Verdict.BOOK_FULL
    assert book.live(NOW) == before
    # Known nodes still update a full book without evicting anyone.
    assert book.offer(signed(ann(NODES[0], seq=2, ttl_ms=1)), NOW) is Verdict.ACCEPTED
    assert len(book) == 3 and book.get(NODES[0].public_key) == ann(NODES[0], seq=2, ttl_ms=1)


def test_full_book_ties_on_expiry_break_by_node_id() -> None:
    book = AnnouncementBook(CHAIN, BookConfig(entries_max=2))
    low, mid, high = sorted(NODES[:3], key=lambda n: n.public_key)
    book.offer(signed(ann(mid, ttl_ms=100)), NOW)
    book.offer(signed(ann(high, ttl_ms=500)), NOW)
    # Same expiry as the soonest entry: the smaller node id counts as expiring first.
    assert book.offer(signed(ann(low, ttl_ms=100)), NOW) is Verdict.BOOK_FULL
    book2 = AnnouncementBook(CHAIN, BookConfig(entries_max=2))
    book2.offer(signed(ann(low, ttl_ms=100)), NOW)
    book2.offer(signed(ann(high, ttl_ms=500)), NOW)
    assert book2.offer(signed(ann(mid, ttl_ms=100)), NOW) is Verdict.ACCEPTED
    assert node_ids(book2.live(NOW)) == [mid.public_key, high.public_key]


def test_full_book_expires_before_evicting() -> None:
    book = AnnouncementBook(CHAIN, BookConfig(entries_max=2))
    book.offer(signed(ann(NODES[0], ttl_ms=10)), NOW)
    book.offer(signed(ann(NODES[1], ttl_ms=500)), NOW)
    # At NOW+10 the first is dead: room is made without evicting a live entry, so even a
    # newcomer that expires sooner than NODES[1] gets in.
    assert book.offer(signed(ann(NODES[2], issued_ms=NOW + 10, ttl_ms=1)), NOW + 10) \
        is Verdict.ACCEPTED
    assert set(node_ids(book.live(NOW + 10))) == {NODES[1].public_key, NODES[2].public_key}


# ---------------------------------------------------------------------------------------------
# Matching requirements


@pytest.fixture
def market() -> AnnouncementBook:
    """Five nodes; NODES[2] and NODES[3] tie on price and load, so node id decides."""
    book = AnnouncementBook(CHAIN)
    offers = [
        ann(NODES[0], region="eu-west", gpus=(GpuSpec("NVIDIA H100", 8, 81_559),),
            free_gpus=8, price_per_gpu_hour=300, load_permille=100),
        ann(NODES[1], region="us-east", gpus=(GpuSpec("NVIDIA A100", 4, 40_960),),
            free_gpus=2, price_per_gpu_hour=200, load_permille=500),
        ann(NODES[2], region="eu-west", gpus=(GpuSpec("nvidia h100", 2, 81_559),),
            free_gpus=2, price_per_gpu_hour=200, load_permille=100),
        ann(NODES[3], region="eu-west",
            gpus=(GpuSpec("NVIDIA A100", 2, 81_920), GpuSpec("NVIDIA H100", 2, 81_559)),
            free_gpus=4, price_per_gpu_hour=200, load_permille=100),
        ann(NODES[4], region="eu-west", gpus=(GpuSpec("RTX 4090", 1, 24_564),),
            free_gpus=0, price_per_gpu_hour=10, load_permille=0),
        ann(NODES[5], region="eu-west", gpus=(GpuSpec("NVIDIA H100", 8, 81_559),),
            free_gpus=8, price_per_gpu_hour=1, load_permille=0, ttl_ms=10),  # expires soon
    ]
    for offer in offers:
        assert book.offer(signed(offer), NOW) is Verdict.ACCEPTED
    return book


def tie_order() -> list[Identity]:
    return sorted([NODES[2], NODES[3]], key=lambda n: n.public_key)


def expect(*idents: Identity) -> list[bytes]:
    return [i.public_key for i in idents]


LATER = NOW + 10  # NODES[5] has expired


def test_candidates_sorted_by_price_then_load_then_node_id(market: AnnouncementBook) -> None:
    got = node_ids(market.candidates(Requirement(), LATER))
    assert got == expect(*tie_order(), NODES[1], NODES[0])  # NODES[4] has no free GPU
    assert node_ids(market.candidates(Requirement(), NOW))[0] == NODES[5].public_key


def test_candidates_by_count(market: AnnouncementBook) -> None:
    assert node_ids(market.candidates(Requirement(gpu_count=3), LATER)) == expect(
        NODES[3], NODES[0])
    assert node_ids(market.candidates(Requirement(gpu_count=5), LATER)) == expect(NODES[0])
    assert market.candidates(Requirement(gpu_count=9), LATER) == []


def test_candidates_by_memory(market: AnnouncementBook) -> None:
    need = Requirement(min_memory_mib=81_000)
    assert node_ids(market.candidates(need, LATER)) == expect(*tie_order(), NODES[0])
    need = Requirement(gpu_count=3, min_memory_mib=81_560)  # only the 2 A100s of NODES[3]
    assert market.candidates(need, LATER) == []
    need = Requirement(gpu_count=2, min_memory_mib=81_560)
    assert node_ids(market.candidates(need, LATER)) == expect(NODES[3])


def test_candidates_by_model_ignore_case(market: AnnouncementBook) -> None:
    for model in ("NVIDIA H100", "nvidia h100", "Nvidia H100"):
        got = node_ids(market.candidates(Requirement(gpu_model=model), LATER))
        assert got == expect(*tie_order(), NODES[0])
    assert market.candidates(Requirement(gpu_model="H100"), LATER) == []  # exact name only
    # NODES[3] has 4 free GPUs but only 2 H100s.
    got = node_ids(market.candidates(Requirement(gpu_count=3, gpu_model="NVIDIA H100"), LATER))
    assert got == expect(NODES[0])


def test_candidates_by_region_and_price(market: AnnouncementBook) -> None:
    assert node_ids(market.candidates(Requirement(region="us-east"), LATER)) == expect(NODES[1])
    assert market.candidates(Requirement(region="EU-WEST"), LATER) == []  # regions are exact
    got = node_ids(market.candidates(Requirement(max_price_per_gpu_hour=200), LATER))
    assert got == expect(*tie_order(), NODES[1])
    assert market.candidates(Requirement(max_price_per_gpu_hour=199), LATER) == []


def test_totals(market: AnnouncementBook) -> None:
    assert market.totals(LATER) == SupplyTotals(
        nodes=5, gpus=8 + 4 + 2 + 4 + 1, free_gpus=8 + 2 + 2 + 4 + 0,
        gpus_by_model=(("NVIDIA A100", 6), ("NVIDIA H100", 10), ("RTX 4090", 1),
                       ("nvidia h100", 2)),
    )
    assert market.totals(NOW).nodes == 6
    assert market.totals(NOW + 10**9) == SupplyTotals(0, 0, 0, ())


# ---------------------------------------------------------------------------------------------
# Determinism


@st.composite
def offers(draw: st.DrawFn) -> list[Signed[CapacityAnnouncement]]:
    """Offers from a few nodes with colliding seqs and times, so every verdict can occur."""
    result = []
    for _ in range(draw(st.integers(1, 16))):
        ident = NODES[draw(st.integers(0, 5))]
        record = draw(capacity_announcements(
            node_id=st.just(ident.public_key), seq=st.integers(0, 4),
            issued_ms=st.integers(NOW - 5_000, NOW + 12_000), ttl_ms=st.integers(1, 130_000)))
        result.append(signed(record, ident))
    return result


@settings(max_examples=40, deadline=None)
@given(st.data(), offers(), st.integers(1, 6))
def test_same_offers_in_same_order_give_the_same_book(data: st.DataObject,
                                                      sequence: list[Signed[Any]],
                                                      entries_max: int) -> None:
    shuffled = data.draw(st.permutations(sequence))
    config = BookConfig(entries_max=entries_max)
    books = [AnnouncementBook(CHAIN, config), AnnouncementBook(CHAIN, config)]
    verdicts: list[list[Verdict]] = [[], []]
    for offer in shuffled:
        for book, log in zip(books, verdicts, strict=True):
            log.append(book.offer(offer, NOW))
    assert verdicts[0] == verdicts[1]
    for now in (NOW, NOW + 60_000):
        assert books[0].live(now) == books[1].live(now)
        assert books[0].expire(now) == books[1].expire(now)
    assert len(books[0]) == len(books[1]) <= entries_max


# ---------------------------------------------------------------------------------------------
# The book as a state machine


class BookMachine(RuleBasedStateMachine):
    """Random offers, raw bytes and time steps against a small book. After every step:
    the size bound holds, each held entry carries the highest seq accepted for its node
    since it entered the book, and only ACCEPTED changes what the book shows."""

    POOL = NODES
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.config = BookConfig(entries_max=3, ttl_max_ms=1_000, clock_skew_max_ms=100)
        self.book = AnnouncementBook(CHAIN, self.config)
        self.now = 0
        self.highest: dict[bytes, int] = {}

    @initialize(start=st.integers(0, 10**12))
    def start(self, start: int) -> None:
        self.now = start

    @rule(target=sent, node=st.integers(0, 7), seq=st.integers(0, 3),
          issued_offset=st.integers(-300, 150), ttl=st.integers(1, 1_100),
          price=st.integers(0, 2), impostor=st.sampled_from([False] * 9 + [True]))
    def offer(self, node: int, seq: int, issued_offset: int, ttl: int, price: int,
              impostor: bool) -> Signed[CapacityAnnouncement]:
        ident = self.POOL[node]
        record = ann(ident, seq=seq, issued_ms=max(0, self.now + issued_offset), ttl_ms=ttl,
                     price_per_gpu_hour=price)
        signer = self.POOL[(node + 1) % len(self.POOL)] if impostor else ident
        offered = sign(record, signer, CHAIN)
        self._offer(offered)
        return offered

    @rule(offered=sent)
    def replay(self, offered: Signed[CapacityAnnouncement]) -> None:
        """Gossip duplicates and replays: an earlier offer again, at a later time."""
        self._offer(offered)

    def _offer(self, offered: Signed[CapacityAnnouncement]) -> None:
        record = offered.record
        held = self.book.get(record.node_id)
        before = self.book.live(self.now)
        verdict = self.book.offer(offered, self.now)

        expected = (
            Verdict.SIGNER_MISMATCH if offered.signer != record.node_id
            else Verdict.TTL_TOO_LONG if record.expires_ms - record.issued_ms
            > self.config.ttl_max_ms
            else Verdict.FROM_FUTURE if record.issued_ms
            > self.now + self.config.clock_skew_max_ms
            else Verdict.EXPIRED if record.expires_ms <= self.now
            else None
        )
        if expected is not None:
            assert verdict is expected
        elif held is not None:
            assert verdict is (Verdict.STALE if record.seq < held.seq
                               else Verdict.DUPLICATE if record == held
                               else Verdict.CONFLICT if record.seq == held.seq
                               else Verdict.ACCEPTED)
        else:
            self._check_newcomer(record, verdict, before)

        if verdict is Verdict.ACCEPTED:
            assert self.book.get(record.node_id) == record
            self.highest[record.node_id] = max(self.highest.get(record.node_id, 0), record.seq)
        else:
            assert self.book.live(self.now) == before

    def _check_newcomer(self, record: CapacityAnnouncement, verdict: Verdict,
                        before: list[CapacityAnnouncement]) -> None:
        """A node not held: accepted if there is room after expiry, else only if it outlives
        the soonest entry (ties by node id), which it then replaces."""
        after = self.book.live(self.now)
        if len(before) < self.config.entries_max:
            assert verdict is Verdict.ACCEPTED
            assert node_ids(after) == sorted([*node_ids(before), record.node_id])
            return
        victim = min(before, key=lambda a: (a.expires_ms, a.node_id))
        if (victim.expires_ms, victim.node_id) < (record.expires_ms, record.node_id):
            assert verdict is Verdict.ACCEPTED
            assert node_ids(after) == sorted(
                [n for n in node_ids(before) if n != victim.node_id] + [record.node_id])
        else:
            assert verdict is Verdict.BOOK_FULL

    @rule(data=st.data(), node=st.integers(0, 7))
    def offer_damaged_bytes(self, data: st.DataObject, node: int) -> None:
        ident = self.POOL[node]
        wire = sign(ann(ident, seq=7, issued_ms=self.now), ident, CHAIN).encode()
        bad = data.draw(mutated(wire))
        before = self.book.live(self.now)
        verdict, _ = self.book.offer_bytes(bad, self.now)
        assert verdict in (Verdict.MALFORMED, Verdict.BAD_SIGNATURE)
        assert self.book.live(self.now) == before

    @rule(dt=st.integers(0, 300))
    def advance(self, dt: int) -> None:
        self.now += dt

    @precondition(lambda self: len(self.book.live(self.now)) > 0)
    @rule()
    def advance_to_the_next_expiry(self) -> None:
        """Land exactly on a boundary: an entry is dead at its expires_ms."""
        self.now = min(a.expires_ms for a in self.book.live(self.now))

    @precondition(lambda self: len(self.book) > 0)
    @rule()
    def expire(self) -> None:
        held_before = {n.public_key: self.book.get(n.public_key) for n in self.POOL}
        gone = self.book.expire(self.now)
        assert gone == sorted(gone)
        for node_id, record in held_before.items():
            if record is None:
                continue
            dead = record.expires_ms <= self.now
            assert (node_id in gone) == dead
            assert (self.book.get(node_id) is None) == dead
        assert self.book.live(self.now) == [
            r for _, r in sorted(held_before.items()) if r is not None and r.expires_ms > self.now]

    @invariant()
    def bounded(self) -> None:
        assert len(self.book) <= self.config.entries_max

    @invariant()
    def each_entry_has_its_nodes_highest_seq(self) -> None:
        for ident in self.POOL:
            record = self.book.get(ident.public_key)
            if record is None:
                self.highest.pop(ident.public_key, None)  # forgotten: a new history starts
            else:
                assert record.seq == self.highest[ident.public_key]

    @invariant()
    def live_is_sorted_and_unexpired(self) -> None:
        live = self.book.live(self.now)
        assert node_ids(live) == sorted(node_ids(live))
        assert all(a.expires_ms > self.now for a in live)


BookMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                         deadline=None)
TestBookMachine = BookMachine.TestCase
