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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import trio

from p2p.identity import public_key_from_peer_id

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


class RequestTimedOut(RequestFailed):
    """No response within the deadline. Unlike a refused or broken request this is no proof
    that the request was lost: a peer that is merely slow (an overloaded host) may already
    have acted on it, so a sender that would only repeat itself should not try again."""

    def __init__(self, peer: PeerId, protocol: str, timeout_s: float) -> None:
        super().__init__(peer, protocol, f"no response within {timeout_s * 1000:.0f} ms")
        self.timeout_s = timeout_s


class ConnectFailed(TransportError):
    """A dial that did not produce a connection; carries the address and why."""

    def __init__(self, addr: str, reason: str) -> None:
        super().__init__(f"connect to {addr} failed: {reason}")
        self.addr, self.reason = addr, reason


POLICY_PEERS_MAX = 1024
"""Peers one traffic policy may name (per set): a policy is an operator's tool, not a list."""
POLICY_DELAY_MS_MAX = 60_000


class PolicyError(ValueError):
    """A traffic policy that cannot be applied; `field` names the offending part."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class TrafficPolicy:
    """Fault injection at the transport edge: what this node refuses or slows, per peer.

    `blocked_in`: gossip originated or forwarded by these peers is dropped before validation
    (and not forwarded), counted in `stats.extra["policy_dropped_in"]`. `blocked_out`: requests
    to them fail with RequestFailed. A peer in both is cut off: its connection is closed, new
    ones are refused and we never dial it while the policy holds, so no gossip flows either
    way. A one-way block does not stop our gossip from reaching the peer on every transport;
    the receiver's own `blocked_in` does that, which is why a swarm partition sets policies on
    both sides. `delay_ms` holds gossip originated by a peer that long before delivering it
    here (forwarding is not delayed) and delays our requests to it; peers not named get
    `default_delay_ms`. `TrafficPolicy.none()` heals everything.
    """

    blocked_in: frozenset[PeerId] = frozenset()
    blocked_out: frozenset[PeerId] = frozenset()
    delay_ms: Mapping[PeerId, int] = field(default_factory=dict, hash=False)
    default_delay_ms: int = 0

    def __post_init__(self) -> None:
        for name in ("blocked_in", "blocked_out"):
            peers = frozenset(getattr(self, name))
            if len(peers) > POLICY_PEERS_MAX:
                raise PolicyError(name, f"at most {POLICY_PEERS_MAX} peers, got {len(peers)}")
            object.__setattr__(self, name, peers)
        if len(self.delay_ms) > POLICY_PEERS_MAX:
            raise PolicyError("delay_ms", f"at most {POLICY_PEERS_MAX} peers")
        for peer, ms in self.delay_ms.items():
            _check_delay(f"delay_ms[{peer!r}]", ms)
        _check_delay("default_delay_ms", self.default_delay_ms)
        # A zero entry matters only when it overrides a non-zero default.
        delays = {p: ms for p, ms in sorted(self.delay_ms.items()) if ms or self.default_delay_ms}
        object.__setattr__(self, "delay_ms", MappingProxyType(delays))

    @classmethod
    def none(cls) -> TrafficPolicy:
        """No fault: the policy of a healthy node, and what heals a partition."""
        return cls()

    @classmethod
    def partition(cls, blocked: Iterable[PeerId]) -> TrafficPolicy:
        """Cut these peers off in both directions (one side of a network partition)."""
        peers = frozenset(blocked)
        return cls(blocked_in=peers, blocked_out=peers)

    @property
    def is_none(self) -> bool:
        return self == TrafficPolicy.none()

    def cuts_off(self, peer: PeerId) -> bool:
        """Blocked both ways: no connection to this peer may exist."""
        return peer in self.blocked_in and peer in self.blocked_out

    @property
    def cut_off(self) -> frozenset[PeerId]:
        return self.blocked_in & self.blocked_out

    def delay_for(self, peer: PeerId) -> int:
        return self.delay_ms.get(peer, self.default_delay_ms)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrafficPolicy):
            return NotImplemented
        return self.as_json() == other.as_json()

    def __hash__(self) -> int:
        return hash((self.blocked_in, self.blocked_out, tuple(self.delay_ms.items())))

    def as_json(self) -> dict[str, object]:
        """The admin endpoint's and swarm.json's form (sorted, so equal policies print equal)."""
        return {
            "blocked_in": sorted(self.blocked_in),
            "blocked_out": sorted(self.blocked_out),
            "delay_ms": dict(self.delay_ms),
            "default_delay_ms": self.default_delay_ms,
        }

    @classmethod
    def from_json(cls, raw: object) -> TrafficPolicy:
        """Parse the admin endpoint's JSON; every problem is a PolicyError naming its field."""
        if not isinstance(raw, dict):
            raise PolicyError("policy", f"expected a JSON object, got {type(raw).__name__}")
        known = ("blocked_in", "blocked_out", "delay_ms", "default_delay_ms")
        for key in raw:
            if key not in known:
                raise PolicyError(str(key)[:64], f"unknown field (known: {', '.join(known)})")
        delays = raw.get("delay_ms", {})
        if not isinstance(delays, dict):
            raise PolicyError("delay_ms", "expected an object of peer id -> milliseconds")
        for peer in delays:
            _check_peer(f"delay_ms[{peer!r:.80}]", peer)
        return cls(
            blocked_in=_peer_set(raw.get("blocked_in", []), "blocked_in"),
            blocked_out=_peer_set(raw.get("blocked_out", []), "blocked_out"),
            delay_ms=delays,
            default_delay_ms=raw.get("default_delay_ms", 0),
        )


