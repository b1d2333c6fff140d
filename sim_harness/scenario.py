"""Simulation scenarios (TOML in examples/scenarios/) as frozen, validated objects.

A scenario says which nodes exist (groups with a name prefix, count, regions, GPUs, stake),
what the network is like, how often capacity is gossiped, what goes wrong and when (the
`[[faults]]` timeline, or `[swarm]` bounds within which the seed draws one), how long the
safety phase (faults on) and the liveness phase (faults healed, convergence demanded) last,
and which checkers judge the run. Errors name the file and the exact field, and unknown
keys are refused with the nearest known one, as for node configs (node/config.py).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from p2p.announcements import BookConfig, GpuSpec
from sim_harness import consensus_checkers  # noqa: F401 - registers the consensus checkers
from sim_harness.byzantine import BYZANTINE
from sim_harness.byzantine_consensus import CONSENSUS_BYZANTINE
from sim_harness.checkers import CHECKERS
from sim_harness.faults import (
    SWARM_KINDS,
    Byzantine,
    Fault,
    FaultError,
    SwarmSpec,
    parse_duration_ms,
    parse_fault,
)
from sim_harness.network import REGIONS

NODES_MAX = 100_000
PREFIX_RE = re.compile(r"[a-z][a-z0-9_-]{0,15}")
_T = TypeVar("_T")


class ScenarioError(Exception):
    """A scenario that cannot run; `field` is the dotted TOML path (None: the whole file)."""

    def __init__(self, file: Path | str, field: str | None, problem: str) -> None:
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")
        self.file, self.field, self.problem = str(file), field, problem


@dataclass(frozen=True)
class NodeGroup:
    prefix: str
    count: int
    regions: tuple[str, ...] = ("eu-west",)
    """Node i of the group is in regions[i % len(regions)]."""
    gpus: tuple[GpuSpec, ...] = (GpuSpec("RTX 4090", 1, 24_564),)
    stake: int = 1_000
    price_per_gpu_hour: int = 1_000_000

    def names(self) -> list[str]:
        width = max(3, len(str(self.count - 1)))
        return [f"{self.prefix}{i:0{width}d}" for i in range(self.count)]


@dataclass(frozen=True)
class NetworkSpec:
    mesh_degree: int = 6
    jitter_ms: int = 5
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ms: int = 50
    bandwidth_mbps: int = 100


@dataclass(frozen=True)
class GossipSpec:
    announce_interval_ms: int = 10_000
    ttl_ms: int = 60_000


@dataclass(frozen=True)
class WorkloadSpec:
    load_interval_ms: int = 0
    """Mean time between a node's load changes (LocalLoad inputs); 0: load never changes."""


@dataclass(frozen=True)
class ConsensusSpec:
    """A scenario with a `[consensus]` table runs the committee and ledger
    (sim_harness.consensus_sim) instead of capacity gossip."""

    committee_size: int = 4
    epoch_blocks: int = 100
    tx_rate: int = 20
    """Transactions per simulated second, submitted network-wide by `users` accounts."""
    users: int = 16
    timeout_propose_ms: int = 3_000
    timeout_propose_delta_ms: int = 1_000
    timeout_vote_ms: int = 1_000
    timeout_vote_delta_ms: int = 500
    empty_block_ms: int = 1_000
    rebroadcast_ms: int = 1_000
    block_txs_max: int = 4_000
    snapshot_every: int = 10


CONSENSUS_CHECKERS = (
    "agreement", "equal_state_roots", "conservation", "chain_liveness", "no_crash_on_bad_input",
)  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_ms: int
    nodes: tuple[NodeGroup, ...]
    seed: int = 1
    liveness_ms: int = 60_000
    path: str | None = None
    chain_id: str = "gpumesh-sim"
    network: NetworkSpec = field(default_factory=NetworkSpec)
    gossip: GossipSpec = field(default_factory=GossipSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    faults: tuple[Fault, ...] = ()
    swarm: SwarmSpec = field(default_factory=SwarmSpec)
    checkers: tuple[str, ...] = ("book_convergence", "no_crash_on_bad_input")
    consensus: ConsensusSpec | None = None

    @property
    def node_names(self) -> list[str]:
        return [n for g in self.nodes for n in g.names()]

    @property
    def end_ms(self) -> int:
        return self.duration_ms + self.liveness_ms


# ---------------------------------------------------------------------------------------------
# reading


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate a scenario file; errors name `path` as given."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(path, None, f"cannot read: {exc}") from None
    return scenario_from_toml(text, str(path))


def scenario_from_toml(text: str, path: str = "<scenario>") -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, None, f"invalid TOML: {exc}") from None
    return parse_scenario(raw, path)


