"""Job records of the ledger: the `SubmitJob` and `CancelJob` transactions (kinds 16, 17),
a job's status and its row in the jobs table, and how job ids are formed.

A leaf module (it imports only the transaction base and the wire layer) because the state
(`state.py`, whose root covers the jobs table) and the snapshot reader need these types, and
the handlers (`jobs.py`) need the state. The rules live in `consensus.ledger.jobs`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from consensus.ledger.market_records import Replica
from consensus.ledger.tx import ACCOUNT_BYTES, LedgerTx
from p2p import codec
from p2p.wire import Blob, Nested, Seq, Struct, Text, UInt, register, wire_field

JOB_ID_BYTES = 32
HASH_BYTES = 32
JOB_KINDS = ("matmul", "render", "inference")
"""The workloads a node can run (node/workloads); anything else is refused."""
JOB_KIND_BYTES_MAX = 16
PARAMS_BYTES_MAX = 512
INPUTS_MAX = 16
GPU_MODEL_BYTES_MAX = 64
REGION_BYTES_MAX = 32
GPUS_MAX = 64
REDUNDANCY_MAX = 5
MILLI = 1000
JOB_ID_DOMAIN = b"gpumesh/job-id/v1"


@register
@dataclass(frozen=True)
class SubmitJob(LedgerTx):
    """Submit a job; its id is `job_id(chain, signer, nonce)`. The signer pays fee + max_cost.

    The wire bounds the sizes; the ledger refuses an unknown `kind`, zero `gpus` or
    `redundancy`, a deadline not above the current height and a zero budget."""

    KIND = 16
    VERSION = 1

    kind: str = wire_field(Text(JOB_KIND_BYTES_MAX))
    """"matmul", "render" or "inference"."""
    params: bytes = wire_field(Blob(PARAMS_BYTES_MAX))
    """The workload's parameters in their canonical bytes; opaque to the ledger."""
    inputs: tuple[bytes, ...] = wire_field(Seq(Blob(HASH_BYTES, HASH_BYTES), INPUTS_MAX))
    """Content hashes of the inputs, in the order the workload takes them."""
    gpu_model: str = wire_field(Text(GPU_MODEL_BYTES_MAX))
    """Exact model name (case-insensitive when matched); "" takes any model."""
    min_memory_mib: int = wire_field(UInt())
    gpus: int = wire_field(UInt(GPUS_MAX))
    """GPUs per replica, on one node: 1..64."""
    region: str = wire_field(Text(REGION_BYTES_MAX))
    """"" runs anywhere."""
    max_rtt_ms: int = wire_field(UInt())
    """Round-trip limit between node and submitter; 0 has no limit."""
    redundancy: int = wire_field(UInt(REDUNDANCY_MAX))
    """Replicas, each on a distinct operator: 1..5."""
    deadline_height: int = wire_field(UInt())
    """The job must be done before this height; at it, a pending job expires."""
    max_price_per_gpu_hour: int = wire_field(UInt())
    max_hours_milli: int = wire_field(UInt())
    """The most GPU-time one GPU may bill, in thousandths of an hour."""
    near: bytes = wire_field(Blob(ACCOUNT_BYTES), b"")
    """The node the job was submitted through (b"": none): `max_rtt_ms` and the RTT part of
    the score are measured from it, with the RTTs nodes put in their offers."""

    @property
    def max_cost(self) -> int:
        """What is escrowed: the price cap over every GPU of every replica for the most
        hours, rounded down to whole base units."""
        return (
            self.max_price_per_gpu_hour * self.gpus * self.redundancy * self.max_hours_milli
        ) // MILLI


@register
@dataclass(frozen=True)
class CancelJob(LedgerTx):
    """Withdraw a pending job before its deadline; the whole escrow returns to the signer."""

    KIND = 17
    VERSION = 1

    job_id: bytes = wire_field(Blob(JOB_ID_BYTES, JOB_ID_BYTES))


class JobStatus(enum.IntEnum):
    """A job's place in its life. Committed values: they never change meaning."""

    PENDING = 0
    """Escrowed, waiting for the scheduler."""
    CANCELLED = 1
    """Withdrawn by the submitter; refunded."""
    EXPIRED = 2
    """Reached its deadline before any replica was assigned; refunded."""
    ASSIGNED = 3
    """Replicas placed; they commit to their result digests (job_results.py)."""
    REVEALING = 4
    """Every replica committed; they open their commitments."""
    SETTLED = 5
    """A verdict was reached: the winners paid, the minority slashed, the rest refunded."""
    FAILED = 6
    """The deadline passed after assignment (or ties ran out of tie-breakers); refunded."""


