"""Signed capacity announcements and the pure book that turns them into a view of supply.

Every node gossips a `CapacityAnnouncement` (GPUs, region, asking price, free GPUs, load)
signed with its key. Each node's `AnnouncementBook` validates, dedupes and expires them, and
answers "which nodes could take a job that needs X". The book is a pure state machine: time
comes in as `now_ms`, and the same offers in the same order always give the same book.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Protocol

from p2p.errors import BadSignature, DecodeError
from p2p.wire import (
    Blob,
    Nested,
    Record,
    Seq,
    Signed,
    Struct,
    Text,
    UInt,
    computed_once,
    decode_signed,
    register,
    wire_field,
)

TOPIC_CAPACITY = "gpumesh/capacity/1"
GPU_MODELS_MAX = 16
ADDRS_MAX = 8
ANNOUNCEMENT_BYTES_MAX = 8 * 1024


@dataclass(frozen=True)
class GpuSpec(Struct):
    """One GPU model on a node: how many, and how much memory each has."""

    model: str = wire_field(Text(64))
    count: int = wire_field(UInt(1024))
    memory_mib: int = wire_field(UInt(2**24))

    def invariant_violation(self) -> str | None:
        if not self.model:
            return "model must not be empty"
        if self.count == 0:
            return "count must be at least 1"
        return None


@register
@dataclass(frozen=True)
class CapacityAnnouncement(Record):
    """A node's signed statement of what it offers, valid until `expires_ms`."""

    KIND = 1
    VERSION = 1

    node_id: bytes = wire_field(Blob(32, 32))
    """The announcer's ed25519 public key; must equal the envelope's signer."""
    seq: int = wire_field(UInt())
    """Strictly increasing per node; the book keeps only the highest (replays are stale)."""
    issued_ms: int = wire_field(UInt())
    expires_ms: int = wire_field(UInt())
    region: str = wire_field(Text(32))
    gpus: tuple[GpuSpec, ...] = wire_field(Seq(Nested(GpuSpec), GPU_MODELS_MAX))
    price_per_gpu_hour: int = wire_field(UInt())
    """Asking price in integer base units of the token, per GPU-hour."""
    free_gpus: int = wire_field(UInt(2**16))
    load_permille: int = wire_field(UInt(1000))
    gpu_source: str = wire_field(Text(16))
    """Where the inventory came from: "nvidia-smi", "nvml" or "declared" (unverified)."""
    addrs: tuple[str, ...] = wire_field(Seq(Text(256), ADDRS_MAX))
    """Multiaddrs the node listens on, so peers learn how to dial it."""

    def invariant_violation(self) -> str | None:
        if self.expires_ms <= self.issued_ms:
            return "expires_ms must be after issued_ms"
        if self.free_gpus > self.gpu_total:
            return f"free_gpus {self.free_gpus} exceeds the {self.gpu_total} GPUs announced"
        gpus = self.gpus
        if len(gpus) > 1 and len({g.model for g in gpus}) != len(gpus):  # one is unique
            return "each GPU model may appear once"
        return None

    @computed_once
    def gpu_total(self) -> int:
        """Cached on first use (the record is immutable): read once per delivery by every
        core in a simulation. Not a field, so equality and the wire form ignore it."""
        return sum(g.count for g in self.gpus)

    @computed_once
    def expiry_key(self) -> tuple[int, bytes]:
        """(expires_ms, node_id), the book's expiry-heap item: built once per record, so the
        books of a thousand simulated nodes holding this record share one tuple."""
        return (self.expires_ms, self.node_id)


