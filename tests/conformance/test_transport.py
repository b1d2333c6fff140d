"""One suite, every transport: what `p2p.transport.Transport` promises, checked on each.

Nothing here sleeps for a condition: every wait is on a channel or an event, under a
`trio.fail_after` deadline. Gossip is best effort, and gossipsub builds its mesh after
connect/subscribe, so gossip tests first publish probes until the path is known to carry them.
"""

from __future__ import annotations

import functools
import logging
import os

import pytest
import trio
import trio.testing

from p2p.identity import Identity
from p2p.libp2p_transport import Libp2pTransport, peer_id_via_libp2p
from p2p.transport import (
    GossipMessage,
    MessageTooLarge,
    PeerEvent,
    PeerEventKind,
    PeerId,
    RequestFailed,
    Transport,
    TransportConfig,
)

from .conftest import OpenCluster

TOPIC = "conformance/v1"
PROBE = b"probe:"
DEADLINE_S = 10
PROBE_WAIT_S = 0.1
MIB = 1024 * 1024


async def next_message(inbox: trio.MemoryReceiveChannel[GossipMessage]) -> GossipMessage:
    """The next message that is not a warm-up probe."""
    while True:
        msg = await inbox.receive()
        if not msg.data.startswith(PROBE):
            return msg


async def wait_gossip_ready(
    publisher: Transport, inboxes: list[trio.MemoryReceiveChannel[GossipMessage]]
) -> int:
    """Publish probes until every inbox has received one of `publisher`'s; return how many."""
    waiting = set(range(len(inboxes)))
    seq = 0
    with trio.fail_after(DEADLINE_S):
        while waiting:
            seq += 1
            await publisher.publish(TOPIC, PROBE + str(seq).encode())
            for i in sorted(waiting):
                with trio.move_on_after(PROBE_WAIT_S):
                    while i in waiting:
                        msg = await inboxes[i].receive()
                        if msg.origin == publisher.peer_id and msg.data.startswith(PROBE):
                            waiting.discard(i)
    return seq


async def next_event(node: Transport, kind: PeerEventKind, peer: PeerId) -> PeerEvent:
    """Skip other events (e.g. the cluster's own connects) until the one asked for."""
    with trio.fail_after(DEADLINE_S):
        while True:
            event = await node.peer_events().receive()
            if event.kind == kind and event.peer == peer:
                return event


async def echo_reversed(peer: PeerId, data: bytes) -> bytes:
    return data[::-1]


# -- gossip -----------------------------------------------------------------------------------


async def test_publish_reaches_every_subscriber_on_full_mesh(open_cluster: OpenCluster) -> None:
    async with open_cluster(3) as c:
        inboxes = [await node.subscribe(TOPIC) for node in c.nodes]
        for i, publisher in enumerate(c.nodes):
            others = [inbox for j, inbox in enumerate(inboxes) if j != i]
            await wait_gossip_ready(publisher, others)
            await publisher.publish(TOPIC, b"from %d \x00\xff" % i)
            with trio.fail_after(DEADLINE_S):
                for inbox in others:
                    msg = await next_message(inbox)
                    assert msg == GossipMessage(TOPIC, b"from %d \x00\xff" % i, publisher.peer_id)
        assert all(node.stats.published >= 2 for node in c.nodes)
        assert all(node.stats.gossip_received >= 2 for node in c.nodes)


async def test_multi_hop_delivery_on_a_line(open_cluster: OpenCluster) -> None:
    async with open_cluster(3, links=[(0, 1), (1, 2)]) as c:
        a, _, cc = c.nodes
        assert cc.peer_id not in a.connected_peers()
        inboxes = [await node.subscribe(TOPIC) for node in c.nodes]
        await wait_gossip_ready(a, inboxes[1:])
        await a.publish(TOPIC, b"two hops")
        with trio.fail_after(DEADLINE_S):
            assert await next_message(inboxes[2]) == GossipMessage(TOPIC, b"two hops", a.peer_id)


