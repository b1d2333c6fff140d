"""NodeRuntime: the one trio loop of a real node, at the edge around the pure NodeCore.

It turns the world into core inputs (gossip, peer events, the clock, GPU load) and executes
each `Ready` in order: publish, disconnect, dial, log, then wakes status waiters. All I/O and
every clock read of the node live here, so the core stays replayable (DESIGN.md).
Structured concurrency throughout: one nursery per node, services started with
`nursery.start()`, bounded channels everywhere.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

from consensus.market.chain_kernel import warm_up as warm_up_scheduler
from node import gc_pauses
from node.capacity import CapacityReport, read_gpu_utilisation
from node.chain_restore import load_chain_settings
from node.chain_service import ChainService
from node.config import NodeConfig
from node.core import (
    CoreConfig,
    Dial,
    GossipIn,
    Input,
    ListenAddrs,
    LocalLoad,
    NodeCore,
    PeerDown,
    PeerUp,
    Ready,
    Tick,
)
from node.job_runner import JobRunner, WantedOffer
from node.logs import LOGGER_NAME, log_event
from node.market_http import is_market_path, market_api, serve_market
from node.metrics import NodeMetrics
from node.status_http import AdminApi, ChainApi, StatusApp, read_admin_token, serve_status
from p2p.announcements import TOPIC_CAPACITY, BookConfig, gossip_validator
from p2p.identity import Identity, short_peer
from p2p.transport import (
    ConnectFailed,
    GossipMessage,
    PeerEvent,
    PeerEventKind,
    TrafficPolicy,
    Transport,
    TransportConfig,
)

INBOX_MAX = 1024
DIALS_CONCURRENT_MAX = 4
BOOTSTRAP_BACKOFF_S = (0.1, 5.0)
LINK_STABLE_S = 1.0
"""A bootstrap link that drops sooner than this after we made it counts as a failed dial (the
peer refused us, e.g. its side of a partition), so we back off instead of redialling hot."""
GPU_LOAD_INTERVAL_S = 10.0
RUNTIME_FILE = "runtime.json"

TransportOpener = Callable[
    [Identity, list[str], TransportConfig], AbstractAsyncContextManager[Transport]
]


def wall_clock_ms() -> int:
    """Announcements carry issue and expiry times other nodes compare: wall time, in ms."""
    return time.time_ns() // 1_000_000


def open_libp2p(
    identity: Identity, listen: list[str], config: TransportConfig
) -> AbstractAsyncContextManager[Transport]:
    from p2p.libp2p_transport import Libp2pTransport  # imported late: libp2p costs 0.5 s

    return Libp2pTransport.open(identity, listen_addrs=listen, config=config)


@dataclass(frozen=True)
class RuntimeInfo:
    """What a started node reports: how to reach it. Written to data_dir/runtime.json."""

    name: str
    peer_id: str
    pid: int
    listen_addrs: tuple[str, ...]
    status_addr: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "peer_id": self.peer_id,
                "pid": self.pid,
                "listen_addrs": list(self.listen_addrs),
                "status_addr": self.status_addr,
            }
        )


def core_config(config: NodeConfig, capacity: CapacityReport) -> CoreConfig:
    g = config.gossip
    return CoreConfig(
        chain_id=config.node.chain_id.encode(),
        region=config.node.region,
        gpus=capacity.gpus,
        gpu_source=capacity.source,
        price_per_gpu_hour=config.capacity.price_per_gpu_hour,
        announce_interval_ms=g.announce_interval_ms,
        announcement_ttl_ms=g.announcement_ttl_ms,
        book=BookConfig(),
    )


class NodeRuntime:
    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        capacity: CapacityReport,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        open_transport: TransportOpener = open_libp2p,
    ) -> None:
        self.config = config
        self.identity = identity
        self.capacity = capacity
        self.clock_ms = clock_ms
        self.core = NodeCore(identity, core_config(config, capacity))
        self.gc_pauses = gc_pauses.installed()
        self._open_transport = open_transport
        self._log = logging.getLogger(f"{LOGGER_NAME}.node")
        self._peers_changed = trio.Event()
        self._policy_changed = trio.Event()
        self._dial_limiter = trio.CapacityLimiter(DIALS_CONCURRENT_MAX)
        self.policy = TrafficPolicy.none()
        token_file = config.status.admin_token_file
        # Read before the node starts, so a bad token file stops it with a config error.
        self._admin_token = read_admin_token(token_file, config.path) if token_file else None
        settings = load_chain_settings(config)  # a bad genesis stops the node here, too
        self.chain: ChainService | None = None
        if settings is not None:
            warm_up_scheduler()  # compiled before any block needs it (seconds, the first time)
            self.chain = ChainService(
                identity,
                settings,
                clock_ms=clock_ms,
                on_change=self._changed,
                addrs_of=self._addrs_of,
                dial=lambda peer, addrs: self._dial(Dial(peer, addrs)),
            )
        self.jobs: JobRunner | None = None
        if self.chain is not None:
            wanted = WantedOffer(
                capacity.gpus, config.node.region, config.capacity.price_per_gpu_hour
            )
            self.jobs = JobRunner(
                identity, self.chain, config.chain_data_dir / "results", wanted,
                slots=sum(g.count for g in capacity.gpus), on_change=self._changed,
            )  # one replica per GPU at a time, as the scheduler counts them  # fmt: skip
        self.transport: Transport | None = None
        self.metrics: NodeMetrics | None = None
        self.status_app: StatusApp | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[RuntimeInfo] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Reports RuntimeInfo once listening and serving status."""
        cfg = self.config
        async with (
            self._open_transport(
                self.identity, list(cfg.network.listen), cfg.transport_config()
            ) as transport,
            trio.open_nursery() as nursery,
        ):
            self.transport = transport
            self.metrics = NodeMetrics(lambda: transport.stats)
            admin = None
            if self._admin_token is not None:
                admin = AdminApi(self._admin_token, lambda: self.policy, self.set_traffic_policy)
            chain_api = None
            if self.chain is not None:
                self.metrics.add_chain(self.chain.status)
                c = self.chain
                chain_api = ChainApi(
                    c.account, c.ledger, c.submit_tx, c.block, c.tx_pending, c.submit_txs
                )
            self.status_app = StatusApp(self._snapshot, self.metrics.render, admin, chain_api)
            self.status_app.probe = self._probe
            if self.chain is not None and self.jobs is not None:
                market = market_api(self.chain, self.jobs)
                self.status_app.market = functools.partial(serve_market, market)
                self.status_app.market_paths = is_market_path
            inbox_send, inbox = trio.open_memory_channel[Input](INBOX_MAX)
            chain_id, book_cfg = cfg.node.chain_id.encode(), self.core.config.book
            gossip = await transport.subscribe(
                TOPIC_CAPACITY,
                lambda data: gossip_validator(data, chain_id, self.clock_ms(), book_cfg),
            )
            nursery.start_soon(self._pump_gossip, gossip, inbox_send.clone())
            nursery.start_soon(self._pump_peers, transport.peer_events(), inbox_send.clone())
            if self.capacity.source != "declared":
                nursery.start_soon(self._pump_gpu_load, inbox_send.clone())
            if self.chain is not None:
                await nursery.start(self.chain.run, transport)
            if self.jobs is not None:
                await nursery.start(self.jobs.run, transport)
            host, port = cfg.status.host, cfg.status.port
            bound = await nursery.start(serve_status, self.status_app, host, port)
            for addr in cfg.network.bootstrap:
                nursery.start_soon(self._keep_connected, addr)
            info = RuntimeInfo(
                cfg.node.name,
                self.identity.peer_id,
                os.getpid(),
                transport.listen_addrs,
                f"{host}:{bound}",
            )
            self._write_runtime_file(info)
            log_event(
                self._log,
                "node_started",
                {
                    "peer_id": info.peer_id,
                    "listen": list(info.listen_addrs),
                    "status": info.status_addr,
                    "gpus": self.capacity.detail,
                    "gpu_source": self.capacity.source,
                },
            )
            await inbox_send.send(ListenAddrs(transport.listen_addrs))
            task_status.started(info)
            try:
                await self._main_loop(inbox, nursery)
            finally:
                log_event(self._log, "node_stopping", {"peer_id": info.peer_id})

    def _write_runtime_file(self, info: RuntimeInfo) -> None:
        path = Path(self.config.node.data_dir) / RUNTIME_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(info.to_json() + "\n", encoding="utf-8")
        os.replace(tmp, path)

    # -- the loop ------------------------------------------------------------------------------

    async def _main_loop(
        self, inbox: trio.MemoryReceiveChannel[Input], nursery: trio.Nursery
    ) -> None:
        wake_at_ms = 0
        while True:
            inp: Input = Tick()
            delay_s = max(0, wake_at_ms - self.clock_ms()) / 1000
            with trio.move_on_after(delay_s):
                inp = await inbox.receive()
            now_ms = self.clock_ms()
            ready = self.core.step(now_ms, inp)
            await self._execute(ready, now_ms, nursery)
            wake_at_ms = ready.wake_at_ms

    async def _execute(self, ready: Ready, now_ms: int, nursery: trio.Nursery) -> None:
        transport = self._require_transport()
        for pub in ready.publish:
            await transport.publish(pub.topic, pub.data)
        for cut in ready.disconnect:
            log_event(
                self._log,
                "peer_disconnected_for_misbehaviour",
                {"peer": short_peer(cut.peer), "reason": cut.reason},
                logging.WARNING,
            )
            await transport.disconnect(cut.peer)
        for dial in ready.dial:
            nursery.start_soon(self._dial, dial)
        for event in ready.events:
            level = logging.WARNING if event.name == "announcement_rejected" else logging.INFO
            log_event(self._log, event.name, event.as_dict(), level)
        if self.metrics is not None:
            self.metrics.observe(self.core, ready, now_ms)
        if self.status_app is not None:
            self.status_app.changed()

    # -- input pumps ---------------------------------------------------------------------------

    async def _pump_gossip(
        self,
        messages: trio.MemoryReceiveChannel[GossipMessage],
        inbox: trio.MemorySendChannel[Input],
    ) -> None:
        async with inbox:
            async for msg in messages:
                await inbox.send(GossipIn(msg.topic, msg.data, msg.origin))

    async def _pump_peers(
        self, events: trio.MemoryReceiveChannel[PeerEvent], inbox: trio.MemorySendChannel[Input]
    ) -> None:
        async with inbox:
            async for ev in events:
                self._wake_links()
                up = ev.kind is PeerEventKind.CONNECTED
                await inbox.send(PeerUp(ev.peer) if up else PeerDown(ev.peer))

    async def _pump_gpu_load(self, inbox: trio.MemorySendChannel[Input]) -> None:
        total = sum(g.count for g in self.capacity.gpus)
        async with inbox:
            while True:
                permille = await trio.to_thread.run_sync(read_gpu_utilisation)
                if permille is not None:
                    await inbox.send(LocalLoad(free_gpus=total, load_permille=permille))
                await trio.sleep(GPU_LOAD_INTERVAL_S)

    # -- connectivity --------------------------------------------------------------------------

    def set_traffic_policy(self, policy: TrafficPolicy) -> None:
        """Apply a fault-injection policy (from /admin/policy) to the transport, and wake the
        dial loops: cut-off peers stop being dialled, healed ones are dialled at once."""
        self._require_transport().set_traffic_policy(policy)
        self.policy = policy
        log_event(
            self._log,
            "traffic_policy",
            {
                "blocked_in": sorted(short_peer(p) for p in policy.blocked_in),
                "blocked_out": sorted(short_peer(p) for p in policy.blocked_out),
                "delay_ms": {short_peer(p): ms for p, ms in policy.delay_ms.items()},
                "default_delay_ms": policy.default_delay_ms,
            },
            logging.WARNING if not policy.is_none else logging.INFO,
        )
        self._policy_changed.set()
        self._policy_changed = trio.Event()
        self._wake_links()
        if self.status_app is not None:
            self.status_app.changed()

    def _changed(self) -> None:
        if self.status_app is not None:
            self.status_app.changed()

    def _addrs_of(self, account: bytes) -> tuple[str, ...]:
        """Where a node is reachable, from its live capacity announcement."""
        ann = self.core.book.get(account)
        return ann.addrs if ann is not None else ()

    def _wake_links(self) -> None:
        self._peers_changed.set()
        self._peers_changed = trio.Event()

    async def _pause(self, seconds: float) -> None:
        """Back off, but not past a policy change (a heal must not wait out a backoff)."""
        with trio.move_on_after(seconds):
            await self._policy_changed.wait()

    async def _keep_connected(self, addr: str) -> None:
        """Stay connected to a bootstrap peer: dial with capped exponential backoff, and dial
        again whenever it drops (restarts, partitions). A peer the traffic policy cuts off is
        not dialled until the policy changes."""
        transport = self._require_transport()
        peer = addr.rsplit("/p2p/", 1)[-1]
        backoff_s, backoff_max_s = BOOTSTRAP_BACKOFF_S
        connected_at_s = -math.inf
        while True:
            if self.policy.cuts_off(peer):
                backoff_s = BOOTSTRAP_BACKOFF_S[0]
                await self._policy_changed.wait()
                continue
            if peer in transport.connected_peers():
                await self._peers_changed.wait()  # set on every peer event and policy change
                continue
            up_s, connected_at_s = trio.current_time() - connected_at_s, -math.inf
            if up_s < LINK_STABLE_S:
                await self._pause(backoff_s)
                backoff_s = min(backoff_s * 2, backoff_max_s)
                continue
            if up_s != math.inf:
                backoff_s = BOOTSTRAP_BACKOFF_S[0]  # a link that held: start afresh
            try:
                await transport.connect(addr)
            except ConnectFailed as exc:
                log_event(
                    self._log,
                    "bootstrap_dial_failed",
                    {"addr": addr, "reason": exc.reason[:200], "retry_s": backoff_s},
                    logging.DEBUG,
                )
                await self._pause(backoff_s)
                backoff_s = min(backoff_s * 2, backoff_max_s)
                continue
            connected_at_s = trio.current_time()

    async def _dial(self, dial: Dial) -> None:
        if self.policy.cuts_off(dial.peer):
            return  # the core retries later; by then the policy may be lifted
        transport = self._require_transport()
        async with self._dial_limiter:
            for addr in dial.addrs:
                full = addr if "/p2p/" in addr else f"{addr}/p2p/{dial.peer}"
                try:
                    await transport.connect(full)
                    return
                except ConnectFailed as exc:
                    log_event(
                        self._log,
                        "dial_failed",
                        {"peer": short_peer(dial.peer), "reason": exc.reason[:200]},
                        logging.DEBUG,
                    )

    # -- views ---------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, object]:
        snap = self.core.status(self.clock_ms())
        snap["name"] = self.config.node.name
        snap["gpu_source"] = self.capacity.source
        if self.transport is not None:
            snap["listen_addrs"] = list(self.transport.listen_addrs)
            snap["transport"] = self.transport.stats.as_dict()
        snap["traffic_policy"] = self.policy.as_json()
        if self.chain is not None:
            snap["chain"] = self.chain.status()
        snap["gc"] = self.gc_pauses.as_dict()
        return snap

    def _probe(self) -> dict[str, object]:
        """What `/status?wait_...` waits on, without the rest of `_snapshot`."""
        probe: dict[str, object] = {
            "peers": self.core.peers,
            "supply": {"nodes": self.core.supply(self.clock_ms()).nodes},
        }
        if self.chain is not None:
            opened = self.chain.engine is not None  # as in ChainService.status
            probe["chain"] = {"height": self.chain.height if opened else 0}
        return probe

    def _require_transport(self) -> Transport:
        if self.transport is None:
            raise RuntimeError("transport is not open")  # our bug: used before run()
        return self.transport


@asynccontextmanager
async def running_node(runtime: NodeRuntime) -> AsyncIterator[RuntimeInfo]:
    """Run a node inside a block (tests, embedded use); it stops when the block exits."""
    async with trio.open_nursery() as nursery:
        info: RuntimeInfo = await nursery.start(runtime.run)
        try:
            yield info
        finally:
            nursery.cancel_scope.cancel()