def parse_scenario(raw: dict[str, Any], path: str = "<scenario>") -> Scenario:
    try:
        return _parse(raw, path)
    except FaultError as exc:
        raise ScenarioError(path, exc.field, exc.problem) from None


TOP_KEYS = (
    "name", "seed", "duration", "liveness", "chain_id", "network", "gossip", "workload",
    "nodes", "faults", "swarm", "checkers", "consensus",
)  # fmt: skip
CONSENSUS_KEYS = (
    "committee_size", "epoch_blocks", "tx_rate", "users", "timeout_propose",
    "timeout_propose_delta", "timeout_vote", "timeout_vote_delta", "empty_block", "rebroadcast",
    "block_txs_max", "snapshot_every",
)  # fmt: skip
NETWORK_KEYS = (
    "mesh_degree", "jitter", "loss", "duplicate", "reorder", "reorder_delay", "bandwidth_mbps",
)  # fmt: skip
GROUP_KEYS = ("prefix", "count", "regions", "gpus", "stake", "price_per_gpu_hour")
SWARM_KEYS = (
    "enabled", "events", "kinds", "share_max", "skew_max", "delay_max", "loss_max",
    "byzantine_max", "behaviours", "fault_max", "network_loss_max", "duplicate_max",
    "reorder_max",
)  # fmt: skip


def _keys(raw: object, where: str, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FaultError(where, f"expected a table, got {raw!r}")
    for key in raw:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(keys)})"
            raise FaultError(f"{where}.{key}" if where else key, f"unknown key{hint}")
    return raw


def _get(t: dict[str, Any], key: str, where: str, parse: Callable[[object, str], _T], d: _T) -> _T:
    return parse(t[key], f"{where}.{key}" if where else key) if key in t else d


def _int(lo: int, hi: int) -> Callable[[object, str], int]:
    def parse(v: object, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise FaultError(where, f"expected an integer in {lo}..{hi}, got {v!r}")
        return v

    return parse


def _prob(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise FaultError(where, f"expected a probability 0..1, got {v!r}")
    return float(v)


def _str(v: object, where: str) -> str:
    if not isinstance(v, str) or not v or not v.isprintable():
        raise FaultError(where, f"expected a non-empty string, got {v!r}")
    return v


def _bool(v: object, where: str) -> bool:
    if not isinstance(v, bool):
        raise FaultError(where, f"expected true or false, got {v!r}")
    return v


def _dur(v: object, where: str) -> int:
    return parse_duration_ms(v, where)


def _choices(options: Sequence[str]) -> Callable[[object, str], tuple[str, ...]]:
    def parse(v: object, where: str) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise FaultError(where, f"expected a list, got {v!r}")
        for i, item in enumerate(v):
            if item not in options:
                close = difflib.get_close_matches(str(item), options, n=1)
                hint = (
                    f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(options)})"
                )
                raise FaultError(f"{where}[{i}]", f"unknown {item!r}{hint}")
        return tuple(v)

    return parse


def _parse(raw: dict[str, Any], path: str) -> Scenario:
    t = _keys(raw, "", TOP_KEYS)
    if "name" not in t:
        raise FaultError("name", 'required (for example name = "partition-and-heal")')
    if "duration" not in t:
        raise FaultError("duration", 'required (for example duration = "120s")')
    groups = _parse_groups(t.get("nodes"))
    names = [n for g in groups for n in g.names()]
    gossip = _parse_gossip(t.get("gossip", {}))
    duration_ms = _dur(t["duration"], "duration")
    faults = tuple(_parse_faults(t.get("faults", []), names, duration_ms))
    consensus = _parse_consensus(t["consensus"]) if "consensus" in t else None
    default_checkers = Scenario.checkers if consensus is None else CONSENSUS_CHECKERS
    return Scenario(
        name=_str(t["name"], "name"),
        duration_ms=duration_ms,
        nodes=groups,
        seed=_get(t, "seed", "", _int(0, 2**64 - 1), 1),
        liveness_ms=_get(t, "liveness", "", _dur, 60_000),
        path=path,
        chain_id=_get(t, "chain_id", "", _str, "gpumesh-sim"),
        network=_parse_network(t.get("network", {})),
        gossip=gossip,
        workload=_parse_workload(t.get("workload", {})),
        faults=faults,
        swarm=_parse_swarm(t.get("swarm", {})),
        checkers=_get(t, "checkers", "", _choices(sorted(CHECKERS)), default_checkers),
        consensus=consensus,
    )


