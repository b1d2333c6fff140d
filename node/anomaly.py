"""Runtime anomaly detection over the chain's settled jobs (numpy, off the ledger).

Every replica of a job runs the same workload, and reveals how long it took. So within one job
the runtimes compare like for like: a replica's *ratio* is its runtime over the median of the
job's replicas. Over its recent jobs a node's ratios have a typical value (their median, in
log2), and nodes of one GPU class should sit close together. A node whose typical log-ratio
lies far from its class (more than `factor` times off, and more than `mad_k` robust deviations
of the class's nodes) does not behave like the GPUs it announced: far slower suggests weaker
or fewer GPUs than claimed, far faster suggests runtimes made up. It is flagged; an operator's
node then sends `FlagNode` and the ledger audits every job the flagged node takes part in for
a while (consensus/ledger/liveness.py), which is what turns suspicion into evidence.

Floats and medians are fine here: this runs on each node, outside consensus; only the flag
(a signed transaction, bounded per operator per epoch) reaches the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from consensus.ledger.job_records import JobStatus
from consensus.ledger.prices import main_class
from consensus.ledger.state import LedgerState

SAMPLES_MIN = 5
SAMPLES_KEPT = 50
FACTOR = 3.0
MAD_K = 3.0
CLASS_NODES_MIN = 3


@dataclass(frozen=True)
class Sample:
    node: bytes
    gpu_class: str
    job: bytes
    log_ratio: float
    """log2(runtime / the job's median runtime)."""


@dataclass(frozen=True)
class Anomaly:
    node: bytes
    gpu_class: str
    typical: float
    """The node's median log2-ratio."""
    class_typical: float
    samples: int
    evidence_job: bytes
    """The most recent settled job in which it revealed."""


def samples_from_state(state: LedgerState, kept: int = SAMPLES_KEPT) -> list[Sample]:
    """Each revealed replica of the last `kept` settled jobs per node, with its ratio."""
    per_node: dict[bytes, list[Sample]] = {}
    classes = {node: main_class(o) for node, o in state.offers.items() if o.gpus}
    settled = [
        (r.closed_height, j, r) for j, r in state.jobs.items() if r.status == JobStatus.SETTLED
    ]
    for _, job, record in sorted(settled, reverse=True):
        runtimes = [r.runtime_ms for r in record.replicas if r.revealed and r.runtime_ms > 0]
        if len(runtimes) < 2:
            continue
        median = float(np.median(runtimes))
        for replica in record.replicas:
            if not replica.revealed or replica.runtime_ms <= 0 or replica.node not in classes:
                continue
            mine = per_node.setdefault(replica.node, [])
            if len(mine) < kept:
                ratio = math.log2(replica.runtime_ms / median)
                mine.append(Sample(replica.node, classes[replica.node], job, ratio))
    return [s for node in sorted(per_node) for s in per_node[node]]


def find_anomalies(
    samples: Iterable[Sample],
    *,
    samples_min: int = SAMPLES_MIN,
    factor: float = FACTOR,
    mad_k: float = MAD_K,
) -> list[Anomaly]:
    """Nodes whose typical runtime ratio lies far from their GPU class's (see the module)."""
    by_node: dict[bytes, list[Sample]] = {}
    for s in samples:
        by_node.setdefault(s.node, []).append(s)
    typical = {
        node: float(np.median([s.log_ratio for s in got]))
        for node, got in by_node.items()
        if len(got) >= samples_min
    }
    by_class: dict[str, list[bytes]] = {}
    for node in typical:
        by_class.setdefault(by_node[node][0].gpu_class, []).append(node)
    found = []
    floor = math.log2(factor)
    for name, nodes in sorted(by_class.items()):
        if len(nodes) < CLASS_NODES_MIN:
            continue  # too few peers to say what this class's runtimes should look like
        values = np.array([typical[n] for n in nodes])
        centre = float(np.median(values))
        mad = float(np.median(np.abs(values - centre)))
        for node in sorted(nodes):
            off = abs(typical[node] - centre)
            if off > floor and off > mad_k * mad:
                found.append(
                    Anomaly(
                        node, name, typical[node], centre, len(by_node[node]), by_node[node][0].job
                    )
                )
    return found


def anomalies_among(samples: Sequence[Sample], exclude: Sequence[bytes] = ()) -> list[Anomaly]:
    """The anomalies among `samples` (`samples_from_state`), judged without the samples of
    `exclude` (ourselves: we never flag ourselves, nor weigh our own runtimes into the
    classes' centres). Pure numpy over a list: safe in a worker thread, unlike the state."""
    return find_anomalies([s for s in samples if s.node not in exclude])
