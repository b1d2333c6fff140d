"""Results in the ledger: a replica's `CommitResult` and `RevealResult`, the verdict once
every replica has revealed, and settlement.

Settlement pays each winning replica `price * gpus * billed_ms / 3,600,000` (its assigned
price per GPU-hour), where `billed_ms` is the least runtime any winner reported, capped by
the job's hours: a node that inflates its runtime bills nothing extra, since the fastest
honest replica sets the bill for all. From each payment the protocol takes `job_fee_bps`;
of the rest the operator takes its commission to its balance and the remainder joins its
pool, which pays its delegators pro rata (as rewards do). What the escrow does not pay is
refunded to the submitter. The losing minority of a MAJORITY verdict is slashed and jailed:
its revealed digest, the winners' and the commitments are all in the job's record, so any
node can re-check the evidence. A TIE asks for one more replica (up to `tie_breakers_max`),
and with none left the job fails and is refunded.
"""

from __future__ import annotations

from dataclasses import replace

from consensus.ledger.apply import BlockContext, register_tx_handler
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.job_flow import WRONG_RESULT, penalise, spot_checked
from consensus.ledger.job_records import SPOT_WANTED, JobRecord, JobStatus
from consensus.ledger.market_records import CommitResult, Replica, RevealResult
from consensus.ledger.params import BPS
from consensus.ledger.staking import Effect
from consensus.ledger.state import PROTOCOL_ACCOUNT, LedgerState, Liveness
from consensus.market.verify import Outcome, Verdict, result_commitment, verdict

MS_PER_HOUR = 3_600_000
MS_PER_MILLI_HOUR = 3_600


def _replica_of(state: LedgerState, sender: bytes, job: bytes, phase: JobStatus) -> JobRecord:
    record = state.jobs.get(job)
    if record is None:
        raise InvalidTransaction(TxCode.UNKNOWN_JOB, f"no job {job.hex()}")
    if record.status != phase:
        status = JobStatus(record.status).name.lower()
        raise InvalidTransaction(
            TxCode.WRONG_PHASE, f"job {job.hex()} is {status}, not {phase.name.lower()}"
        )
    if all(r.node != sender for r in record.replicas):
        raise InvalidTransaction(TxCode.NOT_REPLICA, f"the sender runs no replica of {job.hex()}")
    return record


def _with(record: JobRecord, updated: Replica) -> tuple[Replica, ...]:
    return tuple(updated if r.node == updated.node else r for r in record.replicas)


def _commit(
    state: LedgerState, sender: bytes, tx: CommitResult, spendable: int, ctx: BlockContext
) -> Effect:
    record = _replica_of(state, sender, tx.job_id, JobStatus.ASSIGNED)
    mine = next(r for r in record.replicas if r.node == sender)
    if mine.committed:
        raise InvalidTransaction(TxCode.ALREADY_DONE, "this replica has already committed")

    def effect() -> None:
        replicas = _with(record, replace(mine, commitment=tx.commitment))
        updated = replace(record, replicas=replicas)
        if not all(r.committed for r in replicas):
            state.jobs[tx.job_id] = updated
        elif not record.spot_check and spot_checked(state, tx.job_id, ctx.parent_hash):
            # audit: one more replica, placed by this block's step; the others wait for it
            state.jobs[tx.job_id] = replace(
                updated, spot_check=SPOT_WANTED, status=JobStatus.PENDING,
                phase_height=ctx.height,
            )  # fmt: skip
        else:
            state.jobs[tx.job_id] = replace(
                updated, status=JobStatus.REVEALING, phase_height=ctx.height
            )

    return effect