async def test_rejected_message_is_neither_delivered_nor_forwarded(
    open_cluster: OpenCluster,
) -> None:
    rejected = trio.Event()

    def middle_validator(data: bytes) -> bool:
        if data == b"bad":
            rejected.set()
            return False
        return True

    async with open_cluster(3, links=[(0, 1), (1, 2)]) as c:
        a, b, cc = c.nodes
        await a.subscribe(TOPIC)
        inbox_b = await b.subscribe(TOPIC, validator=middle_validator)
        inbox_c = await cc.subscribe(TOPIC)
        await wait_gossip_ready(a, [inbox_b, inbox_c])
        await a.publish(TOPIC, b"bad")
        await a.publish(TOPIC, b"good")
        with trio.fail_after(DEADLINE_S):
            assert (await next_message(inbox_c)).data == b"good"
            assert (await next_message(inbox_b)).data == b"good"
            await rejected.wait()
        assert b.stats.gossip_rejected == 1
        assert cc.stats.gossip_rejected == 0


async def test_a_raising_validator_rejects_instead_of_crashing(open_cluster: OpenCluster) -> None:
    def fragile(data: bytes) -> bool:
        if data == b"boom":
            raise ValueError("malformed")
        return True

    async with open_cluster(2) as c:
        inbox = await c[1].subscribe(TOPIC, validator=fragile)
        await wait_gossip_ready(c[0], [inbox])
        await c[0].publish(TOPIC, b"boom")
        await c[0].publish(TOPIC, b"fine")
        with trio.fail_after(DEADLINE_S):
            assert (await next_message(inbox)).data == b"fine"
        assert c[1].stats.gossip_rejected == 1


async def test_publisher_does_not_receive_its_own_message(open_cluster: OpenCluster) -> None:
    async with open_cluster(2) as c:
        a, b = c.nodes
        inbox_a, inbox_b = await a.subscribe(TOPIC), await b.subscribe(TOPIC)
        await wait_gossip_ready(a, [inbox_b])
        await wait_gossip_ready(b, [inbox_a])
        await a.publish(TOPIC, b"mine")
        with trio.fail_after(DEADLINE_S):
            assert (await next_message(inbox_b)).data == b"mine"
            await b.publish(TOPIC, b"ack")
            # Anything A was handed of its own would precede B's reply in A's inbox.
            while (msg := await inbox_a.receive()).data != b"ack":
                assert msg.origin != a.peer_id


async def test_a_full_inbox_drops_and_counts(open_cluster: OpenCluster) -> None:
    fills_validated = 0
    all_validated = trio.Event()

    def count_fills(data: bytes) -> bool:
        nonlocal fills_validated
        fills_validated += data.startswith(b"fill")
        if fills_validated == 10:
            all_validated.set()
        return True

    async with open_cluster(2, config=TransportConfig(inbox_max=2)) as c:
        inbox = await c[1].subscribe(TOPIC, validator=count_fills)
        await wait_gossip_ready(c[0], [inbox])
        stats = c[1].stats
        # Stats are read and the inbox emptied with no checkpoint in between, so a straggling
        # probe cannot slip between the two and the accounting below is exact.
        drain_all(inbox)
        received, dropped = stats.gossip_received, stats.gossip_dropped_queue_full
        for i in range(10):
            await c[0].publish(TOPIC, b"fill %d" % i)
        with trio.fail_after(DEADLINE_S):
            await all_validated.wait()
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        received, dropped = (
            stats.gossip_received - received,
            stats.gossip_dropped_queue_full - dropped,
        )
        queued = drain_all(inbox)
        assert len(queued) == 2 and received >= 10 and dropped >= 8
        assert received == dropped + len(queued)


