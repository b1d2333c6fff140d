"""JSON views of jobs and offers for the status endpoint and `gpumesh job|market`.

Read-only, from the committed state at the head; amounts in base units, keys in hex, codes
by name (a `last_reason` of `price_too_low` says more than 5).
"""

from __future__ import annotations

from consensus.ledger.job_records import (
    REASON_NONE,
    SPOT_CLEAR,
    SPOT_DUE,
    SPOT_SKIPPED,
    SPOT_WANTED,
    JobRecord,
    JobStatus,
)
from consensus.ledger.liveness import is_watched
from consensus.ledger.offers import busy_gpus
from consensus.ledger.prices import supply_and_demand, utilisation_permille
from consensus.ledger.state import LedgerState
from consensus.market.scheduler import Reason

JOBS_ROWS_MAX = 1_000


def reason_name(code: int) -> str | None:
    return None if code == REASON_NONE else Reason(code).name.lower()


AUDIT_NAMES = {SPOT_WANTED: "wanted", SPOT_SKIPPED: "skipped", SPOT_DUE: "due", SPOT_CLEAR: "clear"}
"""The random spot check's state (`JobRecord.spot_check`): "wanted" means one more replica,
beyond the job's redundancy, was drawn to audit it; None before any replica committed."""


def job_view(state: LedgerState, job: bytes) -> dict[str, object] | None:
    """One job's record, spelled out; None if the ledger has no such job."""
    record = state.jobs.get(job)
    return None if record is None else _job(state, job, record)


def _job(state: LedgerState, job: bytes, r: JobRecord) -> dict[str, object]:
    t = r.terms
    return {
        "job_id": job.hex(),
        "height": state.height,
        "status": JobStatus(r.status).name.lower(),
        "kind": t.kind,
        "submitter": r.submitter.hex(),
        "submitted_height": r.submitted_height,
        "deadline_height": t.deadline_height,
        "gpus": t.gpus,
        "redundancy": t.redundancy,
        "max_price_per_gpu_hour": t.max_price_per_gpu_hour,
        "escrowed": r.escrowed,
        "replicas": [
            {
                "node": x.node.hex(),
                "price_per_gpu_hour": x.price_per_gpu_hour,
                "assigned_height": x.assigned_height,
                "committed": x.committed,
                "revealed": x.revealed,
                "digest": x.digest.hex() or None,
                "runtime_ms": x.runtime_ms if x.revealed else None,
            }
            for x in r.replicas
        ],
        "excluded": [n.hex() for n in r.excluded],
        "tie_breakers": r.tie_breakers,
        "audit": AUDIT_NAMES.get(r.spot_check),
        "reroutes": r.reroutes,
        "last_reason": reason_name(r.last_reason),
        "result_digest": r.result_digest.hex() or None,
        "paid": r.paid,
        "fee_paid": r.fee_paid,
        "refunded": r.refunded,
        "subsidy": r.subsidy,
        "billed_ms": r.billed_ms,
        "closed_height": r.closed_height or None,
    }


def jobs_view(
    state: LedgerState, submitter: bytes | None = None, limit: int = JOBS_ROWS_MAX
) -> dict[str, object]:
    """Jobs (of one submitter, if given) in id order, at most `limit`, and counts by status."""
    rows = [
        (j, r)
        for j, r in sorted(state.jobs.items())
        if submitter is None or r.submitter == submitter
    ]
    counts: dict[str, int] = {}
    for _, r in rows:
        name = JobStatus(r.status).name.lower()
        counts[name] = counts.get(name, 0) + 1
    return {
        "height": state.height,
        "total": len(rows),
        "by_status": counts,
        "jobs": [_job(state, j, r) for j, r in rows[:limit]],
    }


def offers_view(state: LedgerState) -> dict[str, object]:
    """Every committed offer, with what replicas hold of it and whether it is scheduled on."""
    busy = busy_gpus(state.jobs)
    return {
        "height": state.height,
        "offers": [
            {
                "node": node.hex(),
                "gpus": [[g.model, g.count, g.memory_mib] for g in o.gpus],
                "region": o.region,
                "price_per_gpu_hour": o.price_per_gpu_hour,
                "busy_gpus": busy.get(node, 0),
                "active": state.is_active(node),
                "watched": is_watched(state, node),
                "rtt_ms": {p.node.hex(): p.ms for p in o.rtt_ms},
                "offered_height": o.height,
            }
            for node, o in sorted(state.offers.items())
        ],
    }


def uptime_view(
    state: LedgerState, block_ms: float, node: bytes | None = None
) -> dict[str, object]:
    """Measured availability per node (or one node) and for the network: this epoch so far
    and each closed epoch kept in state, as percent and minutes down (blocks x the chain's
    measured block interval)."""
    down_after = state.params.market.down_after_blocks

    def window(epoch: int, up: int, counted: int) -> dict[str, object]:
        down = counted - up
        return {
            "epoch": epoch,
            "up_blocks": up,
            "counted_blocks": counted,
            "uptime_percent": round(100 * up / counted, 3) if counted else None,
            "minutes_down": round(down * block_ms / 60_000, 2),
        }

    nodes = []
    totals: dict[int, list[int]] = {}
    for key, live in sorted(state.liveness.items()):
        if node is not None and key != node:
            continue
        if key not in state.offers and not live.counted_blocks and not live.history:
            continue  # never offered, so never expected up: an operator that only flagged
        epochs = [window(e, u, c) for e, u, c in live.history]
        current = window(state.epoch, live.up_blocks, live.counted_blocks)
        for e, u, c in [*live.history, (state.epoch, live.up_blocks, live.counted_blocks)]:
            pair = totals.setdefault(e, [0, 0])
            pair[0] += u
            pair[1] += c
        nodes.append(
            {
                "node": key.hex(),
                "last_heartbeat": live.last_heartbeat,
                "down_now": state.height - live.last_heartbeat > down_after,
                "offers": key in state.offers,
                "current": current,
                "epochs": epochs,
                "work_units": live.work_units,
            }
        )
    network = [window(e, u, c) for e, (u, c) in sorted(totals.items())]
    all_up = sum(u for u, _ in totals.values())
    all_counted = sum(c for _, c in totals.values())
    return {
        "height": state.height,
        "epoch": state.epoch,
        "block_ms": round(block_ms, 1),
        "down_after_blocks": down_after,
        "nodes": nodes,
        "network": {
            "epochs": network,
            "uptime_percent": round(100 * all_up / all_counted, 3) if all_counted else None,
        },
    }


def prices_view(state: LedgerState) -> dict[str, object]:
    """Each listed GPU class: its price now, and the supply and demand that move it."""
    supply, demand = supply_and_demand(state)
    params = state.params.pricing
    return {
        "height": state.height,
        "target_utilisation_permille": params.target_utilisation_permille,
        "max_step_bps": params.max_step_bps,
        "classes": [
            {
                "gpu_class": name,
                "price_per_gpu_hour": price,
                "supply_gpus": supply.get(name, 0),
                "demand_gpus": demand.get(name, 0),
                "utilisation_permille": utilisation_permille(supply, demand, name),
            }
            for name, price in state.prices.items()
        ],
    }
