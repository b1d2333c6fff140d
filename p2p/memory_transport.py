"""An in-process transport with gossipsub's observable behaviour, for fast deterministic tests.

Peers live in one `MemoryNetwork`; a connection is an entry in both peers' tables. Gossip is
flooded hop by hop between connected peers subscribed to the topic, deduplicated by message id
(origin + per-origin seqno) and validated at every hop before it is delivered or forwarded, as
gossipsub does. Requests run the server's handler in the server's own nursery, so a handler
outlives neither its transport nor a caller that gave up. The only task a node runs is the pump
that drains its bounded wire inbox; `MemoryNetwork.open()` owns it. A traffic policy is
applied through the same `p2p.traffic_edge.PolicyEdge` the libp2p transport uses.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from p2p.identity import Identity
from p2p.traffic_edge import BLOCKED_REASON, PolicyEdge
from p2p.transport import (
    ConnectFailed,
    GossipMessage,
    MessageTooLarge,
    PeerEvent,
    PeerEventKind,
    PeerId,
    RequestFailed,
    RequestHandler,
    RequestTimedOut,
    TrafficPolicy,
    TransportConfig,
    TransportStats,
    Validator,
)

logger = logging.getLogger("gpumesh.memory_transport")

_SEEN_IDS_MAX = 65_536
"""Message ids remembered for deduplication; older ids are forgotten first (like a seen-TTL)."""
PUBLISH_BURST_MAX = 16
"""Publishes allowed back to back before pacing applies; libp2p's per-peer queues hold 32."""


class PublishPacer:
    """A token bucket: publish() waits for a token instead of dropping, so bursts are smoothed
    rather than lost in the router's small queues."""

    def __init__(self, rate_per_s: int, burst_max: int = PUBLISH_BURST_MAX) -> None:
        self._rate_per_s = rate_per_s
        self._burst_max = max(1, min(burst_max, rate_per_s))
        self._tokens = float(self._burst_max)
        self._updated_s: float | None = None
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: concurrent publishers are served in arrival order
            now_s = trio.current_time()
            if self._updated_s is not None:
                elapsed_s = now_s - self._updated_s
                self._tokens = min(self._burst_max, self._tokens + elapsed_s * self._rate_per_s)
            self._updated_s = now_s
            if self._tokens < 1.0:
                wait_s = (1.0 - self._tokens) / self._rate_per_s
                await trio.sleep(wait_s)
                self._tokens = 1.0
                self._updated_s = trio.current_time()
            self._tokens -= 1.0


@dataclass(frozen=True)
class _Wire:
    """One gossip message in flight between two memory peers."""

    msg_id: tuple[PeerId, int]
    topic: str
    data: bytes
    forwarder: PeerId


@dataclass
class _Subscription:
    validator: Validator | None
    send: trio.MemorySendChannel[GossipMessage]