class Verdict(enum.Enum):
    """What the book made of an offered announcement. Only ACCEPTED changes the book."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    STALE = "stale"
    """Older than what we hold for that node (a replay, or overtaken on the way)."""
    CONFLICT = "conflict"
    """Same seq as held but different content: the node signed two statements."""
    EXPIRED = "expired"
    FROM_FUTURE = "from_future"
    TTL_TOO_LONG = "ttl_too_long"
    SIGNER_MISMATCH = "signer_mismatch"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    BOOK_FULL = "book_full"

    @property
    def penalises_sender(self) -> bool:
        """Verdicts no honest node produces: the publisher is misbehaving."""
        return self in (
            Verdict.CONFLICT,
            Verdict.SIGNER_MISMATCH,
            Verdict.MALFORMED,
            Verdict.BAD_SIGNATURE,
            Verdict.TTL_TOO_LONG,
            Verdict.FROM_FUTURE,
        )


@dataclass(frozen=True)
class BookConfig:
    entries_max: int = 10_000
    ttl_max_ms: int = 120_000
    clock_skew_max_ms: int = 10_000
    """How far in our future an issue time may lie before we call it forged."""


@dataclass(frozen=True)
class Requirement:
    """What a job needs from one node."""

    gpu_count: int = 1
    min_memory_mib: int = 0
    gpu_model: str | None = None
    """Exact model name, case-insensitive; None accepts any model."""
    region: str | None = None
    max_price_per_gpu_hour: int | None = None


@dataclass(frozen=True)
class SupplyTotals:
    nodes: int
    gpus: int
    free_gpus: int
    gpus_by_model: tuple[tuple[str, int], ...]


def check_announcement(
    signed: Signed[CapacityAnnouncement], now_ms: int, config: BookConfig
) -> Verdict | None:
    """Stateless checks (also run as the gossip validator); None means it may be offered."""
    ann = signed.record
    if ann.node_id != signed.signer:
        return Verdict.SIGNER_MISMATCH
    if ann.expires_ms - ann.issued_ms > config.ttl_max_ms:
        return Verdict.TTL_TOO_LONG
    if ann.issued_ms > now_ms + config.clock_skew_max_ms:
        return Verdict.FROM_FUTURE
    if ann.expires_ms <= now_ms:
        return Verdict.EXPIRED
    return None


def decode_announcement(data: bytes, chain_id: bytes) -> Signed[CapacityAnnouncement]:
    """Decode and verify; raises DecodeError (or BadSignature) on anything wrong."""
    return decode_signed(
        data, chain_id=chain_id, expect=CapacityAnnouncement, max_bytes=ANNOUNCEMENT_BYTES_MAX
    )


class Book(Protocol):
    """What a node's core needs of its book. `AnnouncementBook` is the book; a simulator may
    give its cores another implementation with the same answers (sim_harness.book_table)."""

    def __len__(self) -> int: ...
    def offer(self, signed: Signed[CapacityAnnouncement], now_ms: int) -> Verdict: ...
    def expire(self, now_ms: int) -> list[bytes]: ...
    def next_expiry_ms(self, before: int | None = None) -> int | None: ...
    def covers(self, node_ids: Set[bytes], now_ms: int) -> bool: ...
    def get(self, node_id: bytes) -> CapacityAnnouncement | None: ...
    def signed(self, node_id: bytes) -> Signed[CapacityAnnouncement] | None: ...
    def live(self, now_ms: int) -> list[CapacityAnnouncement]: ...
    def totals(self, now_ms: int) -> SupplyTotals: ...


class AnnouncementBook:
    """The latest valid announcement of each node, bounded in size, pure.

    Expiry is tracked with a lazy min-heap of (expires_ms, node_id): a replaced or evicted
    entry leaves a stale heap item behind, dropped when it surfaces. So `expire` and
    `next_expiry_ms` cost O(log n) per change instead of a scan of the whole book on every
    step (which made a 1,000-node book cost ~200 us per gossip message), with exactly the
    same results as a scan.
    """

    def __init__(self, chain_id: bytes, config: BookConfig | None = None) -> None:
        self.chain_id = chain_id
        self.config = config or BookConfig()
        self._entries: dict[bytes, Signed[CapacityAnnouncement]] = {}
        self._expiries: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def offer_bytes(self, data: bytes, now_ms: int) -> tuple[Verdict, str]:
        """Decode, verify and offer gossip bytes; returns the verdict and a reason for logs."""
        try:
            signed = decode_announcement(data, self.chain_id)
        except BadSignature as exc:
            return Verdict.BAD_SIGNATURE, str(exc)
        except DecodeError as exc:
            return Verdict.MALFORMED, str(exc)
        verdict = self.offer(signed, now_ms)
        return verdict, verdict.value

    def offer(self, signed: Signed[CapacityAnnouncement], now_ms: int) -> Verdict:
        problem = check_announcement(signed, now_ms, self.config)
        if problem is not None:
            return problem
        ann = signed.record
        held = self._entries.get(ann.node_id)
        if held is not None:
            if ann.seq < held.record.seq:
                return Verdict.STALE
            if ann.seq == held.record.seq:
                return Verdict.DUPLICATE if ann == held.record else Verdict.CONFLICT
        elif len(self._entries) >= self.config.entries_max:
            self.expire(now_ms)
            if len(self._entries) >= self.config.entries_max and not self._evict_for(ann):
                return Verdict.BOOK_FULL
        self._entries[ann.node_id] = signed
        self._track_expiry(ann)
        return Verdict.ACCEPTED

    def _track_expiry(self, ann: CapacityAnnouncement) -> None:
        heap = self._expiries
        heapq.heappush(heap, ann.expiry_key)
        if len(heap) > 2 * len(self._entries) + 64:  # bounded: rebuild without stale items
            self._expiries = [s.record.expiry_key for s in self._entries.values()]
            heapq.heapify(self._expiries)

    def _is_current(self, item: tuple[int, bytes]) -> bool:
        held = self._entries.get(item[1])
        return held is not None and held.record.expires_ms == item[0]

    def _evict_for(self, ann: CapacityAnnouncement) -> bool:
        """Make room by dropping the entry that expires first, if it expires before `ann`."""
        victim = min(self._entries.values(), key=lambda s: (s.record.expires_ms, s.signer))
        if (victim.record.expires_ms, victim.signer) >= (ann.expires_ms, ann.node_id):
            return False
        del self._entries[victim.signer]
        return True

    def expire(self, now_ms: int) -> list[bytes]:
        """Drop announcements whose time is up; returns the node ids dropped, sorted."""
        heap = self._expiries
        if not heap or heap[0][0] > now_ms:
            return []
        gone = []
        while heap and heap[0][0] <= now_ms:
            item = heapq.heappop(heap)
            if self._is_current(item):
                del self._entries[item[1]]
                gone.append(item[1])
        gone.sort()
        return gone

    def next_expiry_ms(self, before: int | None = None) -> int | None:
        """When the first held announcement expires: None for an empty book and, given
        `before`, when none expires before that (a caller that only wants the earlier of the
        two lets a book answer without finding the exact first expiry)."""
        heap, entries = self._expiries, self._entries
        while heap:
            expires_ms, node_id = heap[0]
            held = entries.get(node_id)
            if held is not None and held.record.expires_ms == expires_ms:
                return expires_ms if before is None or expires_ms < before else None
            heapq.heappop(heap)
        return None

    def covers(self, node_ids: Set[bytes], now_ms: int) -> bool:
        """True iff the book holds an unexpired announcement from every node in `node_ids`.

        A set comparison against the book's keys, so a simulator can ask it of a thousand
        books every simulated second; the per-entry expiry check only runs when something
        in the book has expired and not yet been dropped."""
        if not node_ids <= self._entries.keys():
            return False
        first = self.next_expiry_ms()
        if first is None or first > now_ms:
            return True
        return all(self._entries[k].record.expires_ms > now_ms for k in node_ids)

    def get(self, node_id: bytes) -> CapacityAnnouncement | None:
        held = self._entries.get(node_id)
        return held.record if held is not None else None

    def signed(self, node_id: bytes) -> Signed[CapacityAnnouncement] | None:
        return self._entries.get(node_id)

    def live(self, now_ms: int) -> list[CapacityAnnouncement]:
        """Unexpired announcements ordered by node id (a stable order for every node)."""
        return [s.record for k, s in sorted(self._entries.items()) if s.record.expires_ms > now_ms]

    def candidates(self, need: Requirement, now_ms: int) -> list[CapacityAnnouncement]:
        """Nodes that could take a job needing `need`: cheapest, then least loaded, first."""
        fits = [a for a in self.live(now_ms) if fits_requirement(a, need)]
        return sorted(fits, key=lambda a: (a.price_per_gpu_hour, a.load_permille, a.node_id))

    def totals(self, now_ms: int) -> SupplyTotals:
        live = self.live(now_ms)
        return summarise(live)


def fits_requirement(ann: CapacityAnnouncement, need: Requirement) -> bool:
    if need.region is not None and ann.region != need.region:
        return False
    price_cap = need.max_price_per_gpu_hour
    if price_cap is not None and ann.price_per_gpu_hour > price_cap:
        return False
    if ann.free_gpus < need.gpu_count:
        return False
    model = need.gpu_model.lower() if need.gpu_model is not None else None
    matching = sum(
        g.count
        for g in ann.gpus
        if g.memory_mib >= need.min_memory_mib and (model is None or g.model.lower() == model)
    )
    return matching >= need.gpu_count


def summarise(announcements: Iterable[CapacityAnnouncement]) -> SupplyTotals:
    nodes = gpus = free = 0
    by_model: dict[str, int] = {}
    for ann in announcements:
        nodes += 1
        gpus += ann.gpu_total
        free += ann.free_gpus
        for g in ann.gpus:
            by_model[g.model] = by_model.get(g.model, 0) + g.count
    return SupplyTotals(nodes, gpus, free, tuple(sorted(by_model.items())))


def gossip_validator(data: bytes, chain_id: bytes, now_ms: int, config: BookConfig) -> bool:
    """The capacity topic's validator: only well-formed, correctly signed, timely
    announcements are delivered or forwarded, so a bad one dies at its first honest hop."""
    try:
        signed = decode_announcement(data, chain_id)
    except DecodeError:
        return False
    return check_announcement(signed, now_ms, config) is None
