"""The life of a job after submission, run in every block: uptime counting (liveness.py),
deadlines, commit and reveal timeouts and down nodes (no-shows and withheld results are
penalised and their replicas rerouted), and the assignment of pending jobs to committed
offers by the market's scheduler.

Every member applies the same block to the same state, so every member computes the same
assignment: the scheduler is deterministic and reads only committed state, which is stronger
than a proposer choosing and the others checking (`scheduler.check_assignment` remains for a
proposer-chosen variant). Each assignment and each "nothing fits" (with the scheduler's
reason code) lands in the job's record and so in the state root: anyone can replay it.

A job's phases (`JobStatus`): PENDING (needs replicas) -> ASSIGNED (replicas commit to their
result digests) -> REVEALING (they open the commitments) -> SETTLED, or back to PENDING when a
replica times out or a tie needs one more replica, or FAILED / EXPIRED at the deadline with
the escrow refunded. Windows are counted in blocks, the ledger's only clock. A job is only
scheduled while its deadline leaves room for both windows, so no replica is ever penalised
for a deadline it had no time to meet.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from consensus.ledger.apply import BlockContext, register_block_hook
from consensus.ledger.challenges import step_challenges
from consensus.ledger.escrow import escrow_refund
from consensus.ledger.job_records import (
    EXCLUDED_MAX,
    REASON_NONE,
    SPOT_CLEAR,
    SPOT_DUE,
    SPOT_SKIPPED,
    SPOT_WANTED,
    JobRecord,
    JobStatus,
)
from consensus.ledger.liveness import count_block, is_down, is_watched
from consensus.ledger.market_records import AUDIT, LATE, Replica
from consensus.ledger.offers import OPEN_STATUSES, market_offers
from consensus.ledger.prices import step_prices
from consensus.ledger.staking import slash
from consensus.ledger.state import LedgerState
from consensus.market.scheduler import JobRequest, NodeOffer, Reason, schedule

PENALTY_DOMAIN = b"gpumesh/market-penalty/v1"
SPOT_DOMAIN = b"gpumesh/spot-check/v1"
NO_SHOW = b"no-show"
WITHHELD = b"withheld"
WRONG_RESULT = b"wrong-result"


def job_request(job: bytes, record: JobRecord, redundancy: int | None = None) -> JobRequest:
    """The scheduler's view of a job: what it needs, with "" / 0 meaning "any"."""
    terms = record.terms
    return JobRequest(
        job_id=job,
        submitter=terms.near or record.submitter,
        gpus_needed=terms.gpus,
        min_memory_mib=terms.min_memory_mib,
        gpu_model=terms.gpu_model or None,
        region=terms.region or None,
        max_rtt_ms=terms.max_rtt_ms or None,
        redundancy=terms.redundancy if redundancy is None else redundancy,
        max_price_per_gpu_hour=terms.max_price_per_gpu_hour,
    )


def audit_only(record: JobRecord) -> bool:
    """Every replica has committed and only the spot-check replica is missing."""
    return (
        record.spot_check == SPOT_WANTED
        and not any(r.audit for r in record.replicas)
        and len(record.replicas) == record.replicas_wanted - 1
        and all(r.committed and not r.revealed for r in record.replicas)
    )


def spot_checked(state: LedgerState, job: bytes, parent_hash: bytes) -> bool:
    """Whether the protocol audits this job with one more replica. Drawn when the last
    replica commits, from the parent block's hash: no replica can know at commit time
    whether its result will be checked, so a lazy one cannot cheat only when unwatched."""
    odds = state.params.market.spot_check_permille
    if odds == 0:
        return False
    draw = hashlib.sha256(SPOT_DOMAIN + parent_hash + job).digest()
    return int.from_bytes(draw[:8], "big") % 1000 < odds


def penalty_digest(kind: bytes, job: bytes, node: bytes) -> bytes:
    """The evidence digest of one market fault: one fault of one node on one job."""
    return hashlib.sha256(PENALTY_DOMAIN + kind + job + node).digest()


