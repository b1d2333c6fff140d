"""The real transport: py-libp2p 0.8.1 on TCP + Noise + yamux + gossipsub.

The only module that imports `libp2p`. It wraps the library's unsafe defaults as measured in
docs LIBP2P_NOTES.md: Noise only, one connection per peer, a 1 s gossip heartbeat, spam limits
off, our own publish pacing and bounded inboxes (libp2p's 32-slot queues drop silently), a size
check before publishing (1 MiB gossip vanishes without an error), framed request streams, our
own ping with a deadline (libp2p never notices a hung peer), and a shielded `host.close()`
(leaving without it leaks listeners). Peer events come from libp2p's network notifee, backed by
a slow poll, and are diffed against the last known set so each transition is reported once.

A traffic policy (fault injection, `p2p.traffic_edge`) is enforced where libp2p lets us in: a
topic validator drops gossip from blocked peers before our own validator runs, the drain task
holds delayed gossip, requests check before opening a stream, and a peer that is cut off both
ways is disconnected, its new connections closed as soon as the notifee reports them, and never
dialled; so gossipsub has no link to it at all while the policy holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress

import multiaddr
import nacl.signing
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub import floodsub as _floodsub
from libp2p.pubsub import gossipsub as _gossipsub
from libp2p.pubsub import pubsub as _pubsub
from libp2p.pubsub import utils as _pubsub_utils
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.tools.anyio_service import background_trio_service

from p2p.framing import FRAME_HEADER, FrameError, read_frame, read_frame_from, write_frame
from p2p.identity import Identity
from p2p.liveness import PING_NONCE, PingMonitor
from p2p.memory_transport import PublishPacer
from p2p.peer_record_cache import VerifiedRecords
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

logger = logging.getLogger("gpumesh.libp2p")


def _install_peer_record_cache() -> VerifiedRecords:
    """pubsub checks the sender's signed peer record on every RPC: remember the check
    (`p2p.peer_record_cache`), where pubsub, gossipsub and floodsub call it."""
    current = getattr(_pubsub, "maybe_consume_signed_record", None)
    if isinstance(current, VerifiedRecords):
        return current
    cache = VerifiedRecords(_pubsub_utils.maybe_consume_signed_record)
    for module in (_pubsub, _gossipsub, _floodsub):
        module.maybe_consume_signed_record = cache  # type: ignore[attr-defined]
    return cache


_peer_records = _install_peer_record_cache()


async def _credit_at_half_window(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """Replaces `YamuxStream._auto_tune_and_send_window_update`: the receiver credits the
    sender once half its window has been read (go-yamux's rule), and still doubles the window
    for a stream that keeps it busy (the library's auto-tuning, kept as it is).

    py-libp2p 0.8.1 also sends a WINDOW_UPDATE after nearly every read, even with
    PY_YAMUX_RELEASE_ON_READ=0 (its "partial slack" branch credits any read while the window
    is short of full): for a small request and its response on a kept stream that is 2
    updates beside the 2 data frames, each one more Noise-sealed socket write for the sender
    and a read, decryption and dispatch for the receiver. On 16 committee members sharing 2
    cores the updates were ~9% of a member's event loop. This is that function without its
    two per-read branches."""
    total = 0
    async with self.window_lock:
        self._pending_recv_release += bytes_read
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        threshold = self._grow_threshold()
        delta = self.target_recv_window - (self.recv_window + buffered)
        if delta >= threshold and delta > 0:
            total = self._grow_to_delta(buffered)
        elif self._pending_recv_release >= threshold:
            total = self._pending_recv_release
            self.recv_window += total
        if total > 0:
            self._pending_recv_release = 0
            total += self._apply_autotune_epoch(buffered)
    if total > 0:
        await self.send_window_update(total, skip_lock=True)


YamuxStream._auto_tune_and_send_window_update = _credit_at_half_window  # type: ignore[method-assign]


async def _close_host(host: IHost) -> None:
    """`host.close()`, shielded and bounded. It runs twice on the way out (inside and
    outside the pubsub service); libp2p makes the second a no-op."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
        await host.close()


PING_PROTOCOL = "/gpumesh/ping/1.0.0"
PEER_POLL_INTERVAL_S = 1.0
"""Backstop for the connection notifee: the peer set is re-read at least this often."""
CLOSE_TIMEOUT_S = 5.0
KEPT_IDLE_S = 60.0
"""How long a served request stream waits for the requester's next request before closing."""
_NET_ERRORS = (BaseLibp2pError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def peer_id_via_libp2p(public_key: bytes) -> str:
    """libp2p's own peer id for an ed25519 key; tests check `Identity.peer_id` against it."""
    return str(ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)))


class Libp2pTransport:
    """One libp2p node. Implements `p2p.transport.Transport`; open with `Libp2pTransport.open`."""

    def __init__(
        self, host: IHost, pubsub: Pubsub, config: TransportConfig, router: GossipSub | None = None
    ) -> None:
        self._host = host
        self._pubsub = pubsub
        self._router = router
        self._config = config
        self._peer_id = str(host.get_id())
        self._stats = TransportStats(extra={"pings_ok": 0})
        _drop_seen_before_spawning(pubsub, self._stats)
        self._edge = PolicyEdge(self._stats, config.inbox_max)
        self._refusing: set[PeerId] = set()
        self._pacer = PublishPacer(config.publish_rate_per_s)
        self._known_peers: frozenset[PeerId] = frozenset()
        self._pings = PingMonitor(
            config,
            self._stats,
            round_trip=self._ping_round_trip,
            peers=self.connected_peers,
            drop=self._drop_unresponsive,
        )
        self._ping_paused = False
        self._ping_streams: dict[PeerId, INetStream] = {}
        self._kept: dict[tuple[PeerId, str], INetStream] = {}
        """Idle request streams kept for the next request on the same protocol to the peer."""
        self._kept_locks: dict[tuple[PeerId, str], trio.Lock] = {}
        self._serving: set[trio.CancelScope] = set()
        self._inboxes: list[trio.MemorySendChannel[GossipMessage]] = []
        self._nursery: trio.Nursery | None = None
        self._events_send, self._events_recv = trio.open_memory_channel[PeerEvent](config.inbox_max)
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        identity: Identity,
        listen_addrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        config: TransportConfig | None = None,
    ) -> AsyncIterator[Libp2pTransport]:
        """Start a host listening on `listen_addrs` and run it until the block exits."""
        _route_libp2p_logging()
        config = config or TransportConfig()
        listen = [multiaddr.Multiaddr(a) for a in listen_addrs]
        host, pubsub, router = _build_host(identity, listen, config)
        if str(host.get_id()) != identity.peer_id:
            raise RuntimeError(f"libp2p derived {host.get_id()} for {identity.peer_id}")
        node = cls(host, pubsub, config, router)
        host.get_network().register_notifee(_WakeOnConnection(node._wake))
        host.set_stream_handler(TProtocol(PING_PROTOCOL), node._serve_ping)
        async with host.run(listen):
            try:
                async with background_trio_service(pubsub), background_trio_service(router):
                    await pubsub.wait_until_ready()
                    try:
                        async with trio.open_nursery() as nursery:
                            node._nursery = nursery
                            node._edge.attach(nursery)
                            nursery.start_soon(node._watch_peers)
                            nursery.start_soon(node._pings.run)
                            try:
                                yield node
                            finally:
                                node._shut_down()
                                nursery.cancel_scope.cancel()
                    finally:
                        # Connections close while pubsub still runs: a gossip frame read
                        # during the close would otherwise be handed to pubsub's stopped
                        # task group and raise out of host.run ("Nursery is closed").
                        await _close_host(host)
            finally:
                await _close_host(host)

    # -- identity and connections -------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return tuple(str(a) for a in self._host.get_addrs())

    @property
    def stats(self) -> TransportStats:
        return self._stats

    def peer_rtt_ms(self) -> dict[PeerId, float]:
        connected = self.connected_peers()
        return {p: ms for p, ms in self._pings.rtt_ms.items() if p in connected}

    def connected_peers(self) -> frozenset[PeerId]:
        """Connected peers, less those being closed because the traffic policy cuts them off."""
        return frozenset(
            peer
            for peer in (str(p) for p in self._host.get_connected_peers())
            if not self._edge.refuses(peer)
        )

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        return self._events_recv

    async def connect(self, addr: str) -> PeerId:
        """Dial `addr` and wait until the pubsub stream is up, so gossip can flow on return."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except (ValueError, BaseLibp2pError) as exc:
            raise ConnectFailed(addr, f"bad address: {exc}") from exc
        if str(info.peer_id) == self._peer_id:
            raise ConnectFailed(addr, "cannot connect to ourselves")
        if self._edge.refuses(str(info.peer_id)):
            self._edge.count_refused()
            raise ConnectFailed(addr, BLOCKED_REASON)
        timeout_s = self._config.request_timeout_ms / 1000
        try:
            with trio.fail_after(timeout_s):
                await self._host.connect(info)
                await self._pubsub.wait_for_peer(info.peer_id, timeout=timeout_s)
        except trio.TooSlowError:
            raise ConnectFailed(addr, f"not ready within {timeout_s * 1000:.0f} ms") from None
        except _NET_ERRORS as exc:
            raise ConnectFailed(addr, f"{type(exc).__name__}: {exc}") from exc
        self._reconcile_peers()
        return str(info.peer_id)

    async def disconnect(self, peer: PeerId) -> None:
        pid = _parse_peer(peer)
        if pid is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._host.disconnect(pid)
        self._reconcile_peers()

    def _wake(self) -> None:
        """Called from libp2p's notifee tasks: coalesce into at most one pending wake-up."""
        with suppress(trio.WouldBlock, trio.ClosedResourceError):
            self._wake_send.send_nowait(None)

    async def _watch_peers(self) -> None:
        while True:
            with trio.move_on_after(PEER_POLL_INTERVAL_S):
                await self._wake_recv.receive()
            self._reconcile_peers()
            self._note_mesh()

    def _note_mesh(self) -> None:
        """Gossip mesh size (fewest peers in any topic's mesh): gossip reaches mesh peers at
        once and others only through heartbeat IHAVE/IWANT, so an operator wants to see it."""
        if self._router is None:
            return
        meshes = [len(peers) for peers in self._router.mesh.values()]
        self._stats.extra["gossip_mesh_peers_min"] = min(meshes, default=0)

    def set_traffic_policy(self, policy: TrafficPolicy) -> None:
        self._edge.set(policy)
        self._reconcile_peers()  # reports cut-off peers as gone and starts closing them

    def _refuse(self, peer: PeerId) -> None:
        """Close a connection the policy forbids, once, in the background (never in the
        notifee's own task, which libp2p awaits while setting the connection up)."""
        if peer in self._refusing or self._nursery is None:
            return
        self._refusing.add(peer)
        self._edge.count_refused()
        self._nursery.start_soon(self._close_refused, peer)

    async def _close_refused(self, peer: PeerId) -> None:
        try:
            await self.disconnect(peer)
        finally:
            self._refusing.discard(peer)

    def _reconcile_peers(self) -> None:
        """Emit one event per transition between the last peer set we reported and now."""
        for pid in self._host.get_connected_peers():
            if self._edge.refuses(str(pid)):
                self._refuse(str(pid))
        now = self.connected_peers()
        before, self._known_peers = self._known_peers, now
        for peer in sorted(now - before):
            self._emit(PeerEvent(PeerEventKind.CONNECTED, peer))
            if self._nursery is not None:
                self._nursery.start_soon(self._reannounce_topics, ID.from_base58(peer))
        for peer in sorted(before - now):
            self._pings.forget(peer)
            _peer_records.forget(self._host, ID.from_base58(peer))
            self._ping_streams.pop(peer, None)
            # Kept streams die with their connection. Their locks stay: a request holding
            # one may still be running, and a fresh lock would let a second one race it.
            for key in [k for k in self._kept if k[0] == peer]:
                del self._kept[key]
            self._emit(PeerEvent(PeerEventKind.DISCONNECTED, peer))

    async def _reannounce_topics(self, pid: ID) -> None:
        """Send our subscriptions again once the peer's pubsub stream is registered.

        libp2p builds a new peer's hello (our topics) before it registers the stream, and a
        subscribe() in between announces to every registered peer but that one: the peer never
        learns we joined and never sends us the topic. Announcing twice is harmless.
        """
        timeout_s = self._config.request_timeout_ms / 1000
        try:
            await self._pubsub.wait_for_peer(pid, timeout=timeout_s)
        except trio.TooSlowError:
            return
        topics = [rpc_pb2.RPC.SubOpts(subscribe=True, topicid=t) for t in self._pubsub.topic_ids]
        queue = self._pubsub.peer_queues.get(pid)
        if topics and queue is not None and not queue.push(rpc_pb2.RPC(subscriptions=topics)):
            logger.warning("could not re-announce topics to %s: its queue is full", pid)

    def _emit(self, event: PeerEvent) -> None:
        try:
            self._events_send.send_nowait(event)
        except trio.WouldBlock:
            self._stats.peer_events_dropped += 1
        except trio.ClosedResourceError:
            pass

    def _shut_down(self) -> None:
        """End our consumers' loops: libp2p's own subscriptions never end after a node stops."""
        for scope in self._serving:
            scope.cancel()
        for inbox in self._inboxes:
            inbox.close()
        self._events_send.close()

    # -- gossip -------------------------------------------------------------------------------

    async def subscribe(
        self, topic: str, validator: Validator | None = None
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        if topic in self._pubsub.topic_ids or self._nursery is None:
            raise ValueError(f"already subscribed to {topic!r} (or transport not running)")
        self._pubsub.set_topic_validator(topic, self._topic_validator(validator), False)
        subscription = await self._pubsub.subscribe(topic)
        send, recv = trio.open_memory_channel[GossipMessage](self._config.inbox_max)
        self._inboxes.append(send)
        self._nursery.start_soon(self._drain, topic, subscription.get, send)
        return recv

    def _topic_validator(
        self, validator: Validator | None
    ) -> Callable[[ID, rpc_pb2.Message], bool]:
        """Adapt our validator; libp2p runs it before delivery and before forwarding. The
        traffic policy is checked first, so blocked gossip never reaches our validator."""

        def check(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            if forwarder == self._host.get_id():
                return True  # our own publish: libp2p validates it too, we trust ourselves
            if self._edge.drops_gossip(_origin(msg), str(forwarder)):
                return False
            if validator is None:
                return True
            try:
                ok = bool(validator(msg.data))
            except Exception as exc:
                logger.warning("gossip validator raised on a message from %s: %r", forwarder, exc)
                ok = False
            if not ok:
                self._stats.gossip_rejected += 1
            return ok

        return check

    async def _drain(
        self,
        topic: str,
        get: Callable[[], Awaitable[rpc_pb2.Message]],
        send: trio.MemorySendChannel[GossipMessage],
    ) -> None:
        """Move one libp2p subscription into our bounded inbox, counting what does not fit."""
        my_id = self._host.get_id().to_bytes()
        while True:
            msg = await get()
            if msg.from_id == my_id:
                continue  # libp2p hands a publisher its own message back
            self._stats.gossip_received += 1
            if not self._edge.deliver(send, GossipMessage(topic, msg.data, _origin(msg))):
                return

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > self._config.gossip_bytes_max:
            raise MessageTooLarge(len(data), self._config.gossip_bytes_max, "gossip message")
        await self._pacer.acquire()
        await self._pubsub.publish(topic, bytes(data))
        self._stats.published += 1

    # -- requests -----------------------------------------------------------------------------

    def set_request_handler(self, protocol: str, handler: RequestHandler) -> None:
        self._host.set_stream_handler(TProtocol(protocol), self._stream_handler(protocol, handler))

    async def request(
        self,
        peer: PeerId,
        protocol: str,
        data: bytes,
        *,
        timeout_ms: int | None = None,
        keep_stream: bool = False,
    ) -> bytes:
        if len(data) > self._config.request_bytes_max:
            raise MessageTooLarge(len(data), self._config.request_bytes_max, "request")
        self._stats.requests_sent += 1
        timeout_s = (self._config.request_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        try:
            await self._edge.before_request(peer, protocol)
            if keep_stream:
                return await self._kept_round_trip(peer, protocol, bytes(data), timeout_s)
            return await self._round_trip(peer, protocol, bytes(data), timeout_s)
        except RequestFailed:
            self._stats.requests_failed += 1
            raise

    async def _kept_round_trip(
        self, peer: PeerId, protocol: str, data: bytes, timeout_s: float
    ) -> bytes:
        """A request over the stream kept from the last one to this peer on this protocol.

        A new stream costs a multistream negotiation on both sides, about a tenth of a
        committee member's CPU at a few blocks a second when every consensus frame had its
        own. Requests on one kept stream go one at a time (a lock per peer and protocol).
        The server may have closed an idle stream meanwhile: a request that fails on a
        reused stream is tried once more on a fresh one (the protocols that keep streams
        take a repeated frame harmlessly); one that fails on a fresh stream, or times out,
        fails as usual. A stream that failed is reset, never kept."""
        try:
            with trio.fail_after(timeout_s):
                reply = await self._kept_try(peer, protocol, data)
            self._pings.heard(peer)
            return reply
        except trio.TooSlowError:
            raise RequestTimedOut(peer, protocol, timeout_s) from None

    async def _kept_try(self, peer: PeerId, protocol: str, data: bytes) -> bytes:
        pid = _parse_peer(peer)
        key = (peer, protocol)
        async with self._kept_locks.setdefault(key, trio.Lock()):
            for reused in (True, False):
                if pid is None or pid not in self._host.get_connected_peers():
                    raise RequestFailed(peer, protocol, "not connected")
                stream = self._kept.pop(key, None) if reused else None
                if reused and stream is None:
                    continue
                try:
                    if stream is None:
                        stream = await self._host.new_stream(pid, [TProtocol(protocol)])
                    await write_frame(stream, data)
                    response = await read_frame(stream, self._config.request_bytes_max)
                except (*_NET_ERRORS, FrameError) as exc:
                    if stream is not None:
                        await _finish(stream, False)
                    if reused:
                        continue
                    raise RequestFailed(peer, protocol, f"{type(exc).__name__}: {exc}") from exc
                except BaseException:
                    if stream is not None:  # cancelled or timed out mid-request
                        await _finish(stream, False)
                    raise
                self._kept[key] = stream
                return response
        raise AssertionError("unreachable: the try on a fresh stream returns or raises")

    async def _round_trip(
        self, peer: PeerId, protocol: str, data: bytes, timeout_s: float
    ) -> bytes:
        pid = _parse_peer(peer)
        if pid is None or pid not in self._host.get_connected_peers():
            raise RequestFailed(peer, protocol, "not connected")
        stream: INetStream | None = None
        ok = False
        try:
            with trio.fail_after(timeout_s):
                stream = await self._host.new_stream(pid, [TProtocol(protocol)])
                await write_frame(stream, data)
                response = await read_frame(stream, self._config.request_bytes_max)
            ok = True
            return response
        except trio.TooSlowError:
            raise RequestTimedOut(peer, protocol, timeout_s) from None
        except (*_NET_ERRORS, FrameError) as exc:
            raise RequestFailed(peer, protocol, f"{type(exc).__name__}: {exc}") from exc
        finally:
            if stream is not None:
                await _finish(stream, ok)

    def _stream_handler(
        self, protocol: str, handler: RequestHandler
    ) -> Callable[[INetStream], Awaitable[None]]:
        async def serve(stream: INetStream) -> None:
            """Runs in libp2p's task for the stream; must never raise into it."""
            peer = str(stream.muxed_conn.peer_id)
            limit = self._config.request_bytes_max
            ok = False
            scope = trio.CancelScope()
            self._serving.add(scope)
            try:
                with scope:
                    with trio.fail_after(self._config.request_timeout_ms / 1000):
                        request: bytes | None = await read_frame(stream, limit)
                    while request is not None:
                        self._pings.asked(peer)  # a peer that sends us requests is alive
                        response = await handler(peer, request)
                        if len(response) > limit:
                            raise MessageTooLarge(len(response), limit, "response")
                        await write_frame(stream, response)
                        self._stats.requests_served += 1
                        # The requester may keep the stream for its next request (see
                        # `_kept_round_trip`): wait up to KEPT_IDLE_S for its first bytes (a
                        # requester that closed its end raises StreamEOF or StreamClosed here
                        # rather than reading b""), then read the rest under the deadline.
                        first = b""
                        with (
                            trio.move_on_after(KEPT_IDLE_S),
                            suppress(StreamEOF, StreamClosed),
                        ):
                            first = await stream.read(FRAME_HEADER.size)
                        request = None
                        if first:
                            with trio.fail_after(self._config.request_timeout_ms / 1000):
                                request = await read_frame_from(stream, limit, first)
                    ok = True
            except (trio.TooSlowError, FrameError, *_NET_ERRORS) as exc:
                logger.info("request %s from %s failed: %r", protocol, peer[-8:], exc)
            except Exception:
                logger.exception("handler for %s from %s raised", protocol, peer[-8:])
            finally:
                self._serving.discard(scope)
                await _finish(stream, ok)

        return serve

    # -- liveness -----------------------------------------------------------------------------

    def set_ping_responder_paused(self, paused: bool) -> None:
        """Test hook: a paused node reads pings but never answers, like a SIGSTOPped process."""
        self._ping_paused = paused

    async def _ping_round_trip(self, peer: PeerId, nonce: bytes, timeout_s: float) -> bytes:
        """One ping over the peer's long-lived ping stream (opened on first use).

        A new stream per ping costs a multistream negotiation on both sides; on 10 nodes that
        was ~40% of an idle node's CPU. A stream that fails or times out is reset and the
        next ping opens a fresh one.
        """
        pid = _parse_peer(peer)
        if pid is None or pid not in self._host.get_connected_peers():
            raise RequestFailed(peer, PING_PROTOCOL, "not connected")
        stream = self._ping_streams.get(peer)
        try:
            with trio.fail_after(timeout_s):
                if stream is None:
                    stream = await self._host.new_stream(pid, [TProtocol(PING_PROTOCOL)])
                    self._ping_streams[peer] = stream
                await write_frame(stream, nonce)
                return await read_frame(stream, PING_NONCE.size)
        except trio.TooSlowError:
            reason = f"no echo within {timeout_s * 1000:.0f} ms"
        except (*_NET_ERRORS, FrameError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        broken = self._ping_streams.pop(peer, None)
        if broken is not None:
            await _finish(broken, False)
        raise RequestFailed(peer, PING_PROTOCOL, reason)

    async def _serve_ping(self, stream: INetStream) -> None:
        """Echo pings on one stream for as long as the pinger keeps it (idle streams close)."""
        idle_s = max(self._config.request_timeout_ms, 3 * self._config.ping_interval_ms) / 1000
        ok = False
        try:
            while True:
                with trio.move_on_after(idle_s) as idle:
                    nonce = await read_frame(stream, PING_NONCE.size)
                if idle.cancelled_caught:
                    ok = True
                    return
                while self._ping_paused:  # hold the stream until the pinger gives up on it
                    if not await stream.read(PING_NONCE.size):
                        return
                await write_frame(stream, nonce)
        except (FrameError, *_NET_ERRORS) as exc:
            logger.debug("ping from %s ended: %r", stream.muxed_conn.peer_id, exc)
        finally:
            await _finish(stream, ok)

    async def _drop_unresponsive(self, peer: PeerId) -> None:
        pid = _parse_peer(peer)
        if pid is not None:
            self._host.get_peerstore().clear_addrs(pid)  # keep libp2p's auto-dialer off it
        await self.disconnect(peer)


class _WakeOnConnection(INotifee):
    """Forwards libp2p's connection notifications as a wake-up; the diff happens in our task."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._wake()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._wake()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


def _build_host(
    identity: Identity, listen: list[multiaddr.Multiaddr], config: TransportConfig
) -> tuple[IHost, Pubsub, GossipSub]:
    """The host with our fixed choices: our ed25519 key, Noise only, yamux, one conn per peer."""
    priv = Ed25519PrivateKey(nacl.signing.SigningKey(identity.seed))
    key_pair = KeyPair(priv, priv.get_public_key())
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        listen_addrs=listen,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_preference="YAMUX",
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    # gossipsub 1.1, not 1.2: 1.2 answers every message received with an IDONTWANT control
    # frame to each mesh peer, an optimisation for large messages (go-libp2p sends it only
    # above 1 KiB; py-libp2p 0.8.1 for all). Our capacity announcements are a few hundred
    # bytes, so it only multiplied frames: on a 2-core VM, 10 idle nodes used ~20% less CPU
    # without it, and 16 stopped dropping each other for missed pings. Peers that speak 1.2
    # still negotiate 1.1 with us.
    router = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=config.gossip_degree,
        degree_low=config.gossip_degree_low,
        degree_high=config.gossip_degree_high,
        heartbeat_interval=config.gossip_heartbeat_s,
        spam_protection_enabled=False,
    )
    pubsub = Pubsub(host, router, strict_signing=True)
    # Message ids are origin + seqno, and libp2p seeds seqno with whole seconds: a node that
    # restarts would reuse the ids of what it just sent and peers would drop its messages as
    # already seen. Nanoseconds, as go-libp2p does, keep a restarted node's ids fresh.
    pubsub.counter = time.time_ns()
    return host, pubsub, router


def _drop_seen_before_spawning(pubsub: Pubsub, stats: TransportStats) -> None:
    """A message already seen is dropped where pubsub reads it, not in a task of its own.

    py-libp2p 0.8.1 reads each RPC, keeps the messages of topics we joined
    (`_is_subscribed_to_msg`, called there and nowhere else) and spawns a `push_msg` task for
    each, whose first check drops a message already seen. A mesh of D to D_high peers hands a
    node each message about that many times (13 copies of each capacity announcement at 16
    loaded members), and a task spawn in libp2p's service manager walks its task tree: on 16
    members sharing 2 cores, spawning and running those tasks was ~13% of a member's CPU.
    `push_msg` does nothing else with a seen message (its blacklist checks come first and
    only return early too), so answering "not for us" here changes no delivery; a copy that
    arrives while the first is still being validated is not yet seen and goes on as before.
    `gossip_copies_seen` (under /status transport) counts the copies dropped here."""
    subscribed = pubsub._is_subscribed_to_msg
    seen = pubsub._is_msg_seen
    stats.extra["gossip_copies_seen"] = 0

    def fresh_and_subscribed(msg: rpc_pb2.Message) -> bool:
        if not subscribed(msg):
            return False
        if seen(msg):
            stats.extra["gossip_copies_seen"] += 1
            return False
        return True

    pubsub._is_subscribed_to_msg = fresh_and_subscribed  # type: ignore[method-assign]


class _ToGpumeshLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logger.handle(record)


def _route_libp2p_logging() -> None:
    """libp2p logs warnings and tracebacks straight to stderr; send them through our logger."""
    lib = logging.getLogger("libp2p")
    if not any(isinstance(h, _ToGpumeshLog) for h in lib.handlers):
        # The handler's level matters too: some libp2p modules set INFO on their own logger.
        lib.addHandler(_ToGpumeshLog(logging.WARNING))
    lib.propagate = False
    lib.setLevel(logging.WARNING)


def _origin(msg: rpc_pb2.Message) -> PeerId:
    return str(ID(msg.from_id))


def _parse_peer(peer: PeerId) -> ID | None:
    try:
        return ID.from_base58(peer)
    except (ValueError, BaseLibp2pError):
        return None


async def _finish(stream: INetStream, ok: bool) -> None:
    """Close a stream that did its job, reset one that did not; never raise, never hang."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await (stream.close() if ok else stream.reset())
        except _NET_ERRORS as exc:
            logger.debug("stream cleanup failed: %r", exc)
