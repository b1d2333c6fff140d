"""Enforcing a `TrafficPolicy` at a transport's edge: one implementation for both transports.

The libp2p and in-memory transports differ in how messages reach them, but a partition or a
slow link must look the same on both (the conformance suite checks it), so what a policy means
for a message, a request or a connection is decided here, once, and each transport only calls
in at its own edge: before validating gossip, before delivering it, before a request and when
a connection appears. Held (delayed) messages are bounded; what does not fit is counted.
"""

from __future__ import annotations

import trio

from p2p.transport import (
    GossipMessage,
    PeerId,
    RequestFailed,
    TrafficPolicy,
    TransportStats,
)

COUNTERS = ("policy_dropped_in", "policy_delayed", "policy_delay_dropped", "policy_refused")
"""stats.extra keys: gossip dropped by blocked_in; gossip held for a delay; gossip dropped
because too many were held; connections closed or dials refused because a peer is cut off."""
BLOCKED_REASON = "blocked by traffic policy"


class PolicyEdge:
    """The current policy of one transport and the bookkeeping of applying it."""

    def __init__(self, stats: TransportStats, held_max: int) -> None:
        self.policy = TrafficPolicy.none()
        self._stats = stats
        for name in COUNTERS:
            stats.extra.setdefault(name, 0)
        self._held = 0
        self._held_max = held_max
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Delayed deliveries run as tasks here, so they end with the transport."""
        self._nursery = nursery

    def set(self, policy: TrafficPolicy) -> frozenset[PeerId]:
        """Install `policy`; returns the peers it cuts off (the caller closes those links)."""
        self.policy = policy
        return policy.cut_off

    def refuses(self, peer: PeerId) -> bool:
        """No connection with `peer` may exist while the policy holds."""
        return self.policy.cuts_off(peer)

    def count_refused(self) -> None:
        self._stats.extra["policy_refused"] += 1

    def drops_gossip(self, origin: PeerId, forwarder: PeerId) -> bool:
        """True (and counted) for gossip that a blocked peer originated or handed us."""
        blocked = self.policy.blocked_in
        if origin in blocked or forwarder in blocked:
            self._stats.extra["policy_dropped_in"] += 1
            return True
        return False

    def deliver(self, send: trio.MemorySendChannel[GossipMessage], msg: GossipMessage) -> bool:
        """Hand `msg` to its subscriber now, or after its origin's delay without holding up
        anyone else's messages. False once the subscriber's channel is closed."""
        delay_ms = self.policy.delay_for(msg.origin)
        if delay_ms <= 0 or self._nursery is None:
            return self._put(send, msg)
        if self._held >= self._held_max:
            self._stats.extra["policy_delay_dropped"] += 1
            return True
        self._held += 1
        self._stats.extra["policy_delayed"] += 1
        self._nursery.start_soon(self._deliver_later, send, msg, delay_ms)
        return True

    async def _deliver_later(
        self, send: trio.MemorySendChannel[GossipMessage], msg: GossipMessage, delay_ms: int
    ) -> None:
        try:
            await trio.sleep(delay_ms / 1000)
            self._put(send, msg)
        finally:
            self._held -= 1

    def _put(self, send: trio.MemorySendChannel[GossipMessage], msg: GossipMessage) -> bool:
        try:
            send.send_nowait(msg)
        except trio.WouldBlock:
            self._stats.gossip_dropped_queue_full += 1
        except trio.ClosedResourceError:
            return False
        return True

    async def before_request(self, peer: PeerId, protocol: str) -> None:
        """Fail a request to a blocked peer; hold one to a slow peer for its delay."""
        if peer in self.policy.blocked_out:
            raise RequestFailed(peer, protocol, BLOCKED_REASON)
        delay_ms = self.policy.delay_for(peer)
        if delay_ms > 0:
            await trio.sleep(delay_ms / 1000)
