"""NodeRuntime end to end inside one trio run: real libp2p sockets on 127.0.0.1 (and the
in-memory transport), real status endpoint, convergence awaited on the node's own events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from node.capacity import CapacityReport
from node.config import default_config
from node.runtime import NodeRuntime, RuntimeInfo, running_node
from p2p.announcements import TOPIC_CAPACITY, CapacityAnnouncement, GpuSpec
from p2p.identity import Identity
from p2p.memory_transport import MemoryNetwork
from p2p.transport import PeerEventKind
from p2p.wire import sign

GPUS = [
    (GpuSpec("RTX 4090", 2, 24564),),
    (GpuSpec("A100", 4, 81920),),
    (GpuSpec("L40S", 1, 46068),),
]


def make_runtime(tmp: Path, i: int, bootstrap: list[str], **kw: object) -> NodeRuntime:
    cfg = default_config(
        f"n{i}",
        listen_port=0,
        status_port=0,
        bootstrap=bootstrap,
        gpus=GPUS[i % 3],
        announce_interval_ms=500,
        base_dir=tmp / f"n{i}",
    )
    capacity = CapacityReport(GPUS[i % 3], "declared", "declared in test")
    return NodeRuntime(cfg, Identity.derive("runtime-test", i), capacity, **kw)  # type: ignore[arg-type]


async def wait_for_nodes(runtime: NodeRuntime, count: int, timeout_s: float = 20) -> None:
    assert runtime.status_app is not None
    met, snap = await runtime.status_app.wait_until(
        lambda s: s["supply"]["nodes"] >= count, int(timeout_s * 1000)
    )  # type: ignore[index]
    assert met, f"{runtime.config.node.name} saw only {snap['supply']}"


@asynccontextmanager
async def libp2p_line(
    tmp: Path, count: int
) -> AsyncIterator[list[tuple[NodeRuntime, RuntimeInfo]]]:
    """Nodes where node i bootstraps only from node i-1: a line, so gossip must take hops
    (until the cores dial the nodes they learn of)."""
    nodes: list[tuple[NodeRuntime, RuntimeInfo]] = []
    async with AsyncExitStack() as stack:
        for i in range(count):
            boot = [nodes[-1][1].listen_addrs[0]] if nodes else []
            rt = make_runtime(tmp, i, boot)
            nodes.append((rt, await stack.enter_async_context(running_node(rt))))
        yield nodes


async def test_three_libp2p_nodes_converge_on_one_supply_view(tmp_path: Path) -> None:
    async with libp2p_line(tmp_path, 3) as nodes:
        with trio.fail_after(30):
            for rt, _ in nodes:
                await wait_for_nodes(rt, 3)
        views = [rt.core.supply(rt.clock_ms()) for rt, _ in nodes]
        assert all(v.gpus == 7 and v.nodes == 3 for v in views)
        assert views[0].gpus_by_model == (("A100", 4), ("L40S", 1), ("RTX 4090", 2))
        # the runtime file tells tools where the node is
        info = json.loads((Path(nodes[0][0].config.node.data_dir) / "runtime.json").read_text())
        assert info["peer_id"] == nodes[0][1].peer_id


async def test_status_and_metrics_endpoints_over_http(tmp_path: Path) -> None:
    async with libp2p_line(tmp_path, 2) as nodes:
        _, info = nodes[1]
        host, port = info.status_addr.split(":")
        assert host == "127.0.0.1"
        with trio.fail_after(30):
            # long-poll: the server answers once the node sees 2 nodes
            status = await http_get(host, int(port), "/status?wait_nodes=2&timeout_ms=20000")
            assert status.startswith(b"HTTP/1.1 200")
            body = json.loads(status.split(b"\r\n\r\n", 1)[1])
            assert body["supply"]["nodes"] == 2 and body["name"] == "n1"
            assert len(body["peers"]) == 1
            metrics = await http_get(host, int(port), "/metrics")
            assert b"gpumesh_supply_nodes 2.0" in metrics
            assert b"gpumesh_transport_published_total" in metrics
            missing = await http_get(host, int(port), "/nope")
            assert missing.startswith(b"HTTP/1.1 404")
            bad = await http_get(host, int(port), "/status?wait_nodes=-1")
            assert bad.startswith(b"HTTP/1.1 400")
            timed_out = await http_get(host, int(port), "/status?wait_nodes=99&timeout_ms=200")
            assert timed_out.startswith(b"HTTP/1.1 408")


async def http_get(host: str, port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_runtime_on_the_memory_transport(tmp_path: Path) -> None:
    network = MemoryNetwork()

    def opener(identity: Identity, _listen: list[str], config: object):  # type: ignore[no-untyped-def]
        return network.open(identity, config)  # type: ignore[arg-type]

    rts = [make_runtime(tmp_path, i, [], open_transport=opener) for i in range(3)]
    async with AsyncExitStack() as stack:
        infos = [await stack.enter_async_context(running_node(rt)) for rt in rts]
        for rt in rts[1:]:
            assert rt.transport is not None
            await rt.transport.connect(infos[0].listen_addrs[0])
        with trio.fail_after(15):
            for rt in rts:
                await wait_for_nodes(rt, 3)


async def test_garbage_dies_at_the_validator_and_equivocators_are_disconnected(
    tmp_path: Path,
) -> None:
    network = MemoryNetwork()

    def opener(identity: Identity, _listen: list[str], config: object):  # type: ignore[no-untyped-def]
        return network.open(identity, config)  # type: ignore[arg-type]

    rt = make_runtime(tmp_path, 0, [], open_transport=opener)
    chain = rt.config.node.chain_id.encode()
    mallory = Identity.derive("mallory")

    def signed(seq: int, price: int) -> bytes:
        now = rt.clock_ms()
        ann = CapacityAnnouncement(
            node_id=mallory.public_key,
            seq=seq,
            issued_ms=now,
            expires_ms=now + 20_000,
            region="eu-west",
            gpus=(GpuSpec("H100", 8, 81559),),
            price_per_gpu_hour=price,
            free_gpus=8,
            load_permille=0,
            gpu_source="declared",
            addrs=(),
        )
        return sign(ann, mallory, chain).encode()

    async with running_node(rt) as info, network.open(mallory) as attacker:
        events = attacker.peer_events()
        await attacker.connect(info.listen_addrs[0])
        assert (await events.receive()).kind is PeerEventKind.CONNECTED
        assert rt.transport is not None and rt.status_app is not None
        with trio.fail_after(15):
            for _ in range(10):
                await attacker.publish(TOPIC_CAPACITY, b"\x93\x01\x02garbage")
            await attacker.publish(TOPIC_CAPACITY, signed(seq=1, price=100))
            met, _ = await rt.status_app.wait_until(lambda s: s["supply"]["nodes"] == 2, 10_000)  # type: ignore[index]
            assert met
            assert rt.transport.stats.gossip_rejected == 10
            assert "malformed" not in rt.core.verdict_counts  # never reached the core
            # Same seq, different content: equivocation. Penalised until disconnected.
            for price in range(101, 101 + rt.core.config.penalties_max):
                await attacker.publish(TOPIC_CAPACITY, signed(seq=1, price=price))
            event = await events.receive()
            assert (event.kind, event.peer) == (PeerEventKind.DISCONNECTED, info.peer_id)
        assert rt.core.verdict_counts["conflict"] == rt.core.config.penalties_max
