"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process
in tests). Transport counters are read live from `TransportStats` by a collector, so they
never drift from the transport's own figures."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.core import NodeCore, Ready
from p2p.transport import TransportStats


class _TransportCollector(Collector):
    def __init__(self, stats: Callable[[], TransportStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        for name, value in sorted(self._stats().as_dict().items()):
            family = CounterMetricFamily(f"gpumesh_transport_{name}", f"transport counter {name}")
            family.add_metric([], value)
            yield family


class _ChainCollector(Collector):
    """The chain service's figures, read live from its status view."""

    GAUGES = ("height", "round", "mempool", "epoch", "last_commit_age_ms")

    def __init__(self, status: Callable[[], dict[str, object]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        snap = self._status()
        if snap.get("state") != "running":
            return
        for name in self.GAUGES:
            value = snap.get(name)
            if isinstance(value, int):
                gauge = GaugeMetricFamily(f"gpumesh_chain_{name}", f"chain {name}")
                gauge.add_metric([], value)
                yield gauge
        for group, prefix in (("counts", ""), ("service", "service_"), ("frames", "frames_")):
            figures = snap.get(group)
            if not isinstance(figures, dict):
                continue
            for key, value in sorted(figures.items()):
                family = CounterMetricFamily(
                    f"gpumesh_chain_{prefix}{key}", f"chain counter {prefix}{key}"
                )
                family.add_metric([], value)
                yield family


class NodeMetrics:
    def __init__(self, stats: Callable[[], TransportStats]) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "gpumesh_events", "core events by name", ["event"], registry=self.registry
        )
        self.verdicts = Counter(
            "gpumesh_announcement_verdicts",
            "announcements received, by the book's verdict",
            ["verdict"],
            registry=self.registry,
        )
        self.peers = Gauge("gpumesh_peers_connected", "connected peers", registry=self.registry)
        self.supply_nodes = Gauge(
            "gpumesh_supply_nodes", "nodes with a live announcement", registry=self.registry
        )
        self.supply_gpus = Gauge(
            "gpumesh_supply_gpus", "GPUs announced by live nodes", registry=self.registry
        )
        self.supply_free_gpus = Gauge(
            "gpumesh_supply_free_gpus", "free GPUs announced", registry=self.registry
        )
        self.registry.register(_TransportCollector(stats))
        self._verdicts_seen: dict[str, int] = {}

    def observe(self, core: NodeCore, ready: Ready, now_ms: int) -> None:
        for event in ready.events:
            self.events.labels(event.name).inc()
        for verdict, count in core.verdict_counts.items():
            delta = count - self._verdicts_seen.get(verdict, 0)
            if delta:
                self.verdicts.labels(verdict).inc(delta)
                self._verdicts_seen[verdict] = count
        totals = core.supply(now_ms)
        self.peers.set(len(core.peers))
        self.supply_nodes.set(totals.nodes)
        self.supply_gpus.set(totals.gpus)
        self.supply_free_gpus.set(totals.free_gpus)

    def add_chain(self, status: Callable[[], dict[str, object]]) -> None:
        """Export the chain service's height, round, mempool and counters (txs committed...)."""
        self.registry.register(_ChainCollector(status))

    def render(self) -> bytes:
        return generate_latest(self.registry)