def penalise(state: LedgerState, job: bytes, node: bytes, kind: bytes) -> None:
    """Slash `node` for a market fault on `job`: a no-show or withheld result costs
    `no_show_slash_bps` (no jail: an outage is not malice), a wrong result costs
    `wrong_result_slash_bps` and jails. The evidence digest names (job, node, fault), so one
    fault is punished once; an operator that has since left is not found and not slashed."""
    if node not in state.operators:
        return
    digest = penalty_digest(kind, job, node)
    if digest in state.evidence_seen:
        return
    market = state.params.market
    wrong = kind == WRONG_RESULT
    bps = market.wrong_result_slash_bps if wrong else market.no_show_slash_bps
    slash(state, node, bps, kind.decode(), digest, jail=wrong)


def drop_replicas(
    state: LedgerState, job: bytes, record: JobRecord, leaving: list[Replica], kind: bytes
) -> JobRecord:
    """Penalise and exclude the replicas that missed their step; the job goes back to
    PENDING for replacements (those that did their step stay)."""
    for replica in leaving:
        penalise(state, job, replica.node, kind)
    gone = {r.node for r in leaving}
    excluded = tuple(sorted({*record.excluded, *gone}))
    kept = tuple(r for r in record.replicas if r.node not in gone)
    if len(excluded) > EXCLUDED_MAX:  # so many failures: give up rather than overflow
        gave_up = replace(record, replicas=kept, reroutes=record.reroutes + 1)
        return close_unsettled(state, job, gave_up)
    return replace(
        record,
        status=JobStatus.PENDING,
        replicas=kept,
        excluded=excluded,
        reroutes=record.reroutes + 1,
        phase_height=state.height,
    )


def close_unsettled(state: LedgerState, job: bytes, record: JobRecord) -> JobRecord:
    """At the deadline: refund the whole escrow. A job that never got a replica EXPIRES;
    one that did FAILS, and replicas that had not done their current step are penalised."""
    escrow = state.escrows.get(job)
    refunded = escrow.amount if escrow is not None else 0
    if escrow is not None:
        escrow_refund(state, job)
    if not record.replicas and record.reroutes == 0:
        return replace(record, status=JobStatus.EXPIRED, refunded=refunded,
                       closed_height=state.height)  # fmt: skip
    if record.status == JobStatus.ASSIGNED:
        for r in record.replicas:
            if not r.committed:
                penalise(state, job, r.node, NO_SHOW)
    elif record.status == JobStatus.REVEALING:
        for r in record.replicas:
            if not r.revealed:
                penalise(state, job, r.node, WITHHELD)
    return replace(record, status=JobStatus.FAILED, refunded=refunded, closed_height=state.height)


def step_timeouts(state: LedgerState, height: int) -> None:
    """Deadlines first, then the commit and reveal windows of the open jobs. A replica on a
    node that is down (liveness.py) is late at once: waiting out its window would only
    delay the reroute."""
    market = state.params.market
    book = state.jobs
    for job in sorted(book):
        record = book[job]
        if record.status not in OPEN_STATUSES:
            continue
        if height >= record.terms.deadline_height:
            book[job] = close_unsettled(state, job, record)
        elif record.status in (JobStatus.ASSIGNED, JobStatus.REVEALING):
            committing = record.status == JobStatus.ASSIGNED
            window = market.commit_window_blocks if committing else market.reveal_window_blocks
            expired = height >= record.phase_height + window
            late = [
                r for r in record.replicas
                if not (r.committed if committing else r.revealed)
                and (expired or gone_silent(state, r.node, height))
            ]  # fmt: skip
            if late:
                fault = NO_SHOW if committing else WITHHELD
                book[job] = drop_replicas(state, job, record, late, fault)


def gone_silent(state: LedgerState, node: bytes, height: int) -> bool:
    """Down, for a node that still offers capacity (and so must keep sending heartbeats); a
    node that withdrew its offer is held only to its windows while it finishes its work."""
    return node in state.offers and is_down(state, node, height)


def step_spot_draws(state: LedgerState, parent_hash: bytes) -> None:
    """Jobs whose replicas all committed in the previous block: audit or not, drawn from
    that block's hash. An audited job goes back to PENDING for its audit replica (placed in
    this block's assignment step); the others start revealing."""
    book = state.jobs
    for job in sorted(book):
        record = book[job]
        if record.status != JobStatus.ASSIGNED or record.spot_check != SPOT_DUE:
            continue
        if record.phase_height >= state.height:
            continue  # the last commitment is in this very block: draw in the next one
        watched = any(is_watched(state, r.node) for r in record.replicas)
        if watched or spot_checked(state, job, parent_hash):
            book[job] = replace(record, spot_check=SPOT_WANTED, status=JobStatus.PENDING,
                                phase_height=state.height)  # fmt: skip
        else:
            book[job] = replace(record, spot_check=SPOT_CLEAR, status=JobStatus.REVEALING,
                                phase_height=state.height)  # fmt: skip