def drain_all(inbox: trio.MemoryReceiveChannel[GossipMessage]) -> list[GossipMessage]:
    out = []
    while True:
        try:
            out.append(inbox.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_publish_is_paced_not_dropped(open_cluster: OpenCluster) -> None:
    rate_per_s, count = 50, 26  # 16 go at once, the other 10 wait 20 ms each
    async with open_cluster(2, config=TransportConfig(publish_rate_per_s=rate_per_s)) as c:
        start_s = trio.current_time()
        for i in range(count):
            await c[0].publish(TOPIC, b"%d" % i)
        assert trio.current_time() - start_s >= 0.9 * (count - 16) / rate_per_s
        assert c[0].stats.published == count


async def test_a_restarted_publisher_is_not_taken_for_a_duplicate(
    open_cluster: OpenCluster,
) -> None:
    """Message ids are origin + seqno; a restart must not reuse the ids peers still remember."""
    async with open_cluster(2) as c:
        inbox = await c[1].subscribe(TOPIC)
        await wait_gossip_ready(c[0], [inbox])
        for i in range(30):
            await c[0].publish(TOPIC, b"before %d" % i)
        await c.close(0)
        restarted = await c.reopen(0)
        await restarted.connect(c[1].listen_addrs[0])
        # Reusing ids would silently swallow the first 31+ probes; a working mesh needs few.
        assert await wait_gossip_ready(restarted, [inbox]) < 25


async def test_subscription_channels_end_when_the_transport_closes(
    open_cluster: OpenCluster,
) -> None:
    async with open_cluster(1) as c:
        inbox = await c[0].subscribe(TOPIC)
        await c.close(0)
        with trio.fail_after(DEADLINE_S), pytest.raises(trio.EndOfChannel):
            await inbox.receive()


# -- limits -----------------------------------------------------------------------------------


async def test_oversize_publish_and_request_raise(open_cluster: OpenCluster) -> None:
    config = TransportConfig(gossip_bytes_max=1000, request_bytes_max=2000)
    async with open_cluster(2, config=config) as c:
        with pytest.raises(MessageTooLarge) as gossip_error:
            await c[0].publish(TOPIC, bytes(1001))
        assert (gossip_error.value.size, gossip_error.value.limit) == (1001, 1000)
        with pytest.raises(MessageTooLarge) as request_error:
            await c[0].request(c[1].peer_id, "/conformance/echo/1", bytes(2001))
        assert (request_error.value.size, request_error.value.limit) == (2001, 2000)
        assert c[0].stats.published == 0 and c[0].stats.requests_sent == 0


async def test_response_over_the_limit_fails_the_request(open_cluster: OpenCluster) -> None:
    async def too_big(peer: PeerId, data: bytes) -> bytes:
        return bytes(4097)

    async with open_cluster(2, config=TransportConfig(request_bytes_max=4096)) as c:
        c[1].set_request_handler("/conformance/big/1", too_big)
        with pytest.raises(RequestFailed):
            await c[0].request(c[1].peer_id, "/conformance/big/1", b"x")


# -- requests ---------------------------------------------------------------------------------


async def test_request_round_trip_with_binary_and_large_payloads(
    open_cluster: OpenCluster,
) -> None:
    large = os.urandom(MIB)

    async def serve(peer: PeerId, data: bytes) -> bytes:
        return large if data == b"large" else data[::-1]

    async with open_cluster(2) as c:
        c[1].set_request_handler("/conformance/echo/1", serve)
        with trio.fail_after(DEADLINE_S):
            for payload in (b"", bytes(range(256)), b"\x00" * 70_000):
                response = await c[0].request(c[1].peer_id, "/conformance/echo/1", payload)
                assert response == payload[::-1]
            assert await c[0].request(c[1].peer_id, "/conformance/echo/1", b"large") == large
        assert c[0].stats.requests_sent == 4 and c[0].stats.requests_failed == 0
        assert c[1].stats.requests_served == 4


async def test_request_to_unknown_or_disconnected_peer_fails(open_cluster: OpenCluster) -> None:
    stranger = Identity.derive("conformance", "stranger").peer_id
    async with open_cluster(2) as c:
        c[1].set_request_handler("/conformance/echo/1", echo_reversed)
        with pytest.raises(RequestFailed) as unknown:
            await c[0].request(stranger, "/conformance/echo/1", b"hi")
        assert unknown.value.peer == stranger
        await c[0].disconnect(c[1].peer_id)
        with pytest.raises(RequestFailed):
            await c[0].request(c[1].peer_id, "/conformance/echo/1", b"hi")
        with pytest.raises(RequestFailed):
            await c[0].request("not a peer id", "/conformance/echo/1", b"hi")
        assert c[0].stats.requests_failed == 3


async def test_request_for_an_unserved_protocol_fails(open_cluster: OpenCluster) -> None:
    async with open_cluster(2) as c:
        with trio.fail_after(DEADLINE_S), pytest.raises(RequestFailed):
            await c[0].request(c[1].peer_id, "/conformance/nobody-serves-this/1", b"hi")


async def test_handler_exception_fails_the_request_and_the_server_keeps_serving(
    open_cluster: OpenCluster,
) -> None:
    async def picky(peer: PeerId, data: bytes) -> bytes:
        if data == b"crash":
            raise RuntimeError("handler bug")
        return b"ok:" + data

    async with open_cluster(2) as c:
        c[1].set_request_handler("/conformance/picky/1", picky)
        with trio.fail_after(DEADLINE_S):
            with pytest.raises(RequestFailed):
                await c[0].request(c[1].peer_id, "/conformance/picky/1", b"crash")
            assert await c[0].request(c[1].peer_id, "/conformance/picky/1", b"2") == b"ok:2"
        assert c[1].stats.requests_served == 1


async def test_request_timeout_is_honoured(open_cluster: OpenCluster) -> None:
    release = trio.Event()

    async def stuck(peer: PeerId, data: bytes) -> bytes:
        if data == b"hang":
            await release.wait()
        return data

    async with open_cluster(2) as c:
        c[1].set_request_handler("/conformance/stuck/1", stuck)
        start_s = trio.current_time()
        with trio.fail_after(DEADLINE_S), pytest.raises(RequestFailed) as timed_out:
            await c[0].request(c[1].peer_id, "/conformance/stuck/1", b"hang", timeout_ms=300)
        assert 0.3 <= trio.current_time() - start_s < 3
        assert "300 ms" in timed_out.value.reason
        with trio.fail_after(DEADLINE_S):
            assert await c[0].request(c[1].peer_id, "/conformance/stuck/1", b"next") == b"next"
        release.set()


async def test_kept_stream_requests_answer_in_order_and_survive_failures(
    open_cluster: OpenCluster,
) -> None:
    """keep_stream: request after request (and concurrent ones, which take turns) each get
    their own answer; a handler error or a timeout fails only that request, and the next
    one goes through (on a fresh stream where the old one was reset)."""
    release = trio.Event()

    async def serve(peer: PeerId, data: bytes) -> bytes:
        if data == b"crash":
            raise RuntimeError("handler bug")
        if data == b"hang":
            await release.wait()
        return b"re:" + data

    async with open_cluster(2) as c:
        c[1].set_request_handler("/conformance/kept/1", serve)
        peer = c[1].peer_id
        answers: dict[int, bytes] = {}

        async def ask(i: int) -> None:
            data = f"{i}".encode()
            answers[i] = await c[0].request(peer, "/conformance/kept/1", data, keep_stream=True)

        with trio.fail_after(DEADLINE_S):
            for i in range(5):
                await ask(i)
            async with trio.open_nursery() as nursery:
                for i in range(5, 25):
                    nursery.start_soon(ask, i)
            assert answers == {i: f"re:{i}".encode() for i in range(25)}
            with pytest.raises(RequestFailed):
                await c[0].request(peer, "/conformance/kept/1", b"crash", keep_stream=True)
            kept = functools.partial(c[0].request, peer, "/conformance/kept/1", keep_stream=True)
            assert await kept(b"a") == b"re:a"
            with pytest.raises(RequestFailed):
                await c[0].request(
                    peer, "/conformance/kept/1", b"hang", timeout_ms=300, keep_stream=True
                )
            assert await kept(b"b") == b"re:b"
        release.set()
        assert c[1].stats.requests_served == 27
        assert c[0].stats.requests_failed == 2


async def test_libp2p_keeps_one_stream_and_replaces_one_the_server_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept requests reuse one stream (one served stream for many requests); when the server
    has closed it for idleness, the next request goes out on a fresh stream, unnoticed."""
    from libp2p.abc import INetStream
    from libp2p.custom_types import TProtocol

    import p2p.libp2p_transport as lt

    monkeypatch.setattr(lt, "KEPT_IDLE_S", 0.3)
    ids = [Identity.derive("conformance", "kept", i) for i in range(2)]
    streams = {"served": 0}
    async with (
        Libp2pTransport.open(ids[0]) as client,
        Libp2pTransport.open(ids[1]) as server,
    ):
        plain = server._stream_handler("/conformance/kept/1", echo_reversed)

        async def counting(stream: INetStream) -> None:
            streams["served"] += 1
            await plain(stream)

        server._host.set_stream_handler(TProtocol("/conformance/kept/1"), counting)
        await client.connect(server.listen_addrs[0])
        with trio.fail_after(DEADLINE_S):
            for i in range(10):
                data = bytes([i, 1, 2])
                got = await client.request(
                    server.peer_id, "/conformance/kept/1", data, keep_stream=True
                )
                assert got == data[::-1]
            assert streams["served"] == 1
            await trio.sleep(0.8)  # the server closes the idle stream
            got = await client.request(
                server.peer_id, "/conformance/kept/1", b"xyz", keep_stream=True
            )
            assert got == b"zyx" and streams["served"] == 2
        assert client.stats.requests_failed == 0 and server.stats.requests_served == 11


async def test_libp2p_one_shot_requests_end_cleanly_on_the_serving_side(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server waits for a next request on every stream; a requester that closes after
    its one answer ends that wait as a finished stream, not as a failed request."""
    ids = [Identity.derive("conformance", "one-shot", i) for i in range(2)]
    async with (
        Libp2pTransport.open(ids[0]) as client,
        Libp2pTransport.open(ids[1]) as server,
    ):
        server.set_request_handler("/conformance/echo/1", echo_reversed)
        await client.connect(server.listen_addrs[0])
        with caplog.at_level(logging.INFO, logger="gpumesh.libp2p"), trio.fail_after(DEADLINE_S):
            for i in range(3):
                got = await client.request(server.peer_id, "/conformance/echo/1", bytes([i, 9]))
                assert got == bytes([9, i])
            await trio.sleep(0.3)  # the serving side sees each stream end
        assert server.stats.requests_served == 3
        assert not [r for r in caplog.records if "failed" in r.getMessage()], caplog.text


# -- peers ------------------------------------------------------------------------------------


async def test_connect_and_close_produce_peer_events(open_cluster: OpenCluster) -> None:
    async with open_cluster(2, links=[]) as c:
        a, b = c.nodes
        assert a.listen_addrs and all(x.endswith("/p2p/" + a.peer_id) for x in a.listen_addrs)
        assert await a.connect(b.listen_addrs[0]) == b.peer_id
        await next_event(a, PeerEventKind.CONNECTED, b.peer_id)
        await next_event(b, PeerEventKind.CONNECTED, a.peer_id)
        assert a.connected_peers() == {b.peer_id}
        await c.close(1)
        await next_event(a, PeerEventKind.DISCONNECTED, b.peer_id)
        assert a.connected_peers() == frozenset()
        assert a.stats.peer_events_dropped == 0


async def test_each_transition_is_reported_exactly_once(open_cluster: OpenCluster) -> None:
    async with open_cluster(2, links=[]) as c:
        a, b = c.nodes
        connected_b = PeerEvent(PeerEventKind.CONNECTED, b.peer_id)
        with trio.fail_after(DEADLINE_S):
            await a.connect(b.listen_addrs[0])
            assert await a.peer_events().receive() == connected_b
            await next_event(b, PeerEventKind.CONNECTED, a.peer_id)
            await a.connect(b.listen_addrs[0])  # already connected: no second event
            await a.disconnect(b.peer_id)
            assert await a.peer_events().receive() == PeerEvent(
                PeerEventKind.DISCONNECTED, b.peer_id
            )
            await next_event(b, PeerEventKind.DISCONNECTED, a.peer_id)
            await a.connect(b.listen_addrs[0])
            assert await a.peer_events().receive() == connected_b


# -- libp2p only ------------------------------------------------------------------------------


def test_identity_peer_id_matches_libp2p() -> None:
    for i in range(32):
        identity = Identity.derive("peer-id-check", i)
        assert identity.peer_id == peer_id_via_libp2p(identity.public_key)


async def test_libp2p_listen_addrs_are_bound_and_carry_the_peer_id() -> None:
    identity = Identity.derive("conformance", "addrs")
    async with Libp2pTransport.open(identity) as node:
        assert node.peer_id == identity.peer_id
        (addr,) = node.listen_addrs
        assert addr.startswith("/ip4/127.0.0.1/tcp/")
        assert not addr.startswith("/ip4/127.0.0.1/tcp/0/")
        assert addr.endswith("/p2p/" + identity.peer_id)


async def test_libp2p_peer_that_stops_answering_pings_is_dropped() -> None:
    config = TransportConfig(ping_interval_ms=100, ping_timeout_ms=200, ping_misses_max=2)
    ids = [Identity.derive("conformance", "ping", i) for i in range(2)]
    async with (
        Libp2pTransport.open(ids[0], config=config) as watcher,
        Libp2pTransport.open(ids[1], config=config) as hung,
    ):
        await watcher.connect(hung.listen_addrs[0])
        hung.set_ping_responder_paused(True)
        await next_event(watcher, PeerEventKind.DISCONNECTED, hung.peer_id)
        assert watcher.stats.peers_dropped_unresponsive == 1
        assert watcher.stats.pings_missed >= config.ping_misses_max
        assert hung.peer_id not in watcher.connected_peers()