class _PendingRequest:
    """The caller's view of a request being served in the server's nursery."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: bytes | None = None
        self.error = "stream reset"
        self.scope = trio.CancelScope()


class MemoryNetwork:
    """The shared hub: every peer opened from it can connect to every other by address."""

    def __init__(self) -> None:
        self._nodes: dict[PeerId, MemoryTransport] = {}
        self._last_seqno: dict[PeerId, int] = {}
        """Outlives a peer's close, so a reopened peer's message ids are not taken as seen."""

    def lookup(self, peer: PeerId) -> MemoryTransport | None:
        return self._nodes.get(peer)

    @asynccontextmanager
    async def open(
        self, identity: Identity, config: TransportConfig | None = None
    ) -> AsyncIterator[MemoryTransport]:
        """Run one peer until the block exits; its peers then see it disconnect."""
        if identity.peer_id in self._nodes:
            raise ValueError(f"peer {identity.short} is already open on this network")
        config = config or TransportConfig()
        async with trio.open_nursery() as nursery:
            node = MemoryTransport(self, identity, config, nursery)
            node._seqno = self._last_seqno.get(identity.peer_id, 0)
            self._nodes[identity.peer_id] = node
            nursery.start_soon(node._pump)
            try:
                yield node
            finally:
                del self._nodes[identity.peer_id]
                self._last_seqno[identity.peer_id] = node._seqno
                node._shut_down()
                nursery.cancel_scope.cancel()


class MemoryTransport:
    """One in-memory peer. Implements `p2p.transport.Transport`; open with `MemoryNetwork.open`."""

    def __init__(
        self,
        network: MemoryNetwork,
        identity: Identity,
        config: TransportConfig,
        nursery: trio.Nursery,
    ) -> None:
        self._network = network
        self._peer_id = identity.peer_id
        self._config = config
        self._nursery = nursery
        self._stats = TransportStats()
        self._edge = PolicyEdge(self._stats, config.inbox_max)
        self._edge.attach(nursery)
        self._closed = False
        self._peers: set[PeerId] = set()
        self._subs: dict[str, _Subscription] = {}
        self._handlers: dict[str, RequestHandler] = {}
        self._serving: dict[PeerId, set[_PendingRequest]] = {}
        self._seen: OrderedDict[tuple[PeerId, int], None] = OrderedDict()
        self._seqno = 0
        self._pacer = PublishPacer(config.publish_rate_per_s)
        self._wire_send, self._wire_recv = trio.open_memory_channel[_Wire](config.inbox_max)
        self._events_send, self._events_recv = trio.open_memory_channel[PeerEvent](config.inbox_max)

    # -- identity and connections -------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return (f"/memory/{self._peer_id}/p2p/{self._peer_id}",)

    @property
    def stats(self) -> TransportStats:
        return self._stats

    def peer_rtt_ms(self) -> dict[PeerId, float]:
        """The in-memory network has no pings: nothing measured."""
        return {}

    def connected_peers(self) -> frozenset[PeerId]:
        return frozenset(self._peers)

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        return self._events_recv

    async def connect(self, addr: str) -> PeerId:
        await trio.lowlevel.checkpoint()
        parts = addr.split("/")
        # "/memory/<id>/p2p/<id>" splits into ["", "memory", id, "p2p", id].
        if len(parts) != 5 or parts[1] != "memory" or parts[3] != "p2p" or parts[2] != parts[4]:
            raise ConnectFailed(addr, "not a /memory/<peer id>/p2p/<peer id> address")
        other = self._network.lookup(parts[4])
        if other is None:
            raise ConnectFailed(addr, "no such peer is open on this network")
        if other is self:
            raise ConnectFailed(addr, "cannot connect to ourselves")
        if self._closed:
            raise ConnectFailed(addr, "transport is closed")
        if self._edge.refuses(other.peer_id) or other._edge.refuses(self._peer_id):
            self._edge.count_refused()
            raise ConnectFailed(addr, BLOCKED_REASON)
        if other.peer_id not in self._peers:
            self._link_up(other.peer_id)
            other._link_up(self._peer_id)
        return other.peer_id

    async def disconnect(self, peer: PeerId) -> None:
        await trio.lowlevel.checkpoint()
        other = self._network.lookup(peer)
        self._link_down(peer)
        if other is not None:
            other._link_down(self._peer_id)

    def set_traffic_policy(self, policy: TrafficPolicy) -> None:
        for peer in sorted(self._edge.set(policy) & self._peers):
            self._edge.count_refused()
            other = self._network.lookup(peer)
            self._link_down(peer)
            if other is not None:
                other._link_down(self._peer_id)

    def _link_up(self, peer: PeerId) -> None:
        self._peers.add(peer)
        self._emit(PeerEvent(PeerEventKind.CONNECTED, peer))

    def _link_down(self, peer: PeerId) -> None:
        """Forget `peer`, failing the requests it is being served, as a closed socket would."""
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        for pending in self._serving.pop(peer, set()):
            pending.scope.cancel()
        self._emit(PeerEvent(PeerEventKind.DISCONNECTED, peer))

    def _emit(self, event: PeerEvent) -> None:
        if self._closed:
            return
        try:
            self._events_send.send_nowait(event)
        except trio.WouldBlock:
            self._stats.peer_events_dropped += 1

    def _shut_down(self) -> None:
        """Leave the network: peers see us disconnect, and our consumers see their channels end."""
        for peer in sorted(self._peers):
            other = self._network.lookup(peer)
            if other is not None:
                other._link_down(self._peer_id)
        self._peers.clear()
        self._closed = True
        for sub in self._subs.values():
            sub.send.close()
        self._events_send.close()

    # -- gossip -------------------------------------------------------------------------------

    async def subscribe(
        self, topic: str, validator: Validator | None = None
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        await trio.lowlevel.checkpoint()
        if topic in self._subs:
            raise ValueError(f"already subscribed to {topic!r}")
        send, recv = trio.open_memory_channel[GossipMessage](self._config.inbox_max)
        self._subs[topic] = _Subscription(validator, send)
        return recv

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > self._config.gossip_bytes_max:
            raise MessageTooLarge(len(data), self._config.gossip_bytes_max, "gossip message")
        await self._pacer.acquire()
        self._seqno += 1
        msg_id = (self._peer_id, self._seqno)
        self._remember(msg_id)
        self._stats.published += 1
        # Like gossipsub's fanout, a publisher need not be subscribed itself.
        self._forward(_Wire(msg_id, topic, bytes(data), self._peer_id))

    def _remember(self, msg_id: tuple[PeerId, int]) -> bool:
        """Record `msg_id`; False when it was already seen."""
        if msg_id in self._seen:
            return False
        self._seen[msg_id] = None
        if len(self._seen) > _SEEN_IDS_MAX:
            self._seen.popitem(last=False)
        return True

    def _forward(self, wire: _Wire) -> None:
        """Hand `wire` to every connected peer in the topic except where it came from."""
        origin = wire.msg_id[0]
        out = _Wire(wire.msg_id, wire.topic, wire.data, self._peer_id)
        for peer in sorted(self._peers):
            other = self._network.lookup(peer)
            if peer in (wire.forwarder, origin) or other is None or wire.topic not in other._subs:
                continue
            other._accept(out)

    def _accept(self, wire: _Wire) -> None:
        try:
            self._wire_send.send_nowait(wire)
        except trio.WouldBlock:
            self._stats.gossip_dropped_queue_full += 1

    async def _pump(self) -> None:
        async for wire in self._wire_recv:
            self._handle_wire(wire)

    def _handle_wire(self, wire: _Wire) -> None:
        sub = self._subs.get(wire.topic)
        origin = wire.msg_id[0]
        if sub is None or self._edge.drops_gossip(origin, wire.forwarder):
            return  # like gossipsub: a message refused here is not marked as seen
        if not self._remember(wire.msg_id):
            return
        if sub.validator is not None and not _validate(sub.validator, wire.data, origin):
            self._stats.gossip_rejected += 1
            return
        self._stats.gossip_received += 1
        self._edge.deliver(sub.send, GossipMessage(wire.topic, wire.data, origin))
        self._forward(wire)

    # -- requests -----------------------------------------------------------------------------

    def set_request_handler(self, protocol: str, handler: RequestHandler) -> None:
        self._handlers[protocol] = handler

    async def request(
        self,
        peer: PeerId,
        protocol: str,
        data: bytes,
        *,
        timeout_ms: int | None = None,
        keep_stream: bool = False,
    ) -> bytes:
        """`Transport.request`; in memory there are no streams to keep, so `keep_stream` only
        states the caller's intent."""
        if len(data) > self._config.request_bytes_max:
            raise MessageTooLarge(len(data), self._config.request_bytes_max, "request")
        self._stats.requests_sent += 1
        try:
            await self._edge.before_request(peer, protocol)
            return await self._round_trip(peer, protocol, bytes(data), timeout_ms)
        except RequestFailed:
            self._stats.requests_failed += 1
            raise

    async def _round_trip(
        self, peer: PeerId, protocol: str, data: bytes, timeout_ms: int | None
    ) -> bytes:
        await trio.lowlevel.checkpoint()
        server = self._network.lookup(peer)
        if peer not in self._peers or server is None:
            raise RequestFailed(peer, protocol, "not connected")
        pending = server._serve(self._peer_id, protocol, data)
        timeout_s = (self._config.request_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        with trio.move_on_after(timeout_s) as deadline:
            await pending.done.wait()
        if deadline.cancelled_caught:
            pending.scope.cancel()
            raise RequestTimedOut(peer, protocol, timeout_s)
        if pending.response is None:
            raise RequestFailed(peer, protocol, pending.error)
        return pending.response

    def _serve(self, client: PeerId, protocol: str, data: bytes) -> _PendingRequest:
        pending = _PendingRequest()
        handler = self._handlers.get(protocol)
        if handler is None or self._closed:
            pending.error = "protocol not supported" if handler is None else "peer closing"
            pending.done.set()
            return pending
        self._serving.setdefault(client, set()).add(pending)
        self._nursery.start_soon(self._run_handler, client, protocol, handler, data, pending)
        return pending

    async def _run_handler(
        self,
        client: PeerId,
        protocol: str,
        handler: RequestHandler,
        data: bytes,
        pending: _PendingRequest,
    ) -> None:
        """Serve one request; a failing handler fails only this request, as a reset stream."""
        try:
            with pending.scope:
                response = await handler(client, data)
                if len(response) > self._config.request_bytes_max:
                    raise MessageTooLarge(len(response), self._config.request_bytes_max, "response")
                pending.response = bytes(response)
                self._stats.requests_served += 1
        except Exception as exc:
            logger.warning("handler for %s from %s failed: %r", protocol, client[-8:], exc)
            pending.error = f"remote handler failed: {type(exc).__name__}"
        finally:
            self._serving.get(client, set()).discard(pending)
            pending.done.set()


def _validate(validator: Validator, data: bytes, origin: PeerId) -> bool:
    """Run a validator on peer data; one that raises is treated as a rejection, not a crash."""
    try:
        return bool(validator(data))
    except Exception as exc:
        logger.warning("gossip validator raised on a message from %s: %r", origin[-8:], exc)
        return False