def _check_delay(where: str, ms: object) -> None:
    if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= POLICY_DELAY_MS_MAX:
        raise PolicyError(where, f"expected an integer 0..{POLICY_DELAY_MS_MAX}, got {ms!r:.80}")


def _check_peer(where: str, peer: object) -> None:
    try:
        if not isinstance(peer, str):
            raise ValueError
        public_key_from_peer_id(peer)
    except ValueError:
        raise PolicyError(where, f"{peer!r:.80} is not an ed25519 libp2p peer id") from None


def _peer_set(raw: object, where: str) -> frozenset[PeerId]:
    if not isinstance(raw, list):
        raise PolicyError(where, f"expected an array of peer ids, got {type(raw).__name__}")
    if len(raw) > POLICY_PEERS_MAX:
        raise PolicyError(where, f"at most {POLICY_PEERS_MAX} peers, got {len(raw)}")
    for i, peer in enumerate(raw):
        _check_peer(f"{where}[{i}]", peer)
    return frozenset(raw)


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
    ping_interval_ms: int = 2_000
    ping_timeout_ms: int = 10_000
    ping_misses_max: int = 6
    """A peer that misses this many pings in a row, and sent us nothing and answered none of
    our requests meanwhile, is disconnected: a hung (SIGSTOPped) peer goes within about a
    minute (a crashed one at once: its connection closes). Generous on purpose: with 1 s
    timeouts, 20 node processes on 2 cores dropped healthy but slow peers, whose redials and
    handshakes slowed everyone further (1,032 false drops in 15 s of an idle 20-node swarm);
    with 5 s and 3 misses, 16 committee members on 2 cores still dropped each other while
    starting (a ping took longer than 5 s on a saturated host) and reached height 2 after
    68 s, against 27 s with 10 s and 6 (bench/consensus_live.py --sizes 16)."""
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

    def peer_rtt_ms(self) -> dict[PeerId, float]:
        """Measured round-trip time to each connected peer that answered enough pings
        (a windowed minimum, p2p/liveness.py); a transport that does not ping returns {}."""
        ...

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
        self,
        peer: PeerId,
        protocol: str,
        data: bytes,
        *,
        timeout_ms: int | None = None,
        keep_stream: bool = False,
    ) -> bytes:
        """Send one framed request over a direct stream; raise RequestFailed or MessageTooLarge.

        `keep_stream`: reuse one stream per peer and protocol for request after request (one
        at a time), for frequent small requests whose protocol takes a repeated request
        harmlessly (a request that meets a stream the server closed is sent again)."""
        ...

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        """The one channel of connect/disconnect events (single consumer)."""
        ...

    def set_traffic_policy(self, policy: TrafficPolicy) -> None:
        """Apply `policy` (see TrafficPolicy) from now on, replacing the previous one. Peers it
        cuts off are disconnected at once; `TrafficPolicy.none()` lifts every fault."""
        ...
