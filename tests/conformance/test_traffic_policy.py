"""Traffic policies (fault injection at the transport edge) mean the same on every transport.

A blocked peer's gossip is dropped and counted, whether it originated it or only forwarded
it; a peer cut off both ways is disconnected and refused until the policy is lifted; requests
to a blocked peer fail; delayed gossip arrives after gossip sent later by an undelayed peer.
Counters have no event to wait on, so `wait_for` checks them at each pass under a deadline.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from p2p.identity import Identity
from p2p.transport import (
    ConnectFailed,
    PeerEventKind,
    PeerId,
    PolicyError,
    RequestFailed,
    TrafficPolicy,
    TransportConfig,
)

from .conftest import OpenCluster
from .test_transport import (
    DEADLINE_S,
    TOPIC,
    echo_reversed,
    next_event,
    next_message,
    wait_gossip_ready,
)

ECHO = "/conformance/echo/1"


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(DEADLINE_S):
        while not condition():
            await trio.sleep(0.01)


async def test_blocked_gossip_is_dropped_and_counted_until_healed(
    open_cluster: OpenCluster,
) -> None:
    async with open_cluster(3, links=[(0, 1), (1, 2)]) as c:
        a, b, cc = c.nodes
        inboxes = [await node.subscribe(TOPIC) for node in c.nodes]
        await wait_gossip_ready(a, inboxes[1:])
        await wait_gossip_ready(b, [inboxes[2]])
        cc.set_traffic_policy(TrafficPolicy(blocked_in=frozenset({a.peer_id})))
        await a.publish(TOPIC, b"from a, blocked at c")
        with trio.fail_after(DEADLINE_S):
            assert (await next_message(inboxes[1])).data == b"from a, blocked at c"
        await wait_for(lambda: cc.stats.extra["policy_dropped_in"] >= 1)
        assert cc.connected_peers() == {b.peer_id}  # a one-way block keeps the link
        await b.publish(TOPIC, b"from b")
        with trio.fail_after(DEADLINE_S):
            assert (await next_message(inboxes[2])).data == b"from b"

        cc.set_traffic_policy(TrafficPolicy.none())
        await a.publish(TOPIC, b"after heal")
        with trio.fail_after(DEADLINE_S):
            msg = await next_message(inboxes[2])
        assert (msg.data, msg.origin) == (b"after heal", a.peer_id)


async def test_a_forwarder_that_is_blocked_has_its_gossip_dropped(
    open_cluster: OpenCluster,
) -> None:
    async with open_cluster(3, links=[(0, 1), (1, 2)]) as c:
        a, b, cc = c.nodes
        inboxes = [await node.subscribe(TOPIC) for node in c.nodes]
        await wait_gossip_ready(a, inboxes[1:])
        cc.set_traffic_policy(TrafficPolicy(blocked_in=frozenset({b.peer_id})))
        await a.publish(TOPIC, b"only path is through b")
        await wait_for(lambda: cc.stats.extra["policy_dropped_in"] >= 1)
        assert cc.stats.gossip_rejected == 0  # dropped before validation, not rejected by it


async def test_a_cut_off_peer_is_disconnected_refused_and_back_after_heal(
    open_cluster: OpenCluster,
) -> None:
    async with open_cluster(2, config=TransportConfig(request_timeout_ms=1_000)) as c:
        a, b = c.nodes
        b.set_request_handler(ECHO, echo_reversed)
        a.set_traffic_policy(TrafficPolicy.partition([b.peer_id]))
        await next_event(a, PeerEventKind.DISCONNECTED, b.peer_id)
        await next_event(b, PeerEventKind.DISCONNECTED, a.peer_id)
        assert a.connected_peers() == frozenset()
        with pytest.raises(ConnectFailed, match="blocked by traffic policy"):
            await a.connect(b.listen_addrs[0])
        try:  # refused at once, or (libp2p) accepted by the socket and closed right after
            await b.connect(a.listen_addrs[0])
        except ConnectFailed:
            pass
        else:
            await next_event(b, PeerEventKind.DISCONNECTED, a.peer_id)
        assert a.connected_peers() == frozenset()
        assert a.stats.extra["policy_refused"] >= 2

        a.set_traffic_policy(TrafficPolicy.none())
        with trio.fail_after(DEADLINE_S):
            assert await a.connect(b.listen_addrs[0]) == b.peer_id
            assert await a.request(b.peer_id, ECHO, b"abc") == b"cba"
        inbox = await b.subscribe(TOPIC)
        await a.subscribe(TOPIC)
        await wait_gossip_ready(a, [inbox])


async def test_requests_to_a_blocked_peer_fail(open_cluster: OpenCluster) -> None:
    async with open_cluster(2) as c:
        a, b = c.nodes
        a.set_request_handler(ECHO, echo_reversed)
        b.set_request_handler(ECHO, echo_reversed)
        a.set_traffic_policy(TrafficPolicy(blocked_out=frozenset({b.peer_id})))
        with trio.fail_after(DEADLINE_S):
            with pytest.raises(RequestFailed) as blocked:
                await a.request(b.peer_id, ECHO, b"hi")
            assert blocked.value.reason == "blocked by traffic policy"
            assert a.stats.requests_failed == 1
            assert await b.request(a.peer_id, ECHO, b"the other way") == b"yaw rehto eht"
            a.set_traffic_policy(TrafficPolicy.none())
            assert await a.request(b.peer_id, ECHO, b"hi") == b"ih"


async def test_delayed_gossip_arrives_after_later_undelayed_gossip(
    open_cluster: OpenCluster,
) -> None:
    async with open_cluster(3) as c:
        a, b, cc = c.nodes
        inbox = await cc.subscribe(TOPIC)
        await a.subscribe(TOPIC)
        await b.subscribe(TOPIC)
        await wait_gossip_ready(a, [inbox])
        await wait_gossip_ready(b, [inbox])
        cc.set_traffic_policy(TrafficPolicy(delay_ms={a.peer_id: 1_000}))
        await a.publish(TOPIC, b"slow")
        await wait_for(lambda: cc.stats.extra["policy_delayed"] >= 1)  # held at c's edge
        await b.publish(TOPIC, b"fast")
        with trio.fail_after(DEADLINE_S):
            first, second = await next_message(inbox), await next_message(inbox)
        assert [first.data, second.data] == [b"fast", b"slow"]
        assert second.origin == a.peer_id


def test_policy_json_round_trip_and_errors() -> None:
    peer: PeerId = Identity.derive("policy-json", 0).peer_id
    policy = TrafficPolicy(blocked_in=frozenset({peer}), delay_ms={peer: 250}, default_delay_ms=10)
    assert TrafficPolicy.from_json(policy.as_json()) == policy
    assert TrafficPolicy.from_json({}) == TrafficPolicy.none()
    assert TrafficPolicy.partition([peer]).cuts_off(peer)
    bad: list[tuple[object, str]] = [
        ([], "policy"),
        ({"blocked_in": "x"}, "blocked_in"),
        ({"blocked_in": ["nope"]}, "blocked_in[0]"),
        ({"blocked_out": [peer, 5]}, "blocked_out[1]"),
        ({"delay_ms": {peer: -1}}, f"delay_ms[{peer!r}]"),
        ({"delay_ms": {"QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N": 1}}, "delay_ms"),
        ({"default_delay_ms": 10**9}, "default_delay_ms"),
        ({"blocked": []}, "blocked"),
    ]
    for raw, field in bad:
        with pytest.raises(PolicyError) as caught:
            TrafficPolicy.from_json(raw)
        assert caught.value.field.startswith(field), (raw, caught.value)
