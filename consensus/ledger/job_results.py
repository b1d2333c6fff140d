"""Results in the ledger: a replica's `CommitResult` and `RevealResult`, the verdict once
every replica has revealed, and settlement.

Settlement pays each winning replica `price * gpus * billed_ms / 3,600,000` (its assigned
price per GPU-hour), where `billed_ms` is the winners' median runtime, capped by the job's
hours (see `billed_ms`). From each payment the protocol takes `job_fee_bps`;
of the rest the operator takes its commission to its balance and the remainder joins its
pool, which pays its delegators pro rata (as rewards do). What the escrow does not pay is
refunded to the submitter. The losing minority of a MAJORITY verdict is slashed and jailed
when the replicas that committed blind (before any digest of the job was public) agree on
the winning digest by a strict majority: their revealed digests and commitments are all in
the job's record, so any node can re-check the evidence. Commitments carry tokens of their
digests (`verify.result_token`), so a split is known while every digest is hidden: replicas
whose tokens tie draw one more replica before anyone reveals, and it commits blind too (with
k = 2, the wrong one of a 1-1 split is slashed). A TIE of the revealed digests asks for one
more replica (up to `tie_breakers_max`); with none left the job fails and is refunded.
"""

from __future__ import annotations

from dataclasses import replace

from consensus.ledger.apply import BlockContext, register_tx_handler
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.escrow import escrow_refund
from consensus.ledger.job_flow import WRONG_RESULT, penalise
from consensus.ledger.job_records import SPOT_DUE, JobRecord, JobStatus
from consensus.ledger.liveness import heard_from, is_watched
from consensus.ledger.market_records import CommitResult, Replica, RevealResult
from consensus.ledger.params import BPS
from consensus.ledger.staking import Effect
from consensus.ledger.state import PROTOCOL_ACCOUNT, LedgerState, Liveness
from consensus.market.verify import Outcome, Verdict, result_commitment, result_token, verdict

MS_PER_HOUR = 3_600_000
MS_PER_MILLI_HOUR = 3_600


def _replica_of(
    state: LedgerState, sender: bytes, job: bytes, phase: JobStatus
) -> tuple[JobRecord, Replica]:
    """The job and the sender's replica of it, if the job is in `phase`; else why not."""
    record = state.jobs.get(job)
    if record is None:
        raise InvalidTransaction(TxCode.UNKNOWN_JOB, f"no job {job.hex()}")
    if record.status != phase:
        status = JobStatus(record.status).name.lower()
        raise InvalidTransaction(
            TxCode.WRONG_PHASE, f"job {job.hex()} is {status}, not {phase.name.lower()}"
        )
    mine = next((r for r in record.replicas if r.node == sender), None)
    if mine is None:
        raise InvalidTransaction(TxCode.NOT_REPLICA, f"the sender runs no replica of {job.hex()}")
    return record, mine


def _with(record: JobRecord, updated: Replica) -> tuple[Replica, ...]:
    return tuple(updated if r.node == updated.node else r for r in record.replicas)


def _commit(
    state: LedgerState, sender: bytes, tx: CommitResult, spendable: int, ctx: BlockContext
) -> Effect:
    record, mine = _replica_of(state, sender, tx.job_id, JobStatus.ASSIGNED)
    if mine.committed:
        raise InvalidTransaction(TxCode.ALREADY_DONE, "this replica has already committed")

    def effect() -> None:
        replicas = _with(record, replace(mine, commitment=tx.commitment, token=tx.token))
        updated = replace(record, replicas=replicas)
        heard_from(state, sender, ctx.height)
        if not all(r.committed for r in replicas):
            state.jobs[tx.job_id] = updated
        elif (
            verdict([(r.node, r.token) for r in replicas]).outcome == Outcome.TIE
            and record.tie_breakers < state.params.market.tie_breakers_max
        ):
            # The tokens split with no majority, every digest still hidden: one more
            # replica now commits blind, and the majority it makes may slash.
            state.jobs[tx.job_id] = replace(
                updated, status=JobStatus.PENDING, tie_breakers=record.tie_breakers + 1,
                phase_height=ctx.height,
            )  # fmt: skip
        elif not record.spot_check and (
            state.params.market.spot_check_permille
            or any(is_watched(state, r.node) for r in replicas)
        ):
            # the next block draws whether to audit (job_flow.step_spot_draws)
            state.jobs[tx.job_id] = replace(updated, spot_check=SPOT_DUE, phase_height=ctx.height)
        else:
            state.jobs[tx.job_id] = replace(
                updated, status=JobStatus.REVEALING, phase_height=ctx.height
            )

    return effect


def _reveal(
    state: LedgerState, sender: bytes, tx: RevealResult, spendable: int, ctx: BlockContext
) -> Effect:
    record, mine = _replica_of(state, sender, tx.job_id, JobStatus.REVEALING)
    if mine.revealed:
        raise InvalidTransaction(TxCode.ALREADY_DONE, "this replica has already revealed")
    if result_commitment(tx.job_id, sender, tx.digest, tx.salt) != mine.commitment:
        raise InvalidTransaction(
            TxCode.BAD_REVEAL, "digest and salt do not open this replica's commitment"
        )
    if result_token(tx.job_id, tx.digest) != mine.token:
        raise InvalidTransaction(TxCode.BAD_REVEAL, "the digest does not match the committed token")

    def effect() -> None:
        heard_from(state, sender, ctx.height)
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
        escrow_refund(state, job)
        return replace(record, status=JobStatus.FAILED, refunded=refunded, closed_height=height)
    blind = [(r.node, r.digest) for r in record.replicas if not r.late]
    judged = verdict(blind) if blind else None
    if judged is not None and judged.outcome != Outcome.TIE and judged.digest == found.digest:
        for node in found.losers:
            penalise(state, job, node, WRONG_RESULT)
    else:
        for node in found.losers:
            strike(state, node)
    # Otherwise the majority rests on replicas that joined after digests were public (a
    # tie-breaker or a replacement, which could have copied): it decides the result and
    # the pay, but it slashes no one, so a lazy copier can never get an honest node slashed.
    return settle(state, job, record, found, height)


def strike(state: LedgerState, node: bytes) -> None:
    """Count a lost verdict that could not be slashed; at `strikes_to_jail` in one epoch the
    node is jailed (no rewards, not scheduled, off the committee), its stake untouched."""
    live = state.liveness.setdefault(node, Liveness())
    live.strikes += 1
    op = state.operators.get(node)
    if op is not None and live.strikes >= state.params.market.strikes_to_jail:
        op.jailed_until_epoch = max(
            op.jailed_until_epoch, state.epoch + state.params.jail_epochs + 1
        )


def billed_ms(record: JobRecord, winners: tuple[bytes, ...]) -> int:
    """The winners' median runtime (the upper one of an even count), capped by the job's
    hours: one winner reporting 0 cannot zero everyone's pay, and one inflating its runtime
    moves the bill only as far as the median, never past the hours the submitter allowed."""
    runtimes = sorted(r.runtime_ms for r in record.replicas if r.node in winners)
    return min(runtimes[len(runtimes) // 2], record.terms.max_hours_milli * MS_PER_MILLI_HOUR)


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
    winners = sorted(
        (r for r in record.replicas if r.node in found.winners), key=lambda r: (r.audit, r.node)
    )  # the audit replica last: the submitter's escrow pays for its own replicas first
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
