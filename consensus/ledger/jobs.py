"""The rules of the job lifecycle in the ledger: submitting a job locks its maximum cost in
escrow; the submitter may cancel it while it is pending and before its deadline (full
refund); a pending job that reaches its deadline is refunded and marked expired in the block
step (`job_flow`), which also assigns, times out and reroutes; results and settlement are
in `job_results`.

Job ids are `job_id(chain_id, submitter, nonce)`: a sender's nonces only go up, so ids are
unique forever, anyone can compute one from a receipt (sender and nonce), and unlike an
envelope hash it does not depend on the signature. Integer arithmetic only; no clock.
"""

from __future__ import annotations

from dataclasses import replace

from consensus.ledger.apply import BlockContext, register_tx_handler
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.escrow import escrow_lock, escrow_refund
from consensus.ledger.job_flow import close_unsettled
from consensus.ledger.job_records import (
    GPUS_MAX,
    JOB_KINDS,
    REDUNDANCY_MAX,
    CancelJob,
    JobRecord,
    JobStatus,
    SubmitJob,
    job_id,
)
from consensus.ledger.offers import OPEN_STATUSES
from consensus.ledger.staking import Effect
from consensus.ledger.state import LedgerState

BAD_JOB = TxCode.BAD_JOB
DEADLINE_PASSED = TxCode.DEADLINE_PASSED
UNKNOWN_JOB = TxCode.UNKNOWN_JOB
NOT_SUBMITTER = TxCode.NOT_SUBMITTER
JOB_NOT_PENDING = TxCode.JOB_NOT_PENDING

# ---------------------------------------------------------------------------------------------
# The jobs table


JobBook = dict[bytes, JobRecord]
"""job id -> record. Sorted by id wherever order matters (encoding, iteration)."""


def jobs_of(state: LedgerState) -> JobBook:
    """The state's jobs table (`LedgerState.jobs`, covered by the state root)."""
    return state.jobs


def get_job(state: LedgerState, job: bytes) -> JobRecord | None:
    return jobs_of(state).get(job)


def pending_jobs(state: LedgerState) -> list[tuple[bytes, JobRecord]]:
    """(id, record) of every pending job, sorted by id: the scheduler's input."""
    return [(j, r) for j, r in sorted(jobs_of(state).items()) if r.pending]


def live_at(record: JobRecord, height: int) -> bool:
    """Pending and before its deadline at `height`."""
    return record.pending and height < record.terms.deadline_height


def expire_jobs(state: LedgerState, height: int) -> tuple[bytes, ...]:
    """Close every open job whose deadline is at or below `height`: refunded, and EXPIRED if
    it never got a replica, FAILED if it did (`job_flow.close_unsettled`); returns their ids,
    sorted. Never refuses (an open job always holds its escrow). The block step runs it for
    every block (`job_flow`, after the transactions)."""
    book = jobs_of(state)
    due = [
        j for j in sorted(book)
        if book[j].status in OPEN_STATUSES and book[j].terms.deadline_height <= height
    ]  # fmt: skip
    for j in due:
        book[j] = close_unsettled(state, j, book[j])
    return tuple(due)


# ---------------------------------------------------------------------------------------------
# Handlers


def check_terms(tx: SubmitJob, height: int, deadline_blocks_max: int = 0) -> None:
    """The job's own rules, independent of balances: InvalidTransaction saying why not."""
    if tx.kind not in JOB_KINDS:
        raise InvalidTransaction(
            BAD_JOB, f"unknown job kind {tx.kind!r}; one of {', '.join(JOB_KINDS)}"
        )
    if not 1 <= tx.gpus <= GPUS_MAX:
        raise InvalidTransaction(BAD_JOB, f"gpus must be 1..{GPUS_MAX}, got {tx.gpus}")
    if not 1 <= tx.redundancy <= REDUNDANCY_MAX:
        raise InvalidTransaction(
            BAD_JOB, f"redundancy must be 1..{REDUNDANCY_MAX}, got {tx.redundancy}"
        )
    if tx.deadline_height <= height:
        raise InvalidTransaction(
            DEADLINE_PASSED, f"deadline {tx.deadline_height} is not after height {height}"
        )
    if deadline_blocks_max and tx.deadline_height - height > deadline_blocks_max:
        raise InvalidTransaction(
            BAD_JOB,
            f"deadline {tx.deadline_height} is more than {deadline_blocks_max} blocks away: "
            "an escrow may not be locked for longer",
        )
    if len(tx.near) not in (0, 32):
        raise InvalidTransaction(BAD_JOB, "near must name a node (32 bytes) or be empty")
    if tx.max_cost == 0:
        raise InvalidTransaction(
            TxCode.BELOW_MINIMUM,
            "the budget (max_price_per_gpu_hour * gpus * redundancy * max_hours_milli / 1000) "
            "must be at least 1",
        )


def _submit(
    state: LedgerState, sender: bytes, tx: SubmitJob, spendable: int, ctx: BlockContext
) -> Effect:
    check_terms(tx, ctx.height, state.params.market.deadline_blocks_max)
    cost = tx.max_cost
    if cost > spendable:
        raise InvalidTransaction(
            TxCode.INSUFFICIENT_FUNDS, f"escrow of {cost} with {spendable} spendable after the fee"
        )
    job = job_id(state.chain_id, sender, tx.nonce)
    if job in state.escrows or get_job(state, job) is not None:
        raise InvalidTransaction(TxCode.ESCROW_EXISTS, f"job {job.hex()} already exists")
    record = JobRecord(sender, ctx.height, JobStatus.PENDING, cost, tx)

    def effect() -> None:
        escrow_lock(state, job, sender, cost)
        jobs_of(state)[job] = record

    return effect


def _cancel(
    state: LedgerState, sender: bytes, tx: CancelJob, spendable: int, ctx: BlockContext
) -> Effect:
    record = get_job(state, tx.job_id)
    if record is None:
        raise InvalidTransaction(UNKNOWN_JOB, f"no job {tx.job_id.hex()}")
    if record.submitter != sender:
        raise InvalidTransaction(NOT_SUBMITTER, "only the job's submitter may cancel it")
    if not record.pending:
        status = JobStatus(record.status).name.lower()
        raise InvalidTransaction(JOB_NOT_PENDING, f"job {tx.job_id.hex()} is {status}")
    if not live_at(record, ctx.height):
        raise InvalidTransaction(
            DEADLINE_PASSED,
            f"the job's deadline {record.terms.deadline_height} is not after height {ctx.height}",
        )
    if tx.job_id not in state.escrows:
        raise InvalidTransaction(TxCode.UNKNOWN_ESCROW, f"no escrow for job {tx.job_id.hex()}")

    def effect() -> None:
        escrow_refund(state, tx.job_id)
        jobs_of(state)[tx.job_id] = replace(record, status=JobStatus.CANCELLED)

    return effect


register_tx_handler(SubmitJob, _submit)
register_tx_handler(CancelJob, _cancel)