def _parse_consensus(raw: object) -> ConsensusSpec:
    t, w, d = _keys(raw, "consensus", CONSENSUS_KEYS), "consensus", ConsensusSpec()
    spec = ConsensusSpec(
        committee_size=_get(t, "committee_size", w, _int(1, 1_000), d.committee_size),
        epoch_blocks=_get(t, "epoch_blocks", w, _int(1, 1_000_000), d.epoch_blocks),
        tx_rate=_get(t, "tx_rate", w, _int(0, 1_000_000), d.tx_rate),
        users=_get(t, "users", w, _int(1, 100_000), d.users),
        timeout_propose_ms=_get(t, "timeout_propose", w, _dur, d.timeout_propose_ms),
        timeout_propose_delta_ms=_get(
            t, "timeout_propose_delta", w, _dur, d.timeout_propose_delta_ms
        ),
        timeout_vote_ms=_get(t, "timeout_vote", w, _dur, d.timeout_vote_ms),
        timeout_vote_delta_ms=_get(t, "timeout_vote_delta", w, _dur, d.timeout_vote_delta_ms),
        empty_block_ms=_get(t, "empty_block", w, _dur, d.empty_block_ms),
        rebroadcast_ms=_get(t, "rebroadcast", w, _dur, d.rebroadcast_ms),
        block_txs_max=_get(t, "block_txs_max", w, _int(1, 10_000), d.block_txs_max),
        snapshot_every=_get(t, "snapshot_every", w, _int(1, 1_000_000), d.snapshot_every),
    )
    if spec.empty_block_ms >= spec.timeout_propose_ms:
        raise FaultError("consensus.empty_block", "must be shorter than consensus.timeout_propose")
    return spec


def _parse_groups(raw: object) -> tuple[NodeGroup, ...]:
    if not isinstance(raw, list) or not raw:
        raise FaultError("nodes", "required: at least one [[nodes]] table")
    groups: list[NodeGroup] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"nodes[{i}]"
        t = _keys(item, where, GROUP_KEYS)
        prefix = _require(t, "prefix", where, _str, 'prefix = "a"')
        if not PREFIX_RE.fullmatch(prefix):
            raise FaultError(
                f"{where}.prefix", f"expected 1..16 of a-z 0-9 _ - (a letter first), got {prefix!r}"
            )
        g = NodeGroup(
            prefix=prefix,
            count=_require(t, "count", where, _int(1, NODES_MAX), "count = 50"),
            regions=_get(t, "regions", where, _regions, NodeGroup.regions),
            gpus=_get(t, "gpus", where, _gpus, NodeGroup.gpus),
            stake=_get(t, "stake", where, _int(0, 2**64 - 1), 1_000),
            price_per_gpu_hour=_get(t, "price_per_gpu_hour", where, _int(0, 2**64 - 1), 1_000_000),
        )
        clash = seen.intersection(g.names())
        if clash:
            raise FaultError(
                f"{where}.prefix", f"node name {min(clash)!r} is used by another group"
            )
        seen.update(g.names())
        groups.append(g)
    if len(seen) > NODES_MAX:
        raise FaultError("nodes", f"at most {NODES_MAX} nodes, got {len(seen)}")
    return tuple(groups)


def _require(
    t: dict[str, Any], key: str, where: str, parse: Callable[[object, str], _T], example: str
) -> _T:
    if key not in t:
        raise FaultError(f"{where}.{key}", f"required (for example {example})")
    return parse(t[key], f"{where}.{key}")


def _regions(v: object, where: str) -> tuple[str, ...]:
    regions = _choices(REGIONS)(v, where)
    if not regions:
        raise FaultError(where, 'expected at least one region, such as ["eu-west"]')
    return regions


def _parse_workload(raw: object) -> WorkloadSpec:
    t = _keys(raw, "workload", ("load_interval",))
    return WorkloadSpec(_get(t, "load_interval", "workload", _dur, 0))


