"""The verdict over revealed digests and the result commitment."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.ledger.errors import GenesisError
from consensus.ledger.genesis import load_genesis_toml
from consensus.market.verify import Outcome, result_commitment, verdict

A, B, C, D = (bytes([n]) * 32 for n in range(1, 5))
X, Y, Z = (hashlib.sha256(s).digest() for s in (b"x", b"y", b"z"))
JOB = bytes(32)
SALT = bytes(range(32))


def test_agreement_majority_and_tie() -> None:
    agreed = verdict([(B, X), (A, X)])
    assert (agreed.outcome, agreed.digest, agreed.winners, agreed.losers) == (
        Outcome.AGREED, X, (A, B), ()
    )  # fmt: skip
    majority = verdict([(C, Y), (A, X), (B, X)])
    assert (majority.outcome, majority.digest) == (Outcome.MAJORITY, X)
    assert (majority.winners, majority.losers) == ((A, B), (C,))
    assert verdict([(A, X), (B, Y)]).outcome == Outcome.TIE
    assert verdict([(A, X), (B, X), (C, Y), (D, Y)]).outcome == Outcome.TIE  # 2 of 4 is no majority
    assert verdict([(A, X), (B, Y), (C, Z)]).outcome == Outcome.TIE
    with pytest.raises(ValueError):
        verdict([])


@given(st.lists(st.sampled_from([X, Y, Z]), min_size=1, max_size=7))
def test_the_verdict_does_not_depend_on_order_and_winners_hold_a_strict_majority(
    digests: list[bytes],
) -> None:
    reveals = [(bytes([i + 1]) * 32, d) for i, d in enumerate(digests)]
    found = verdict(reveals)
    assert verdict(list(reversed(reveals))) == found
    if found.outcome != Outcome.TIE:
        assert 2 * len(found.winners) > len(reveals)
        assert len(found.winners) + len(found.losers) == len(reveals)


def test_a_commitment_binds_job_node_digest_and_salt() -> None:
    base = result_commitment(JOB, A, X, SALT)
    assert base == result_commitment(JOB, A, X, SALT)
    assert base != result_commitment(JOB, B, X, SALT)  # another node cannot reuse it
    assert base != result_commitment(b"\x01" * 32, A, X, SALT)  # nor another job
    assert base != result_commitment(JOB, A, Y, SALT)
    assert base != result_commitment(JOB, A, X, bytes(32))
    with pytest.raises(ValueError):
        result_commitment(JOB, A, b"short", SALT)


GENESIS = """
chain_id = "market-params"
[params.market]
commit_window_blocks = 7
job_fee_bps = 250
[allocations]
"{acct}" = 5
[[operators]]
account = "{acct}"
self_stake = 1000
commission_bps = 0
"""


def test_genesis_reads_market_params_and_names_a_bad_one() -> None:
    genesis = load_genesis_toml(GENESIS.format(acct="ab" * 32))
    assert genesis.params.market.commit_window_blocks == 7
    assert genesis.params.market.job_fee_bps == 250
    assert genesis.params.market.reveal_window_blocks == 15
    with pytest.raises(GenesisError) as bad:
        load_genesis_toml(GENESIS.format(acct="ab" * 32).replace("= 7", "= 0"))
    assert bad.value.field == "params.market.commit_window_blocks"
    with pytest.raises(GenesisError) as typo:
        load_genesis_toml(GENESIS.format(acct="ab" * 32).replace("job_fee_bps", "job_fees_bps"))
    assert "job_fee_bps" in str(typo.value)
