"""Fixtures that open the same little networks on every transport implementation.

Each node runs in its own task so a test can close one node while the others keep running
(cancel scopes must exit in LIFO order within a task, so an exit stack could not do that).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from p2p.identity import Identity
from p2p.libp2p_transport import Libp2pTransport
from p2p.memory_transport import MemoryNetwork
from p2p.transport import Transport, TransportConfig

KINDS = ("memory", "libp2p")
Opener = Callable[[Identity, TransportConfig], AbstractAsyncContextManager[Transport]]


@dataclass
class Cluster:
    """N open transports of one kind, linked as the test asked."""

    kind: str
    nodes: list[Transport] = field(default_factory=list)
    _stops: list[trio.Event] = field(default_factory=list)
    _done: list[trio.Event] = field(default_factory=list)

    def __getitem__(self, index: int) -> Transport:
        return self.nodes[index]

    _start: Callable[[int], Awaitable[Transport]] | None = None

    async def close(self, index: int) -> None:
        """Close one node and wait until it has fully left."""
        self._stops[index].set()
        await self._done[index].wait()

    async def reopen(self, index: int) -> Transport:
        """Open a closed node again with the same identity (a restart); it starts unlinked."""
        assert self._start is not None and self._done[index].is_set()
        self.nodes[index] = await self._start(index)
        return self.nodes[index]


OpenCluster = Callable[..., AbstractAsyncContextManager[Cluster]]


def _opener(kind: str) -> Opener:
    if kind == "memory":
        network = MemoryNetwork()
        return lambda identity, config: network.open(identity, config)
    return lambda identity, config: Libp2pTransport.open(identity, config=config)


async def _run_node(
    opener: Opener,
    identity: Identity,
    config: TransportConfig,
    stop: trio.Event,
    done: trio.Event,
    task_status: trio.TaskStatus[Transport] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        async with opener(identity, config) as transport:
            task_status.started(transport)
            await stop.wait()
    finally:
        done.set()


def full_mesh(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


@pytest.fixture(params=KINDS)
def open_cluster(request: pytest.FixtureRequest) -> OpenCluster:
    """`async with open_cluster(n, links=..., config=...) as c:` gives n connected transports.

    `links` defaults to a full mesh; each (a, b) is dialled by a. Identities are derived from
    the node's index, so runs are repeatable.
    """
    kind: str = request.param

    @asynccontextmanager
    async def open_(
        n: int,
        links: Sequence[tuple[int, int]] | None = None,
        config: TransportConfig | None = None,
    ) -> AsyncIterator[Cluster]:
        opener = _opener(kind)
        cluster = Cluster(kind)
        async with trio.open_nursery() as nursery:

            async def start(i: int) -> Transport:
                stop, done = trio.Event(), trio.Event()
                if i < len(cluster._stops):
                    cluster._stops[i], cluster._done[i] = stop, done
                else:
                    cluster._stops.append(stop)
                    cluster._done.append(done)
                identity = Identity.derive("conformance", i)
                node: Transport = await nursery.start(
                    _run_node, opener, identity, config or TransportConfig(), stop, done
                )
                return node

            cluster._start = start
            try:
                for i in range(n):
                    cluster.nodes.append(await start(i))
                for a, b in full_mesh(n) if links is None else links:
                    await cluster[a].connect(cluster[b].listen_addrs[0])
                yield cluster
            finally:
                for stop in cluster._stops:
                    stop.set()

    return open_