def schedulable(record: JobRecord, height: int, windows: int) -> bool:
    """PENDING, short of replicas, and with time left for a full commit-reveal round."""
    return (
        record.status == JobStatus.PENDING
        and len(record.replicas) < record.replicas_wanted
        and record.terms.deadline_height - height > windows
    )


def _with_free(offer: NodeOffer, free: dict[bytes, int]) -> NodeOffer:
    left = free[offer.node_id]
    return offer if left == offer.free_gpus else replace(offer, free_gpus=left)


def step_assignments(state: LedgerState, height: int) -> None:
    """Place pending jobs. Fresh jobs (no replicas yet, nobody excluded) are scheduled
    together, which is where the scheduler's search pays; reroutes and tie-breakers, which
    must avoid their job's current and excluded operators, then go one by one, in job id
    order, on the capacity the first pass left."""
    market = state.params.market
    windows = market.commit_window_blocks + market.reveal_window_blocks
    book = state.jobs
    for j in sorted(book):
        record = book[j]
        no_time = not schedulable(record, height, windows)
        if record.status == JobStatus.PENDING and audit_only(record) and no_time:
            book[j] = replace(record, status=JobStatus.REVEALING, spot_check=SPOT_SKIPPED,
                              phase_height=height)  # fmt: skip
    due = [j for j in sorted(book) if schedulable(book[j], height, windows)]
    if not due:
        return
    offers = market_offers(state)
    free = {o.node_id: o.free_gpus for o in offers}
    fresh = [j for j in due if not book[j].replicas and not book[j].excluded]
    placed, unplaced = schedule([job_request(j, book[j]) for j in fresh], offers)
    outcomes: dict[bytes, tuple[tuple[bytes, ...], int]] = {}
    for a in placed:
        outcomes[a.job_id] = (a.node_ids, REASON_NONE)
    for u in unplaced:
        outcomes[u.job_id] = ((), int(u.reason))
    for j in fresh:
        for node in outcomes[j][0]:
            free[node] -= book[j].terms.gpus
    for j in due:
        if j in outcomes:
            continue
        record = book[j]
        avoid = {*record.excluded, *(r.node for r in record.replicas)}
        mine = [_with_free(o, free) for o in offers if o.node_id not in avoid]
        need = record.replicas_wanted - len(record.replicas)
        got, missing = schedule([job_request(j, record, need)], mine)
        if got:
            outcomes[j] = (got[0].node_ids, REASON_NONE)
            for node in got[0].node_ids:
                free[node] -= record.terms.gpus
        elif not mine and offers:
            outcomes[j] = ((), int(Reason.NOT_ENOUGH_OPERATORS))  # all left are excluded
        else:
            outcomes[j] = ((), int(missing[0].reason))
    price = {o.node_id: o.price_per_gpu_hour for o in offers}
    for j in due:
        nodes, reason = outcomes[j]
        record = book[j]
        if nodes:
            flags = LATE if any(r.revealed for r in record.replicas) else 0
            if audit_only(record):
                flags |= AUDIT
            added = tuple(Replica(n, price[n], height, flags=flags) for n in nodes)
            book[j] = replace(
                record,
                status=JobStatus.ASSIGNED,
                replicas=tuple(sorted((*record.replicas, *added), key=lambda r: r.node)),
                phase_height=height,
                last_reason=REASON_NONE,
            )
        elif audit_only(record):
            # No room for the audit replica now: skip the audit rather than hold the job.
            book[j] = replace(record, status=JobStatus.REVEALING, spot_check=SPOT_SKIPPED,
                              phase_height=height, last_reason=reason)  # fmt: skip
        elif record.last_reason != reason:
            book[j] = replace(record, last_reason=reason)


def _jobs_hook(state: LedgerState, ctx: BlockContext) -> None:
    count_block(state, ctx.height)
    step_spot_draws(state, ctx.parent_hash)
    step_timeouts(state, ctx.height)
    step_assignments(state, ctx.height)
    step_challenges(state, ctx.height, ctx.parent_hash)
    step_prices(state)


register_block_hook("jobs", _jobs_hook)