SPOT_WANTED = 1
"""An audit replica was drawn and is wanted."""
SPOT_SKIPPED = 2
"""An audit was drawn but no operator had room (or time) for it."""
SPOT_DUE = 3
"""Every replica has committed: the next block draws whether to audit (from the hash of the
block that holds the last commitment, which no committer can know when it sends)."""
SPOT_CLEAR = 4
"""Drawn: no audit."""
REASON_NONE = 255
"""`JobRecord.last_reason` when the scheduler has not (or no longer) left the job out."""
REPLICAS_MAX = REDUNDANCY_MAX + 4
"""k replicas, a spot check and at most three tie-breakers."""
EXCLUDED_MAX = 64


@dataclass(frozen=True)
class JobRecord(Struct):
    """One row of the jobs table (keyed by job id). Frozen: a change replaces the row."""

    submitter: bytes = wire_field(Blob(ACCOUNT_BYTES, ACCOUNT_BYTES))
    submitted_height: int = wire_field(UInt())
    status: int = wire_field(UInt(max(JobStatus)))
    escrowed: int = wire_field(UInt())
    """What was locked (the terms' max_cost); the escrow holds it while the job is pending."""
    terms: SubmitJob = wire_field(Nested(SubmitJob))  # noqa: RUF009
    """The transaction as submitted (its nonce and fee included)."""
    replicas: tuple[Replica, ...] = wire_field(Seq(Nested(Replica), REPLICAS_MAX), ())
    """Current replicas, sorted by node; each carries its commit-reveal progress."""
    excluded: tuple[bytes, ...] = wire_field(Seq(Blob(32, 32), EXCLUDED_MAX), ())
    """Nodes that failed this job (no-show, withheld): never assigned to it again."""
    tie_breakers: int = wire_field(UInt(3), 0)
    """Extra replicas drawn to break ties so far."""
    spot_check: int = wire_field(UInt(SPOT_CLEAR), 0)
    """SPOT_WANTED if the protocol drew one more replica at random to audit this job,
    SPOT_SKIPPED if it drew one but no operator had room for it."""
    reroutes: int = wire_field(UInt(), 0)
    phase_height: int = wire_field(UInt(), 0)
    """When the current phase (assigned, revealing, back to pending) began."""
    last_reason: int = wire_field(UInt(REASON_NONE), REASON_NONE)
    """The scheduler's `Reason` code the last time it left the job out; REASON_NONE if it
    never did or has since placed it."""
    result_digest: bytes = wire_field(Blob(32), b"")
    paid: int = wire_field(UInt(), 0)
    """Paid to operators (after the fee)."""
    fee_paid: int = wire_field(UInt(), 0)
    refunded: int = wire_field(UInt(), 0)
    billed_ms: int = wire_field(UInt(), 0)
    closed_height: int = wire_field(UInt(), 0)
    subsidy: int = wire_field(UInt(), 0)
    """Paid from the protocol account (for a spot-check replica), on top of the escrow:
    paid + fee_paid + refunded == escrowed + subsidy."""

    @property
    def replicas_wanted(self) -> int:
        audit = 1 if self.spot_check == SPOT_WANTED else 0
        return self.terms.redundancy + self.tie_breakers + audit

    def to_wire(self) -> list[codec.Value]:
        """Memoised: a row is frozen (a change replaces it), and the state root encodes every
        row of the jobs table in every block, settled ones included."""
        cached: list[codec.Value] | None = self.__dict__.get("_wire")
        if cached is None:
            cached = super().to_wire()
            object.__setattr__(self, "_wire", cached)
        return cached

    @property
    def pending(self) -> bool:
        """Waiting for its first assignment (cancellable)."""
        return self.status == JobStatus.PENDING and not self.replicas and not self.reroutes


def job_id(chain_id: bytes, submitter: bytes, nonce: int) -> bytes:
    """The id of the job that `submitter`'s transaction with `nonce` submits on `chain_id`."""
    return hashlib.sha256(
        JOB_ID_DOMAIN
        + len(chain_id).to_bytes(1, "big")
        + chain_id
        + submitter
        + nonce.to_bytes(8, "big")
    ).digest()