def _reveal(
    state: LedgerState, sender: bytes, tx: RevealResult, spendable: int, ctx: BlockContext
) -> Effect:
    record = _replica_of(state, sender, tx.job_id, JobStatus.REVEALING)
    mine = next(r for r in record.replicas if r.node == sender)
    if mine.revealed:
        raise InvalidTransaction(TxCode.ALREADY_DONE, "this replica has already revealed")
    if result_commitment(tx.job_id, sender, tx.digest, tx.salt) != mine.commitment:
        raise InvalidTransaction(
            TxCode.BAD_REVEAL, "digest and salt do not open this replica's commitment"
        )

    def effect() -> None:
        replicas = _with(record, replace(mine, digest=tx.digest, runtime_ms=tx.runtime_ms))
        updated = replace(record, replicas=replicas)
        if all(r.revealed for r in replicas):
            updated = conclude(state, tx.job_id, updated, ctx.height)
        state.jobs[tx.job_id] = updated

    return effect


def conclude(state: LedgerState, job: bytes, record: JobRecord, height: int) -> JobRecord:
    """Every replica has revealed: settle on the verdict, or ask for a tie-breaker."""
    found = verdict([(r.node, r.digest) for r in record.replicas])
    if found.outcome == Outcome.TIE:
        if record.tie_breakers < state.params.market.tie_breakers_max:
            return replace(
                record, status=JobStatus.PENDING, tie_breakers=record.tie_breakers + 1,
                phase_height=height,
            )  # fmt: skip
        refunded = state.escrows[job].amount
        _refund(state, job)
        return replace(record, status=JobStatus.FAILED, refunded=refunded, closed_height=height)
    for node in found.losers:
        penalise(state, job, node, WRONG_RESULT)
    return settle(state, job, record, found, height)


def _refund(state: LedgerState, job: bytes) -> None:
    escrow = state.escrows.pop(job)
    state.credit(escrow.payer, escrow.amount)


def billed_ms(record: JobRecord, winners: tuple[bytes, ...]) -> int:
    """The least runtime among the winners, capped by the job's hours."""
    least = min(r.runtime_ms for r in record.replicas if r.node in winners)
    return min(least, record.terms.max_hours_milli * MS_PER_MILLI_HOUR)


def pay_operator(state: LedgerState, operator: bytes, net: int) -> None:
    """Commission to the operator's balance, the rest into its pool (its delegators' and its
    own shares rise pro rata). An operator with no pool left takes it all as balance."""
    op = state.operators.get(operator)
    if op is None or op.shares == 0:
        state.credit(operator, net)
        return
    commission = net * op.commission_bps // BPS
    state.credit(operator, commission)
    op.pool += net - commission


def settle(
    state: LedgerState, job: bytes, record: JobRecord, found: Verdict, height: int
) -> JobRecord:
    """Pay the winners, take the protocol fee, refund the rest. The submitter's escrow pays
    for at most `redundancy` winners (in node order); a further winner (a spot-check replica,
    drawn by the protocol) is paid from the protocol account, as far as it holds enough."""
    escrow = state.escrows.pop(job)
    left = escrow.amount
    billed = billed_ms(record, found.winners)
    fee_bps = state.params.market.job_fee_bps
    paid = fees = subsidy = 0
    winners = [r for r in record.replicas if r.node in found.winners]
    for n, replica in enumerate(winners):
        due = replica.price_per_gpu_hour * record.terms.gpus * billed // MS_PER_HOUR
        if n < record.terms.redundancy:
            pay = min(left, due)
            left -= pay
        else:
            pay = min(due, state.balance(PROTOCOL_ACCOUNT))
            if pay:
                state.debit(PROTOCOL_ACCOUNT, pay)
            subsidy += pay
        live = state.liveness.setdefault(replica.node, Liveness())
        live.work_units += billed * record.terms.gpus
        fee = pay * fee_bps // BPS
        pay_operator(state, replica.node, pay - fee)
        paid += pay - fee
        fees += fee
    state.credit(PROTOCOL_ACCOUNT, fees)
    state.fees_collected += fees
    state.credit(escrow.payer, left)
    return replace(
        record,
        status=JobStatus.SETTLED,
        result_digest=found.digest,
        paid=paid,
        fee_paid=fees,
        refunded=left,
        subsidy=subsidy,
        billed_ms=billed,
        closed_height=height,
    )


register_tx_handler(CommitResult, _commit)
register_tx_handler(RevealResult, _reveal)
