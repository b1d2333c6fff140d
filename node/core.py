"""NodeCore: every decision a node makes, as a pure state machine.

`step(now_ms, input) -> Ready` is the whole interface (DESIGN.md "The shape"). The core never
awaits, sends, reads a clock, touches disk or draws global randomness, so the same core runs
under the trio runtime (`node.runtime`), in local swarms, and in the simulator, and a
simulation replays bit-for-bit. The runtime executes what `Ready` lists, in order.

What the core decides today: when to announce our capacity (periodically, and soon after a
new peer arrives so it learns of us without waiting a full interval), what to make of each
announcement gossiped to us, which peers misbehave badly enough to drop, and which known
nodes to dial when we have too few peers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2p.announcements import (
    TOPIC_CAPACITY,
    AnnouncementBook,
    Book,
    BookConfig,
    CapacityAnnouncement,
    GpuSpec,
    SupplyTotals,
    Verdict,
    decode_announcement,
)
from p2p.errors import BadSignature, DecodeError
from p2p.identity import Identity, PeerId, peer_id_from_public_key, short_peer
from p2p.wire import EnvelopeSigner, Signed

AnnouncementDecoder = Callable[[bytes], Signed[CapacityAnnouncement]]
"""Decode and verify gossip bytes, raising DecodeError/BadSignature like
`decode_announcement`. Injectable so a simulator of many nodes can verify each message once
and share the result (decoding is pure: the same bytes always give the same answer)."""

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class CoreConfig:
    """Everything the core needs to know about its node; built from NodeConfig by the runtime."""

    chain_id: bytes
    region: str
    gpus: tuple[GpuSpec, ...]
    gpu_source: str
    price_per_gpu_hour: int
    announce_interval_ms: int = 2_000
    announcement_ttl_ms: int = 30_000
    reannounce_after_peer_ms: int = 1_200
    """Delay after a new peer connects before we re-announce: one gossip heartbeat (1 s) lets
    the mesh graft the newcomer first, so the announcement reaches it. A re-announcement for
    a new peer also waits until half an announce interval has passed since our last one:
    each one floods the whole network, and while a network starts (or a neighbourhood
    restarts) peers arrive one after another, so without that floor every node would
    announce once per neighbour instead of about twice per interval."""
    peers_target: int = 6
    """Below this many connected peers, the core dials nodes it knows from announcements."""
    dial_retry_ms: int = 10_000
    """How long a dial counts as under way (towards peers_target) and how long before the
    same node may be dialled again. The core hears no "dial failed": a dial that has not
    become a peer within this time is given up."""
    penalties_max: int = 5
    """A peer that sends this many messages no honest node sends is disconnected."""
    book: BookConfig = field(default_factory=BookConfig)

    def __post_init__(self) -> None:
        if self.announcement_ttl_ms <= self.announce_interval_ms:
            raise ValueError("announcement_ttl_ms must exceed announce_interval_ms")
        if self.announcement_ttl_ms > self.book.ttl_max_ms:
            raise ValueError("announcement_ttl_ms exceeds what peers accept (book.ttl_max_ms)")


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Tick:
    """Time passed; nothing else happened."""


@dataclass(frozen=True)
class GossipIn:
    topic: str
    data: bytes
    origin: PeerId


@dataclass(frozen=True)
class PeerUp:
    peer: PeerId


@dataclass(frozen=True)
class PeerDown:
    peer: PeerId


@dataclass(frozen=True)
class LocalLoad:
    """The runtime measured how busy our GPUs are."""

    free_gpus: int
    load_permille: int


@dataclass(frozen=True)
class ListenAddrs:
    """The addresses we are reachable at, once the transport has bound them."""

    addrs: tuple[str, ...]


Input = Tick | GossipIn | PeerUp | PeerDown | LocalLoad | ListenAddrs

# ---------------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True)
class Publish:
    topic: str
    data: bytes
    signed: Signed[CapacityAnnouncement] | None = field(default=None, compare=False, repr=False)
    """The envelope `data` encodes, for a driver that would otherwise decode our own bytes
    again (the simulator); a runtime sends `data` and ignores it."""


@dataclass(frozen=True)
class Disconnect:
    peer: PeerId
    reason: str


@dataclass(frozen=True)
class Dial:
    peer: PeerId
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class Event:
    """Something worth a structured log line and a metric; `fields` keeps a stable order."""

    name: str
    fields: tuple[tuple[str, str | int], ...] = ()

    def as_dict(self) -> dict[str, str | int]:
        return dict(self.fields)


@dataclass
class Ready:
    """What the runtime must do after a step, in this order: publish, disconnect, dial, log."""

    publish: list[Publish] = field(default_factory=list)
    disconnect: list[Disconnect] = field(default_factory=list)
    dial: list[Dial] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    wake_at_ms: int = 0
    """Step the core again (with Tick) no later than this."""


# ---------------------------------------------------------------------------------------------
# The core


class NodeCore:
    """One node's protocol state. Drive it with `step`; never mutate it from outside.

    `decode` (default: `decode_announcement` for our chain) must behave exactly like it; the
    simulator passes a memoising one. `book` (default: a fresh `AnnouncementBook`) must answer
    like one; the simulator passes a row of its shared book table.
    """

    def __init__(
        self,
        identity: Identity,
        config: CoreConfig,
        *,
        decode: AnnouncementDecoder | None = None,
        book: Book | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        chain_id = config.chain_id
        self._decode: AnnouncementDecoder = decode or (
            lambda data: decode_announcement(data, chain_id)
        )
        self.book: Book = (
            book if book is not None else AnnouncementBook(config.chain_id, config.book)
        )
        self.peers: set[PeerId] = set()
        self._addrs: tuple[str, ...] = ()
        self._seq = 0
        self._signer = EnvelopeSigner(identity, config.chain_id)
        self._last_announcement: CapacityAnnouncement | None = None
        self._free_gpus = sum(g.count for g in config.gpus)
        self._load_permille = 0
        self._next_announce_ms = 0
        self._last_announce_ms = -(2**62)
        self._penalties: dict[PeerId, int] = {}
        self._dial_after_ms: dict[PeerId, int] = {}
        """Nodes we may not dial before the time given, dial_retry_ms after their last dial
        (entries in the past are dropped)."""
        self._dials_failed: dict[PeerId, int] = {}
        """When each node's last dial was given up without it becoming a peer: such nodes
        are dialled after every other candidate (entries go after FAILED_DIAL_MEMORY)."""
        self._dials_under_way: dict[PeerId, int] = {}
        """Dials that have not yet become a peer, with when they were made."""
        self._dials_quiet_until_ms = 0
        """Before this time no dial can be planned (see `_plan_dials`); 0 means unknown."""
        self.verdict_counts: dict[str, int] = {}

    # -- the one entry point -------------------------------------------------------------------

    def step(self, now_ms: int, inp: Input) -> Ready:
        ready = Ready()
        if isinstance(inp, GossipIn):  # by far the most frequent input: no pattern matching
            self._on_gossip(now_ms, inp.topic, inp.data, inp.origin, ready)
        else:
            self._on_other(now_ms, inp, ready)
        self._on_time(now_ms, ready)
        ready.wake_at_ms = self._next_wake_ms(now_ms)
        return ready

    def _on_other(self, now_ms: int, inp: Input, ready: Ready) -> None:
        match inp:
            case PeerUp(peer=peer):
                self.peers.add(peer)
                self._dials_under_way.pop(peer, None)
                self._dials_failed.pop(peer, None)
                soon = max(
                    now_ms + self.config.reannounce_after_peer_ms,
                    self._last_announce_ms + self.config.announce_interval_ms // 2,
                )
                self._next_announce_ms = min(self._next_announce_ms, soon)
                ready.events.append(Event("peer_up", (("peer", short_peer(peer)),)))
            case PeerDown(peer=peer):
                self.peers.discard(peer)
                self._dials_quiet_until_ms = 0  # the peer we lost is a dial candidate again
                ready.events.append(Event("peer_down", (("peer", short_peer(peer)),)))
            case LocalLoad(free_gpus=free, load_permille=load):
                free = min(free, sum(g.count for g in self.config.gpus))
                if (free, load) != (self._free_gpus, self._load_permille):
                    self._free_gpus, self._load_permille = free, min(load, 1000)
                    self._next_announce_ms = now_ms
            case ListenAddrs(addrs=addrs):
                self._addrs = addrs
                self._next_announce_ms = now_ms
            case Tick():
                pass

    # -- handlers ------------------------------------------------------------------------------

    def _on_gossip(
        self, now_ms: int, topic: str, data: bytes, origin: PeerId, ready: Ready
    ) -> None:
        if topic != TOPIC_CAPACITY:
            ready.events.append(Event("gossip_unknown_topic", (("topic", topic[:64]),)))
            return
        reason: str | None = None  # None: the verdict's name says it all
        try:
            signed = self._decode(data)
        except BadSignature as exc:
            verdict, reason = Verdict.BAD_SIGNATURE, str(exc)
        except DecodeError as exc:
            verdict, reason = Verdict.MALFORMED, str(exc)
        else:
            verdict = self.book.offer(signed, now_ms)
        name = verdict.value  # read once: an enum's .value is a descriptor call
        self.verdict_counts[name] = self.verdict_counts.get(name, 0) + 1
        if verdict is Verdict.ACCEPTED:
            ann = signed.record
            if ann.addrs and self._may_dial_now(ann.node_id, now_ms):
                self._dials_quiet_until_ms = 0  # a node we may dial (new, or due again)
            ready.events.append(_accepted_event(ann.node_id, ann.seq, ann.issued_ms, ann.gpu_total))
        elif verdict in (Verdict.DUPLICATE, Verdict.STALE):
            return  # normal under gossip: late or repeated copies
        else:
            ready.events.append(
                Event(
                    "announcement_rejected",
                    (
                        ("origin", short_peer(origin)),
                        ("verdict", verdict.value),
                        ("reason", (name if reason is None else reason)[:200]),
                    ),
                )
            )
            if verdict.penalises_sender:
                self._penalise(origin, verdict.value, ready)

    def _penalise(self, peer: PeerId, reason: str, ready: Ready) -> None:
        count = self._penalties.get(peer, 0) + 1
        self._penalties[peer] = count
        if count >= self.config.penalties_max and peer in self.peers:
            ready.disconnect.append(Disconnect(peer, f"{count} penalties, last: {reason}"))
            self._penalties[peer] = 0

    def _on_time(self, now_ms: int, ready: Ready) -> None:
        for node_id in self.book.expire(now_ms):
            ready.events.append(
                Event(
                    "announcement_expired",
                    (("from", _short_of_key(node_id)),),
                )
            )
        if now_ms >= self._next_announce_ms:
            signed, data = self._announce(now_ms)
            ready.publish.append(Publish(TOPIC_CAPACITY, data, signed))
            self._next_announce_ms = now_ms + self.config.announce_interval_ms
            self._last_announce_ms = now_ms
        if len(self.peers) < self.config.peers_target and now_ms >= self._dials_quiet_until_ms:
            self._plan_dials(now_ms, ready)

    def _announce(self, now_ms: int) -> tuple[Signed[CapacityAnnouncement], bytes]:
        """Sign a fresh announcement and hold it in our own book too (we are part of supply).

        seq is max(last + 1, now_ms): strictly increasing, and after a restart (which loses the
        counter) still above anything we signed before, so peers do not reject us as stale.
        """
        self._seq = max(self._seq + 1, now_ms)
        changing: dict[str, Any] = {
            "seq": self._seq,
            "issued_ms": now_ms,
            "expires_ms": now_ms + self.config.announcement_ttl_ms,
            "free_gpus": self._free_gpus,
            "load_permille": self._load_permille,
            "addrs": self._addrs[:8],
        }
        last = self._last_announcement
        if last is not None:  # identity and config are fixed: only the fields above change
            ann = last.evolve(**changing)
        else:
            ann = CapacityAnnouncement(
                node_id=self.identity.public_key,
                region=self.config.region,
                gpus=self.config.gpus,
                price_per_gpu_hour=self.config.price_per_gpu_hour,
                gpu_source=self.config.gpu_source,
                **changing,
            )
        self._last_announcement = ann
        signed, data = self._signer.sign_encoded(ann)
        verdict = self.book.offer(signed, now_ms)
        if verdict is not Verdict.ACCEPTED:
            raise AssertionError(f"our own announcement was refused: {verdict}")  # our bug
        return signed, data

    def _may_dial_now(self, node_id: bytes, now_ms: int) -> bool:
        """Whether an accepted announcement from `node_id` can give `_plan_dials` someone new:
        not us, not a peer, not dialled within dial_retry_ms. Announcements from peers and
        from nodes already being dialled are most of the gossip; they do not wake a scan."""
        peer = _peer_of_key(node_id)
        if peer == self.identity.peer_id or peer in self.peers:
            return False
        return self._dial_after_ms.get(peer, now_ms) <= now_ms

    def _plan_dials(self, now_ms: int, ready: Ready) -> None:
        """Dial known but unconnected nodes while peers plus dials under way fall short of
        peers_target, each at most once per dial_retry_ms, in node id order (so every run
        makes the same choices) but nodes whose last dial failed last, longest failed first.

        A dial is under way for dial_retry_ms unless it became a peer sooner, and counts
        towards the target: without that, each step (every gossip message) dialled another
        batch, and a node short of peers dialled every node it knew within one retry period.
        The core hears of no failed dial, only of peers: a dial under way that is given up
        marks its node as failed, and the next scans try every other candidate before it,
        instead of the same first few in id order, which may be unreachable.

        After a scan, `_dials_quiet_until_ms` is the first moment a dial under way is given
        up or a node falls due again; until then, or until a peer leaves or a node we may
        dial announces itself, another scan would find no one either and is skipped. A node
        short of peers in a big network would otherwise sort its whole book on every step."""
        retry_ms = self.config.dial_retry_ms
        failed = self._dials_failed
        for peer, at in list(self._dials_under_way.items()):
            if now_ms - at >= retry_ms:  # given up: it never became a peer
                del self._dials_under_way[peer]
                failed[peer] = at + retry_ms  # when, whenever this scan came
        if failed:
            forget = now_ms - FAILED_DIAL_MEMORY * retry_ms
            self._dials_failed = failed = {p: t for p, t in failed.items() if t > forget}
        after = {p: t for p, t in self._dial_after_ms.items() if t > now_ms}
        self._dial_after_ms = after
        missing = self.config.peers_target - len(self.peers) - len(self._dials_under_way)
        next_due = _NEVER_MS  # the first moment a node we skip falls due
        if missing > 0:
            last_resort: list[tuple[PeerId, CapacityAnnouncement]] = []
            chosen: list[tuple[PeerId, CapacityAnnouncement]] = []
            for ann in self.book.live(now_ms):
                if not ann.addrs:
                    continue
                peer = _peer_of_key(ann.node_id)
                if peer == self.identity.peer_id or peer in self.peers:
                    continue
                due = after.get(peer)
                if due is not None:
                    next_due = min(next_due, due)
                elif peer in failed:
                    last_resort.append((peer, ann))
                else:
                    chosen.append((peer, ann))
                    if len(chosen) == missing:
                        break
            last_resort.sort(key=lambda item: failed[item[0]])  # longest failed first
            for peer, ann in (chosen + last_resort)[:missing]:
                self._dials_under_way[peer] = now_ms
                after[peer] = now_ms + retry_ms
                ready.dial.append(Dial(peer, ann.addrs))
        first_dial = min(self._dials_under_way.values(), default=_NEVER_MS - retry_ms)
        self._dials_quiet_until_ms = min(next_due, first_dial + retry_ms)  # or it is given up

    def _next_wake_ms(self, now_ms: int) -> int:
        """`_on_time` has just expired everything due, so the book's first expiry is the
        first live one."""
        wake = self._next_announce_ms
        first_expiry = self.book.next_expiry_ms(before=wake)
        if first_expiry is not None:
            wake = min(wake, first_expiry)
        if len(self.peers) < self.config.peers_target:
            wake = min(wake, now_ms + self.config.dial_retry_ms)
        return max(wake, now_ms + 1)

    # -- read-only views -----------------------------------------------------------------------

    def supply(self, now_ms: int) -> SupplyTotals:
        return self.book.totals(now_ms)

    def status(self, now_ms: int) -> dict[str, object]:
        """A JSON-ready snapshot for the status endpoint and `gpumesh node status`."""
        totals = self.book.totals(now_ms)
        return {
            "peer_id": self.identity.peer_id,
            "region": self.config.region,
            "peers": sorted(self.peers),
            "announce_seq": self._seq,
            "supply": {
                "nodes": totals.nodes,
                "gpus": totals.gpus,
                "free_gpus": totals.free_gpus,
                "gpus_by_model": dict(totals.gpus_by_model),
            },
            "announcements": [_row(a, now_ms) for a in self.book.live(now_ms)],
            "verdicts": dict(sorted(self.verdict_counts.items())),
        }


FAILED_DIAL_MEMORY = 8
"""A failed dial puts its node last among dial candidates for this many retry periods."""
_NEVER_MS = 2**63
"""A time no clock reaches: "no dial falls due until something else changes"."""


@functools.lru_cache(maxsize=65_536)
def _peer_of_key(node_id: bytes) -> PeerId:
    """Peer ids are base58 of the key: pure, but slow enough to matter per message."""
    return peer_id_from_public_key(node_id)


def _short_of_key(node_id: bytes) -> str:
    return short_peer(_peer_of_key(node_id))


@functools.lru_cache(maxsize=4_096)
def _accepted_event(node_id: bytes, seq: int, issued_ms: int, gpus: int) -> Event:
    """The log event for an accepted announcement: a pure function of it, and immutable, so
    the many nodes of a simulation that accept the same announcement share one."""
    return Event(
        "announcement_accepted",
        (("from", _short_of_key(node_id)), ("seq", seq), ("issued_ms", issued_ms), ("gpus", gpus)),
    )


def _row(ann: CapacityAnnouncement, now_ms: int) -> dict[str, object]:
    return {
        "peer_id": peer_id_from_public_key(ann.node_id),
        "region": ann.region,
        "gpus": [[g.model, g.count, g.memory_mib] for g in ann.gpus],
        "gpu_total": ann.gpu_total,
        "free_gpus": ann.free_gpus,
        "price_per_gpu_hour": ann.price_per_gpu_hour,
        "load_permille": ann.load_permille,
        "gpu_source": ann.gpu_source,
        "seq": ann.seq,
        "age_ms": now_ms - ann.issued_ms,
        "expires_in_ms": ann.expires_ms - now_ms,
    }
