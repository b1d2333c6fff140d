"""Equivocation evidence through the ledger: two conflicting signed statements of an operator
slash its pool (delegators pro rata, supply conserved) and jail it, once per pair; anything
that does not prove equivocation is refused with BAD_EVIDENCE and changes nothing."""

from __future__ import annotations

import pytest

from consensus.bft.votes import NIL, VoteKind
from consensus.ledger.apply import BlockContext, apply_block
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.evidence import (
    EQUIVOCATION_SLASH_BPS,
    Equivocation,
    check_equivocation,
    evidence_digest,
)
from consensus.ledger.params import BPS
from consensus.ledger.tx import Delegate
from tests.consensus.conftest import (
    CHAIN_ID,
    make_genesis,
    make_params,
    members,
    proposal,
    signed_tx,
    users,
    vote,
)

OPS = members(4, "evidence")
BAD = OPS[2]
REPORTER, DEL1, DEL2 = users(3)
H1, H2 = b"\x11" * 32, b"\x22" * 32
PV, PC = VoteKind.PREVOTE, VoteKind.PRECOMMIT
PARAMS = make_params(epoch_blocks=10, jail_epochs=2)


class Ledger:
    """A state with two delegators in BAD's pool, and a reporter that signs evidence."""

    def __init__(self) -> None:
        self.state = make_genesis(OPS, (REPORTER, DEL1, DEL2), params=PARAMS).initial_state()
        self.nonce = 0
        self.apply(
            [
                signed_tx(Delegate(nonce=0, fee=1, operator=BAD.public_key, amount=300_000), DEL1),
                signed_tx(Delegate(nonce=0, fee=1, operator=BAD.public_key, amount=700_000), DEL2),
            ]
        )

    def apply(self, txs):
        return apply_block(self.state, txs, BlockContext(self.state.height + 1))

    def report(self, first: bytes, second: bytes):
        tx = signed_tx(Equivocation(nonce=self.nonce, fee=1, first=first, second=second), REPORTER)
        outcome = self.apply([tx])
        if not outcome.rejected:
            self.nonce += 1
        return outcome

    def values(self) -> dict[str, int]:
        s, b = self.state, BAD.public_key
        return {
            "pool": s.operators[b].pool,
            "op": s.stake_value(b, b),
            "d1": s.stake_value(DEL1.public_key, b),
            "d2": s.stake_value(DEL2.public_key, b),
        }


def conflicting_prevotes(signer=BAD, height=1, round_=0):
    return vote(signer, height, round_, PV, H1)[1], vote(signer, height, round_, PV, H2)[1]


def rejected_code(outcome) -> TxCode:
    assert len(outcome.rejected) == 1 and not outcome.receipts, outcome
    return outcome.rejected[0].code


def test_equivocation_slashes_the_pool_pro_rata_and_jails() -> None:
    L = Ledger()
    before = L.values()
    burned, supply = L.state.burned, L.state.totals().total
    assert before["pool"] == 2_000_000 and before["d1"] == 300_000 and before["d2"] == 700_000
    first, second = conflicting_prevotes()
    outcome = L.report(first, second)
    assert len(outcome.receipts) == 1 and outcome.rejected == ()
    after = L.values()
    cut = before["pool"] * EQUIVOCATION_SLASH_BPS // BPS
    assert after["pool"] == before["pool"] - cut == 1_900_000
    for who in ("op", "d1", "d2"):  # everyone loses the same fraction (rounded down)
        assert after[who] == before[who] * (BPS - EQUIVOCATION_SLASH_BPS) // BPS, who
    assert L.state.burned == burned + cut
    assert L.state.totals().total == supply - cut
    L.state.check_conservation()
    op = L.state.operators[BAD.public_key]
    assert op.slashed_total == cut
    assert L.state.is_jailed(BAD.public_key)
    assert op.jailed_until_epoch == L.state.epoch + PARAMS.jail_epochs + 1
    assert BAD.public_key not in L.state.next_committee()
    assert evidence_digest(first, second) in L.state.evidence_seen
    # the reporter paid the fee like any transaction
    assert L.state.nonce(REPORTER.public_key) == 1


def test_the_same_pair_cannot_slash_twice_in_either_order() -> None:
    L = Ledger()
    first, second = conflicting_prevotes()
    L.report(first, second)
    pool = L.values()["pool"]
    assert rejected_code(L.report(first, second)) == TxCode.DUPLICATE_EVIDENCE
    assert rejected_code(L.report(second, first)) == TxCode.DUPLICATE_EVIDENCE
    assert L.values()["pool"] == pool
    assert L.state.operators[BAD.public_key].slashed_total == 2_000_000 - pool


def test_evidence_digest_is_order_free_and_pair_specific() -> None:
    a, b = conflicting_prevotes()
    c = vote(BAD, 1, 0, PV, NIL)[1]
    assert evidence_digest(a, b) == evidence_digest(b, a)
    assert evidence_digest(a, c) != evidence_digest(a, b)


