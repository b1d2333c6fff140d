"""Equivocation evidence: two statements one committee member signed for the same slot.

Anyone who holds two such statements (two different votes of one kind at one height and
round, or two different proposals for one round) submits them in an `Equivocation`
transaction; every node checks both signatures itself, so no one has to be trusted. The
offender's pool (operator and delegators, pro rata) is slashed by `EQUIVOCATION_SLASH_BPS`
and jailed; the same pair can be used once (`state.evidence_seen`), and a jailed offender is
not slashed again until its jail ends: one offence, one slash, however many of its
statements conflict (an equivocating member usually signs many before it is caught).

The records come from `consensus.bft.votes`, a leaf module, so the ledger does not depend on
the BFT machinery, only on the shape of what it signs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from consensus.bft.votes import STATEMENT_BYTES_MAX, Proposal, Vote, decode_statement
from consensus.ledger.apply import BlockContext, register_tx_handler
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.staking import Effect, slash
from consensus.ledger.state import LedgerState
from consensus.ledger.tx import LedgerTx
from p2p.errors import BadSignature, DecodeError
from p2p.wire import Blob, register, wire_field

EQUIVOCATION_SLASH_BPS = 500
"""5% of the offender's pool: double signing is never an accident of an honest node (votes are
persisted before they are sent), so it is punished harder than downtime."""


@register
@dataclass(frozen=True)
class Equivocation(LedgerTx):
    """Report two conflicting signed statements of one member. The reporter pays the fee."""

    KIND = 15
    VERSION = 1

    first: bytes = wire_field(Blob(STATEMENT_BYTES_MAX))
    second: bytes = wire_field(Blob(STATEMENT_BYTES_MAX))


def evidence_digest(first: bytes, second: bytes) -> bytes:
    """One digest per unordered pair, so swapping the two cannot slash twice."""
    a, b = sorted((first, second))
    return hashlib.sha256(b"gpumesh/evidence/v1" + len(a).to_bytes(4, "big") + a + b).digest()


def check_equivocation(chain_id: bytes, first: bytes, second: bytes) -> tuple[bytes, int]:
    """(offender, height) if the two statements prove equivocation; InvalidTransaction
    (BAD_EVIDENCE) saying why not otherwise."""
    try:
        a = decode_statement(first, chain_id)
        b = decode_statement(second, chain_id)
    except (DecodeError, BadSignature) as exc:
        raise InvalidTransaction(TxCode.BAD_EVIDENCE, f"statement does not verify: {exc}") from None
    if a.signer != b.signer:
        raise InvalidTransaction(TxCode.BAD_EVIDENCE, "the statements have different signers")
    ra, rb = a.record, b.record
    if type(ra) is not type(rb) or not isinstance(ra, Vote | Proposal):
        raise InvalidTransaction(TxCode.BAD_EVIDENCE, "not two votes or two proposals")
    if ra.slot != rb.slot:
        raise InvalidTransaction(TxCode.BAD_EVIDENCE, f"different slots {ra.slot} {rb.slot}")
    if ra == rb:
        raise InvalidTransaction(TxCode.BAD_EVIDENCE, "the statements agree")
    return a.signer, ra.height


def _handle(
    state: LedgerState, sender: bytes, tx: Equivocation, spendable: int, ctx: BlockContext
) -> Effect:
    offender, height = check_equivocation(state.chain_id, tx.first, tx.second)
    digest = evidence_digest(tx.first, tx.second)
    if digest in state.evidence_seen:
        raise InvalidTransaction(TxCode.DUPLICATE_EVIDENCE, "this evidence was already used")
    if offender not in state.operators:
        raise InvalidTransaction(TxCode.UNKNOWN_OPERATOR, f"{offender.hex()} is not an operator")
    if state.is_jailed(offender):
        raise InvalidTransaction(
            TxCode.DUPLICATE_EVIDENCE, "the offender is already slashed and jailed for this epoch"
        )
    infraction_epoch = (height - 1) // state.params.epoch_blocks

    def effect() -> None:
        slash(state, offender, EQUIVOCATION_SLASH_BPS, "equivocation", digest,
              infraction_epoch=infraction_epoch)  # fmt: skip

    return effect


register_tx_handler(Equivocation, _handle)
