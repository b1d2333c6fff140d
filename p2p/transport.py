"""The transport contract: best effort, bounded, and the same for libp2p and in-memory peers.

Messages may be dropped, duplicated or reordered (DESIGN.md principle 4); safety never rests
on delivery. What the contract does promise is that nothing is lost *silently*: oversized
payloads raise `MessageTooLarge`, full queues count their drops in `TransportStats`, failed
requests raise `RequestFailed`, and a gossip validator that says no stops the message at that
hop so it is never forwarded.

Implementations: `p2p.memory_transport.MemoryTransport` (in-process, for fast tests) and
`p2p.libp2p_transport.Libp2pTransport` (py-libp2p on TCP + Noise + yamux + gossipsub).
Both pass `tests/conformance/`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

PeerId = str
"""A libp2p peer id string ("12D3KooW..."), derived from the node's ed25519 public key."""

Validator = Callable[[bytes], bool]
"""Pure, synchronous check run on every gossip message at every hop; False drops it there."""

RequestHandler = Callable[[PeerId, bytes], Awaitable[bytes]]
"""Serves one framed request from a peer and returns the framed response."""


class TransportError(Exception):
    """Base of the errors a transport raises to its caller."""


class MessageTooLarge(TransportError):
    """A payload over the transport's limit; raised instead of vanishing on the wire."""

    def __init__(self, size: int, limit: int, what: str) -> None:
        super().__init__(f"{what} of {size} bytes exceeds the limit of {limit} bytes")
        self.size, self.limit = size, limit


class RequestFailed(TransportError):
    """A request that got no valid response: unreachable peer, no handler, timeout, reset."""

    def __init__(self, peer: PeerId, protocol: str, reason: str) -> None:
        super().__init__(f"request {protocol} to {peer[-8:]} failed: {reason}")
        self.peer, self.protocol, self.reason = peer, protocol, reason


class ConnectFailed(TransportError):
    """A dial that did not produce a connection; carries the address and why."""

    def __init__(self, addr: str, reason: str) -> None:
        super().__init__(f"connect to {addr} failed: {reason}")
        self.addr, self.reason = addr, reason


@dataclass(frozen=True)
class GossipMessage:
    topic: str
    data: bytes
    origin: PeerId
    """The peer that published it (authenticated by the transport)."""


class PeerEventKind(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class PeerEvent:
    kind: PeerEventKind
    peer: PeerId


@dataclass(frozen=True)
class TransportConfig:
    """Limits and pacing of one transport. Units are in the names."""

    gossip_bytes_max: int = 512 * 1024
    """libp2p silently loses gossip of 1 MiB or more; we raise well below that."""
    request_bytes_max: int = 4 * 1024 * 1024
    """One framed request or response on a direct stream."""
    publish_rate_per_s: int = 100
    """Publishes are paced to this rate (publish() waits), since libp2p drops bursts."""
    inbox_max: int = 1024
    """Bound of each subscription's and the peer-event queue; overflow is counted, not hidden."""
    request_timeout_ms: int = 5_000
    ping_interval_ms: int = 1_000
    ping_timeout_ms: int = 1_000
    ping_misses_max: int = 3
    """A peer that misses this many pings in a row is disconnected (catches hung peers)."""
    gossip_heartbeat_s: int = 1
    gossip_degree: int = 6
    gossip_degree_low: int = 4
    gossip_degree_high: int = 12

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransportConfig.{name} must be a positive int, got {value!r}")


@dataclass
class TransportStats:
    """Counters every implementation keeps; exported as Prometheus metrics by the node."""

    published: int = 0
    gossip_received: int = 0
    gossip_rejected: int = 0
    """Messages our validator refused (never delivered, never forwarded)."""
    gossip_dropped_queue_full: int = 0
    peer_events_dropped: int = 0
    requests_sent: int = 0
    requests_failed: int = 0
    requests_served: int = 0
    pings_missed: int = 0
    peers_dropped_unresponsive: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        out.update(self.extra)
        return out


class Transport(Protocol):
    """What a node needs from the network. Open one with its implementation's `open()`."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        """Dialable addresses, each ending in /p2p/<peer id>."""
        ...

    @property
    def stats(self) -> TransportStats: ...

    async def connect(self, addr: str) -> PeerId:
        """Dial a full address (with /p2p/<id>); raise ConnectFailed."""
        ...

    async def disconnect(self, peer: PeerId) -> None: ...

    def connected_peers(self) -> frozenset[PeerId]: ...

    async def subscribe(
        self, topic: str, validator: Validator | None = None
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Join `topic`; messages that pass `validator` arrive on the returned bounded channel."""
        ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Gossip `data` (paced; raises MessageTooLarge). Own messages are not delivered back."""
        ...

    def set_request_handler(self, protocol: str, handler: RequestHandler) -> None: ...

    async def request(
        self, peer: PeerId, protocol: str, data: bytes, *, timeout_ms: int | None = None
    ) -> bytes:
        """Send one framed request over a direct stream; raise RequestFailed or MessageTooLarge."""
        ...

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        """The one channel of connect/disconnect events (single consumer)."""
        ...
