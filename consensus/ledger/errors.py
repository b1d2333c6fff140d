"""The ledger's three kinds of failure, kept apart because each calls for a different response.

- `InvalidTransaction`: the sender's (or a market caller's) input is wrong. It is data: the
  transaction is rejected with a code and a reason the sender can read, the state is left
  exactly as it was, and the node carries on (DESIGN.md principle 6).
- `ConservationError`: the books do not balance after a block. That is our own bug, never a
  peer's, so it crashes loudly with the figures.
- `GenesisError`: the genesis file cannot start a chain; it names the offending field.
"""

from __future__ import annotations

import enum


class TxCode(enum.Enum):
    """Why a transaction (or a call of an escrow / slashing hook) was refused."""

    MALFORMED = "malformed"
    """Not a decodable transaction of a known kind for this chain."""
    BAD_SIGNATURE = "bad_signature"
    TOO_LARGE = "too_large"
    BAD_NONCE = "bad_nonce"
    FEE_TOO_LOW = "fee_too_low"
    RATE_LIMITED = "rate_limited"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INSUFFICIENT_STAKE = "insufficient_stake"
    BELOW_MINIMUM = "below_minimum"
    UNKNOWN_OPERATOR = "unknown_operator"
    OPERATOR_INACTIVE = "operator_inactive"
    """The operator has no self-bond left, or its pool was slashed to nothing."""
    OPERATOR_JAILED = "operator_jailed"
    SELF_DELEGATION = "self_delegation"
    """Delegate/Undelegate naming oneself: Stake and Unbond are the operator's own verbs."""
    COMMISSION_CHANGE = "commission_change"
    """A commission change larger than the allowed step, or a second one in one epoch."""
    TOO_MANY_UNBONDING = "too_many_unbonding"
    ESCROW_EXISTS = "escrow_exists"
    UNKNOWN_ESCROW = "unknown_escrow"
    ESCROW_OVERDRAWN = "escrow_overdrawn"
    DUPLICATE_EVIDENCE = "duplicate_evidence"
    BAD_EVIDENCE = "bad_evidence"
    """Equivocation evidence whose statements do not verify or do not conflict."""
    ALREADY_PENDING = "already_pending"
    """The mempool holds this transaction, or another with the same sender and nonce."""
    MEMPOOL_FULL = "mempool_full"
    BAD_JOB = "bad_job"
    """Unknown workload kind, or zero GPUs or replicas."""
    DEADLINE_PASSED = "deadline_passed"
    UNKNOWN_JOB = "unknown_job"
    NOT_SUBMITTER = "not_submitter"
    """Only the account that submitted a job may cancel it."""
    JOB_NOT_PENDING = "job_not_pending"
    WRONG_PHASE = "wrong_phase"
    """A commitment while the job is not collecting them, or a reveal before all are in."""
    NOT_REPLICA = "not_replica"
    """A result from a node that runs no replica of the job."""
    ALREADY_DONE = "already_done"
    """A second commitment or reveal from the same replica."""
    BAD_REVEAL = "bad_reveal"
    NO_OFFER = "no_offer"
    """A heartbeat from a node that offers no capacity."""
    """The revealed digest and salt do not open the replica's commitment."""


class InvalidTransaction(ValueError):
    """A refused transaction or hook call; the state is untouched. `code` is for programs
    (metrics, penalties), `reason` for the sender."""

    def __init__(self, code: TxCode, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code, self.reason = code, reason


class ConservationError(AssertionError):
    """Supply is not conserved (or an amount went negative): a bug in the ledger itself."""


class GenesisError(ValueError):
    """A genesis file that cannot start a chain; `field` is the dotted TOML path (None for
    problems with the text as a whole)."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(f"genesis: {field}: {problem}" if field else f"genesis: {problem}")
        self.field, self.problem = field, problem