def test_conflicting_precommits_and_proposals_are_evidence_too() -> None:
    L = Ledger()
    pc = vote(BAD, 3, 1, PC, H1)[1], vote(BAD, 3, 1, PC, NIL)[1]
    assert not L.report(*pc).rejected
    L2 = Ledger()
    props = proposal(BAD, 2, 0, H1)[1], proposal(BAD, 2, 0, H2)[1]
    assert not L2.report(*props).rejected
    # the same block proposed with another proof-of-lock round is also two proposals in a slot
    L3 = Ledger()
    props = proposal(BAD, 2, 3, H1, -1)[1], proposal(BAD, 2, 3, H1, 1)[1]
    assert not L3.report(*props).rejected


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (vote(BAD, 1, 0, PV, H1)[1],) * 2, id="identical"),
        pytest.param(
            lambda: (vote(BAD, 1, 0, PV, H1)[1], vote(BAD, 1, 1, PV, H2)[1]), id="other-round"
        ),
        pytest.param(
            lambda: (vote(BAD, 1, 0, PV, H1)[1], vote(BAD, 2, 0, PV, H2)[1]), id="other-height"
        ),
        pytest.param(
            lambda: (vote(BAD, 1, 0, PV, H1)[1], vote(BAD, 1, 0, PC, H2)[1]),
            id="prevote-vs-precommit",
        ),
        pytest.param(
            lambda: (vote(BAD, 1, 0, PV, H1)[1], proposal(BAD, 1, 0, H2)[1]), id="vote-vs-proposal"
        ),
        pytest.param(
            lambda: (proposal(BAD, 1, 0, H1)[1], proposal(BAD, 1, 1, H2)[1]),
            id="proposals-other-round",
        ),
        pytest.param(
            lambda: (vote(BAD, 1, 0, PV, H1)[1], vote(OPS[1], 1, 0, PV, H2)[1]),
            id="different-signers",
        ),
        pytest.param(
            lambda: (
                vote(BAD, 1, 0, PV, H1)[1],
                vote(BAD, 1, 0, PV, H2, chain_id=b"other-chain")[1],
            ),
            id="other-chain",
        ),
        pytest.param(lambda: (vote(BAD, 1, 0, PV, H1)[1], b"\x93\x01\x02\x03"), id="garbage"),
        pytest.param(
            lambda: (vote(BAD, 1, 0, PV, H1)[1], _tamper(vote(BAD, 1, 0, PV, H2)[1])),
            id="bad-signature",
        ),
        pytest.param(
            lambda: (
                signed_tx(Delegate(nonce=0, fee=1, operator=H1, amount=1), BAD),
                signed_tx(Delegate(nonce=0, fee=1, operator=H2, amount=1), BAD),
            ),
            id="not-statements",
        ),
    ],
)
def test_non_evidence_is_refused_and_changes_nothing(make) -> None:
    L = Ledger()
    first, second = make()
    with pytest.raises(InvalidTransaction) as info:
        check_equivocation(CHAIN_ID, first, second)
    assert info.value.code == TxCode.BAD_EVIDENCE
    values = L.values()
    assert rejected_code(L.report(first, second)) == TxCode.BAD_EVIDENCE
    assert L.values() == values
    assert not L.state.is_jailed(BAD.public_key)
    assert L.state.evidence_seen == set()


def _tamper(env: bytes) -> bytes:
    return env[:-1] + bytes([env[-1] ^ 1])


def test_evidence_against_a_non_operator_is_refused() -> None:
    L = Ledger()
    stranger = members(1, "not-an-operator")[0]
    assert rejected_code(L.report(*conflicting_prevotes(stranger))) == TxCode.UNKNOWN_OPERATOR


def test_check_equivocation_names_the_offender_and_height() -> None:
    a, b = conflicting_prevotes(height=17)
    assert check_equivocation(CHAIN_ID, a, b) == (BAD.public_key, 17)


def test_slash_touches_unbonding_entries_created_since_the_infraction_epoch() -> None:
    """Stake that left the pool after the fault is still answerable; an entry created before
    the infraction's epoch is not."""
    from consensus.ledger.tx import Undelegate

    L = Ledger()
    L.apply([signed_tx(Undelegate(nonce=1, fee=1, operator=BAD.public_key, amount=100_000), DEL1)])
    entry = L.state.unbonding[-1]
    assert entry.amount == 100_000
    # a fault at height 1 (epoch 0), reported now: the entry (created in epoch 0) pays too
    first, second = conflicting_prevotes(height=1)
    assert L.report(first, second).rejected == ()
    assert entry.amount == 100_000 - 100_000 * EQUIVOCATION_SLASH_BPS // BPS
    L.state.check_conservation()


def test_an_old_entry_is_spared_by_a_later_infraction() -> None:
    from consensus.ledger.tx import Undelegate

    L = Ledger()
    L.apply([signed_tx(Undelegate(nonce=1, fee=1, operator=BAD.public_key, amount=100_000), DEL1)])
    entry = L.state.unbonding[-1]
    while L.state.epoch < 1:
        L.apply([])
    # height epoch_blocks + 1 is the first of epoch 1
    first, second = conflicting_prevotes(height=PARAMS.epoch_blocks + 1)
    assert L.report(first, second).rejected == ()
    assert L.state.operators[BAD.public_key].slashed_total > 0  # the pool paid
    assert entry.amount == 100_000  # the entry that left before the fault did not


def test_a_jailed_offender_is_not_slashed_again_until_released() -> None:
    """Slashed once per jail: other pairs (another slot, a third vote) are refused while the
    offender sits in jail."""
    L = Ledger()
    assert L.report(*conflicting_prevotes(round_=0)).rejected == ()
    slashed = L.state.operators[BAD.public_key].slashed_total
    other_slot = vote(BAD, 1, 0, PC, H1)[1], vote(BAD, 1, 0, PC, H2)[1]
    third_vote = conflicting_prevotes(round_=0)[0], vote(BAD, 1, 0, PV, NIL)[1]
    for pair in (other_slot, third_vote):
        assert rejected_code(L.report(*pair)) == TxCode.DUPLICATE_EVIDENCE
    assert L.state.operators[BAD.public_key].slashed_total == slashed
    L.state.check_conservation()
