"""Votes, proposals, blocks, certificates and consensus frames: signing round trips, record
invariants (locally InvalidRecord, from the wire DecodeError), certificate construction and
checking, and hostile bytes that may only ever raise DecodeError (or its BadSignature)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.bft.block import GENESIS_HASH, Block, block_hash_of, decode_block
from consensus.bft.messages import (
    FRAME_NAMES,
    TAG_BLOCKS,
    TAG_PROPOSAL,
    TAG_RELAY,
    TAG_TXS,
    TAG_VOTE,
    BlockBatch,
    CommittedBlock,
    Relay,
    SyncRequest,
    TxBatch,
    decode_frame,
    encode_frame,
    encode_proposal_frame,
    frame_tag,
    split_proposal_payload,
)
from consensus.bft.votes import (
    NIL,
    PROPOSAL_SLOT,
    CommitCertificate,
    Proposal,
    Vote,
    VoteKind,
    decode_certificate,
    decode_statement,
    sign_vote,
)
from p2p import codec
from p2p.errors import BadSignature, DecodeError, InvalidRecord
from p2p.wire import ENVELOPE_FORMAT, sign
from tests.consensus.conftest import CHAIN_ID, certify, members, proposal, vote
from tests.strategies import mutated

M = members(4)
H1 = bytes(range(32))
H2 = bytes(range(1, 33))
BLOCK = Block(3, H1, H2, 1_234, M[0].public_key, (b"tx-one", b"tx-two"))


def raw_envelope(kind: int, body: list, signer=M[0], chain_id: bytes = CHAIN_ID) -> bytes:
    """An envelope around an arbitrary body, properly signed (so only the body is wrong)."""
    from p2p.wire import signing_bytes

    version = 1
    sig = signer.sign(signing_bytes(kind, version, chain_id, signer.public_key, body))
    return codec.pack([ENVELOPE_FORMAT, kind, version, chain_id, signer.public_key, body, sig])


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [VoteKind.PREVOTE, VoteKind.PRECOMMIT])
@pytest.mark.parametrize("block_hash", [NIL, H1])
def test_vote_round_trips_through_sign_and_decode(kind: int, block_hash: bytes) -> None:
    v = Vote(7, 3, kind, block_hash)
    s = sign_vote(v, M[1], CHAIN_ID)
    back = decode_statement(s.encode(), CHAIN_ID)
    assert back.record == v
    assert back.signer == M[1].public_key
    assert back.signature == s.signature
    assert back.encode() == s.encode()
    assert v.slot == (7, 3, kind)


@pytest.mark.parametrize("pol_round", [-1, 0, 4])
def test_proposal_round_trips_and_exposes_pol_round(pol_round: int) -> None:
    s, env = proposal(M[2], 9, 5, H2, pol_round)
    back = decode_statement(env, CHAIN_ID)
    assert isinstance(back.record, Proposal)
    assert back.record == s.record
    assert back.record.pol_round == pol_round
    assert back.record.slot == (9, 5, PROPOSAL_SLOT)
    assert back.signer == M[2].public_key


def test_statement_for_another_chain_is_refused() -> None:
    _, env = vote(M[0], 1, 0, VoteKind.PREVOTE, H1, chain_id=b"other-chain")
    with pytest.raises(DecodeError):
        decode_statement(env, CHAIN_ID)


def test_statement_with_a_tampered_signature_is_bad_signature() -> None:
    _, env = vote(M[0], 1, 0, VoteKind.PREVOTE, H1)
    tampered = env[:-1] + bytes([env[-1] ^ 1])
    with pytest.raises(BadSignature):
        decode_statement(tampered, CHAIN_ID)


def test_a_signed_record_that_is_not_a_statement_is_refused() -> None:
    from consensus.ledger.tx import Transfer

    env = sign(Transfer(nonce=0, fee=1, to=H1, amount=1), M[0], CHAIN_ID).encode()
    with pytest.raises(DecodeError, match="vote or a proposal"):
        decode_statement(env, CHAIN_ID)


def test_block_round_trips_and_its_hash_covers_every_field() -> None:
    data = BLOCK.encode()
    assert decode_block(data) == BLOCK
    assert BLOCK.block_hash() == block_hash_of(data)
    variants = [
        dataclasses.replace(BLOCK, height=4),
        dataclasses.replace(BLOCK, parent_hash=H2),
        dataclasses.replace(BLOCK, parent_state_root=H1),
        dataclasses.replace(BLOCK, time_ms=1_235),
        dataclasses.replace(BLOCK, proposer=M[1].public_key),
        dataclasses.replace(BLOCK, txs=(b"tx-two", b"tx-one")),
        dataclasses.replace(BLOCK, txs=()),
    ]
    hashes = {v.block_hash() for v in variants} | {BLOCK.block_hash()}
    assert len(hashes) == len(variants) + 1
    assert bytes(32) == GENESIS_HASH


def test_frames_round_trip() -> None:
    _, env = vote(M[0], 2, 1, VoteKind.PRECOMMIT, H1)
    assert decode_frame(encode_frame(TAG_VOTE, env)) == (TAG_VOTE, env)
    tag, payload = decode_frame(encode_proposal_frame(env, BLOCK.encode()))
    assert tag == TAG_PROPOSAL
    assert split_proposal_payload(payload) == (env, BLOCK.encode(), ())
    pol = (vote(M[1], 2, 0, VoteKind.PREVOTE, H1)[1], vote(M[2], 2, 0, VoteKind.PREVOTE, H1)[1])
    tag, payload = decode_frame(encode_proposal_frame(env, BLOCK.encode(), pol))
    assert split_proposal_payload(payload) == (env, BLOCK.encode(), pol)
    batch = BlockBatch((CommittedBlock(BLOCK.encode(), b"cert"),), 12)
    assert BlockBatch.decode(batch.encode()) == batch
    assert Relay.decode(Relay((env, env)).encode()).statements == (env, env)
    assert TxBatch.decode(TxBatch((b"a", b"b")).encode()).txs == (b"a", b"b")


# -- invariants -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Vote(1, 0, 0, NIL),  # kind 0 is the proposal slot, not a vote
        lambda: Vote(1, 0, 3, NIL),  # beyond the wire range of kind
        lambda: Vote(0, 0, VoteKind.PREVOTE, NIL),  # height 0
        lambda: Vote(1, 0, VoteKind.PREVOTE, b"short"),  # neither nil nor 32 bytes
        lambda: Proposal(0, 0, 0, H1),  # height 0
        lambda: Proposal(1, 2, 3, H1),  # pol round 2 == round 2
        lambda: Proposal(1, 2, 4, H1),  # pol round 3 > round 2
        lambda: Proposal(1, 0, 1, H1),  # pol round 0 == round 0
        lambda: Proposal(1, 0, 0, NIL),  # a proposal names a real block
        lambda: Block(0, H1, H2, 0, M[0].public_key, ()),
        lambda: SyncRequest(0, 5),
        lambda: SyncRequest(6, 5),
        lambda: CommitCertificate(1, 0, H1, (M[0].public_key,), ()),
    ],
)
def test_invalid_records_raise_invalid_record_locally(make) -> None:
    with pytest.raises(InvalidRecord):
        make()


def test_certificate_signers_must_be_sorted_and_distinct() -> None:
    keys = sorted([M[0].public_key, M[1].public_key])
    sigs = (bytes(64), bytes(64))
    CommitCertificate(1, 0, H1, tuple(keys), sigs)  # sorted: fine
    with pytest.raises(InvalidRecord):
        CommitCertificate(1, 0, H1, tuple(reversed(keys)), sigs)
    with pytest.raises(InvalidRecord):
        CommitCertificate(1, 0, H1, (keys[0], keys[0]), sigs)


@pytest.mark.parametrize(
    "kind, body",
    [
        (Vote.KIND, [1, 0, 0, b""]),  # vote kind 0
        (Vote.KIND, [1, 0, 3, b""]),  # vote kind 3
        (Vote.KIND, [0, 0, 1, b""]),  # height 0
        (Vote.KIND, [1, 0, 1, b"x" * 5]),  # hash neither nil nor 32 bytes
        (Vote.KIND, [1, 2**31, 1, b""]),  # round beyond ROUND_MAX
        (Proposal.KIND, [1, 2, 3, H1]),  # pol round == round
        (Proposal.KIND, [1, 2, 9, H1]),  # pol round > round
        (Proposal.KIND, [0, 0, 0, H1]),  # height 0
        (Proposal.KIND, [1, 0, 0, b""]),  # nil block
    ],
)
def test_invalid_statements_from_the_wire_raise_decode_error(kind: int, body: list) -> None:
    env = raw_envelope(kind, body)
    with pytest.raises(DecodeError) as info:
        decode_statement(env, CHAIN_ID)
    assert not isinstance(info.value, BadSignature)  # refused for its content, not its signature


def test_invalid_block_and_certificate_from_the_wire_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_block(codec.pack([0, H1, H2, 0, M[0].public_key, []]))
    unsorted = sorted([M[0].public_key, M[1].public_key], reverse=True)
    with pytest.raises(DecodeError):
        decode_certificate(codec.pack([1, 0, H1, unsorted, [bytes(64), bytes(64)]]))
    with pytest.raises(DecodeError):
        decode_certificate(codec.pack([1, 0, H1, [M[0].public_key], []]))
    with pytest.raises(DecodeError):
        SyncRequest.decode(codec.pack([3, 2]))


@pytest.mark.parametrize(
    "frame",
    [
        codec.pack([9, b"x"]),  # unknown tag
        codec.pack([TAG_VOTE, 5]),  # payload not bytes
        codec.pack([TAG_VOTE]),  # one item
        codec.pack([TAG_VOTE, b"x", b"y"]),  # three items
        codec.pack(b"not a list"),
    ],
)
def test_bad_frames_raise_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_frame(frame)


def test_bad_proposal_payloads_raise_decode_error() -> None:
    for payload in (
        codec.pack([b"a"]),
        codec.pack([b"a", 1]),
        codec.pack(7),
        codec.pack([b"a", b"b", 5]),  # the proof-of-lock votes are not an array
        codec.pack([b"a", b"b", [5]]),  # nor votes
        codec.pack([b"a", b"b", [], b"c"]),
    ):
        with pytest.raises(DecodeError):
            split_proposal_payload(payload)


# -- certificates -----------------------------------------------------------------------------


def precommits(signers, height=4, round_=1, block_hash=H1, chain_id=CHAIN_ID):
    return [
        sign_vote(Vote(height, round_, VoteKind.PRECOMMIT, block_hash), s, chain_id)
        for s in signers
    ]


def test_from_votes_sorts_signers_and_keeps_each_signature_with_its_signer() -> None:
    votes = precommits([M[3], M[0], M[2], M[1]])
    cert = CommitCertificate.from_votes(votes)
    assert list(cert.signers) == sorted(m.public_key for m in M)
    by_signer = {v.signer: v.signature for v in votes}
    assert cert.signatures == tuple(by_signer[s] for s in cert.signers)
    assert (cert.height, cert.round, cert.block_hash) == (4, 1, H1)
    assert cert.vote() == Vote(4, 1, VoteKind.PRECOMMIT, H1)
    assert sorted(cert.valid_signers(CHAIN_ID)) == sorted(m.public_key for m in M)
    back = decode_certificate(cert.encode())
    assert back == cert
    assert back.digest() == cert.digest()


def test_from_votes_collapses_a_repeated_voter() -> None:
    votes = precommits([M[0], M[1], M[0]])
    cert = CommitCertificate.from_votes(votes)
    assert len(cert.signers) == 2


def test_from_votes_refuses_mixed_or_no_votes() -> None:
    with pytest.raises(ValueError):
        CommitCertificate.from_votes([])
    mixed = precommits([M[0]]) + precommits([M[1]], block_hash=H2)
    with pytest.raises(ValueError):
        CommitCertificate.from_votes(mixed)
    other_round = precommits([M[0]]) + precommits([M[1]], round_=2)
    with pytest.raises(ValueError):
        CommitCertificate.from_votes(other_round)


def test_valid_signers_drops_a_tampered_signature() -> None:
    cert = CommitCertificate.from_votes(precommits(M))
    sigs = list(cert.signatures)
    sigs[2] = sigs[2][:10] + bytes([sigs[2][10] ^ 0x40]) + sigs[2][11:]
    bad = dataclasses.replace(cert, signatures=tuple(sigs))
    valid = bad.valid_signers(CHAIN_ID)
    assert len(valid) == 3
    assert cert.signers[2] not in valid


def test_valid_signers_drops_signatures_moved_to_another_signer() -> None:
    cert = CommitCertificate.from_votes(precommits(M))
    swapped = (cert.signatures[1], cert.signatures[0], *cert.signatures[2:])
    bad = dataclasses.replace(cert, signatures=swapped)
    assert set(bad.valid_signers(CHAIN_ID)) == set(cert.signers[2:])


def test_valid_signers_refuses_signatures_for_another_chain() -> None:
    cert = CommitCertificate.from_votes(precommits(M, chain_id=b"another-chain"))
    assert cert.valid_signers(CHAIN_ID) == []
    assert len(cert.valid_signers(b"another-chain")) == 4


def test_valid_signers_refuses_a_prevote_quorum_passed_off_as_precommits() -> None:
    prevotes = [sign_vote(Vote(4, 1, VoteKind.PREVOTE, H1), s, CHAIN_ID) for s in M]
    keys = sorted(range(4), key=lambda i: prevotes[i].signer)
    cert = CommitCertificate(
        4,
        1,
        H1,
        tuple(prevotes[i].signer for i in keys),
        tuple(prevotes[i].signature for i in keys),
    )
    assert cert.valid_signers(CHAIN_ID) == []


def test_valid_signers_is_bound_to_height_round_and_hash() -> None:
    cert = CommitCertificate.from_votes(precommits(M))
    for field_, value in (("height", 5), ("round", 2), ("block_hash", H2)):
        moved = dataclasses.replace(cert, **{field_: value})
        assert moved.valid_signers(CHAIN_ID) == [], field_


def test_certify_helper_matches_from_votes() -> None:
    cert = certify(BLOCK, M, round_=2)
    assert cert.block_hash == BLOCK.block_hash()
    assert len(cert.valid_signers(CHAIN_ID)) == 4


# -- hostile bytes ----------------------------------------------------------------------------

GOOD_VOTE = vote(M[0], 3, 1, VoteKind.PREVOTE, H1)[1]
GOOD_PROPOSAL = proposal(M[1], 3, 2, H2, 0)[1]
GOOD_CERT = certify(BLOCK, M).encode()
GOOD_BLOCK = BLOCK.encode()
GOOD_BATCH = BlockBatch((CommittedBlock(GOOD_BLOCK, GOOD_CERT),), 3).encode()
GOOD_FRAMES = [
    encode_frame(TAG_VOTE, GOOD_VOTE),
    encode_proposal_frame(GOOD_PROPOSAL, GOOD_BLOCK),
    encode_proposal_frame(GOOD_PROPOSAL, GOOD_BLOCK, (GOOD_VOTE, GOOD_VOTE)),
    encode_frame(TAG_BLOCKS, GOOD_BATCH),
    encode_frame(TAG_RELAY, Relay((GOOD_VOTE, GOOD_PROPOSAL)).encode()),
    encode_frame(TAG_TXS, TxBatch((b"a",)).encode()),
]


def _decoders():
    return [
        ("statement", lambda b: decode_statement(b, CHAIN_ID)),
        ("block", decode_block),
        ("certificate", decode_certificate),
        ("frame", decode_frame),
        ("batch", lambda b: BlockBatch.decode(b, max_bytes=len(b) + 1)),
        ("proposal payload", split_proposal_payload),
        ("relay", Relay.decode),
        ("txbatch", TxBatch.decode),
    ]


def _only_decode_errors(data: bytes) -> None:
    for name, decode in _decoders():
        try:
            decode(data)
        except DecodeError:  # BadSignature is one
            pass
        except Exception as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    _only_decode_errors(data)


GOOD_INPUTS = [GOOD_VOTE, GOOD_PROPOSAL, GOOD_CERT, GOOD_BLOCK, GOOD_BATCH, *GOOD_FRAMES]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(GOOD_INPUTS).flatmap(mutated))
def test_mutated_valid_bytes_raise_only_decode_errors(data: bytes) -> None:
    _only_decode_errors(data)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.sampled_from([GOOD_VOTE, GOOD_PROPOSAL]).flatmap(mutated))
def test_a_mutated_statement_never_verifies(data: bytes) -> None:
    """Every byte of an envelope is either signed or canonical framing, so no change to a
    signed statement leaves something that still decodes and verifies."""
    with pytest.raises(DecodeError):
        decode_statement(data, CHAIN_ID)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    height=st.integers(1, 2**64 - 1),
    round_=st.integers(0, 2**31 - 1),
    kind=st.sampled_from([VoteKind.PREVOTE, VoteKind.PRECOMMIT]),
    nil=st.booleans(),
    block_hash=st.binary(min_size=32, max_size=32),
)
def test_any_valid_vote_round_trips(height, round_, kind, nil, block_hash) -> None:
    v = Vote(height, round_, kind, NIL if nil else block_hash)
    env = sign_vote(v, M[3], CHAIN_ID).encode()
    assert decode_statement(env, CHAIN_ID).record == v


def test_a_frames_tag_reads_from_its_head_without_unpacking() -> None:
    for tag in FRAME_NAMES:
        for payload in (b"", b"x", bytes(70_000)):
            assert frame_tag(encode_frame(tag, payload)) == tag
    assert frame_tag(b"") == -1 and frame_tag(b"\x92") == -1
    assert frame_tag(encode_frame(300, b"x")) == -1  # not a positive fixint: not ours