def _gpus(v: object, where: str) -> tuple[GpuSpec, ...]:
    if not isinstance(v, list) or not v:
        raise FaultError(where, f'expected a list such as [["RTX 4090", 2, 24564]], got {v!r}')
    out = []
    for i, item in enumerate(v):
        at = f"{where}[{i}]"
        if isinstance(item, dict):
            item = [item.get("model"), item.get("count", 1), item.get("memory_mib")]
        if not isinstance(item, list) or len(item) != 3:
            raise FaultError(at, f"expected [model, count, memory_mib], got {item!r}")
        model = _str(item[0], f"{at}[0]")
        count, mem = _int(1, 1024)(item[1], f"{at}[1]"), _int(1, 2**24)(item[2], f"{at}[2]")
        out.append(GpuSpec(model, count, mem))
    if len({g.model for g in out}) != len(out):
        raise FaultError(where, "each GPU model may appear once; raise its count instead")
    return tuple(out)


def _parse_network(raw: object) -> NetworkSpec:
    t = _keys(raw, "network", NETWORK_KEYS)
    w = "network"
    return NetworkSpec(
        mesh_degree=_get(t, "mesh_degree", w, _int(2, 64), 6),
        jitter_ms=_get(t, "jitter", w, _dur, 5),
        loss=_get(t, "loss", w, _prob, 0.0),
        duplicate=_get(t, "duplicate", w, _prob, 0.0),
        reorder=_get(t, "reorder", w, _prob, 0.0),
        reorder_ms=max(1, _get(t, "reorder_delay", w, _dur, 50)),
        bandwidth_mbps=_get(t, "bandwidth_mbps", w, _int(1, 1_000_000), 100),
    )


def _parse_gossip(raw: object) -> GossipSpec:
    t = _keys(raw, "gossip", ("announce_interval", "ttl"))
    interval = _get(t, "announce_interval", "gossip", _dur, 10_000)
    ttl = _get(t, "ttl", "gossip", _dur, 60_000)
    if not 0 < interval < ttl:
        raise FaultError(
            "gossip.ttl", f"must exceed gossip.announce_interval ({interval} ms) and be > 0"
        )
    if ttl > BookConfig().ttl_max_ms:
        raise FaultError("gossip.ttl", f"at most {BookConfig().ttl_max_ms} ms (what peers accept)")
    return GossipSpec(interval, ttl)


def _parse_faults(raw: object, names: Sequence[str], duration_ms: int) -> list[Fault]:
    if not isinstance(raw, list):
        raise FaultError("faults", "expected [[faults]] tables")
    out = []
    for i, item in enumerate(raw):
        where = f"faults[{i}]"
        if not isinstance(item, dict):
            raise FaultError(where, f"expected a table, got {item!r}")
        fault = parse_fault(item, where)
        key = "partition" if fault.KIND == "partition" else fault.KIND
        for sel in fault.selectors():
            bad = sel.unmatched(names)
            if bad is not None:
                raise FaultError(f"{where}.{key}", f"{bad!r} matches no node")
        if fault.at_ms >= duration_ms:
            raise FaultError(
                f"{where}.at",
                f"{fault.at_ms} ms is not within duration ({duration_ms} ms): faults belong to "
                "the safety phase; the liveness phase heals them",
            )
        known = set(BYZANTINE) | set(CONSENSUS_BYZANTINE)
        if isinstance(fault, Byzantine) and fault.behaviour not in known:
            raise FaultError(
                f"{where}.byzantine.behaviour",
                f"unknown behaviour {fault.behaviour!r} (known: {', '.join(sorted(known))})",
            )
        out.append(fault)
    return out


def _parse_swarm(raw: object) -> SwarmSpec:
    t, w = _keys(raw, "swarm", SWARM_KEYS), "swarm"
    d = SwarmSpec()
    return SwarmSpec(
        enabled=_get(t, "enabled", w, _bool, False),
        events_max=_get(t, "events", w, _int(0, 10_000), d.events_max),
        kinds=_get(t, "kinds", w, _choices(SWARM_KINDS), d.kinds),
        share_max=_get(t, "share_max", w, _prob, d.share_max),
        skew_max_ms=_get(t, "skew_max", w, _dur, d.skew_max_ms),
        delay_max_ms=_get(t, "delay_max", w, _dur, d.delay_max_ms),
        loss_max=_get(t, "loss_max", w, _prob, d.loss_max),
        byzantine_max=_get(t, "byzantine_max", w, _prob, d.byzantine_max),
        behaviours=_get(t, "behaviours", w, _choices(sorted(BYZANTINE)), ()),
        fault_ms_max=_get(t, "fault_max", w, _dur, d.fault_ms_max),
        network_loss_max=_get(t, "network_loss_max", w, _prob, d.network_loss_max),
        duplicate_max=_get(t, "duplicate_max", w, _prob, d.duplicate_max),
        reorder_max=_get(t, "reorder_max", w, _prob, d.reorder_max),
    )
