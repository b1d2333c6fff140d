"""The committed chain: `check_commit` accepts exactly the commits that extend the head with a
quorum certificate of the committee in state, the committee turns over only at epoch
boundaries, and snapshots resume where they were taken."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.bft.block import GENESIS_HASH, Block
from consensus.bft.votes import CommitCertificate, Vote, VoteKind
from consensus.chain import Chain, InvalidBlock
from consensus.ledger.tx import Delegate
from p2p import codec
from p2p.errors import DecodeError
from p2p.identity import Identity
from p2p.wire import sign
from tests.consensus.conftest import (
    CHAIN_ID,
    Net,
    certify,
    extend,
    make_genesis,
    make_params,
    members,
    next_block,
    signed_tx,
    transfer,
    users,
)

OPS = members(4, "chain")
U = users(3)
KEYS = {o.public_key: o for o in OPS}


@pytest.fixture(scope="module")
def engine_commits():
    """Three blocks committed by four engines, as (block bytes, cert bytes)."""
    g = make_genesis(OPS, U)
    net = Net(g, OPS)
    for n in range(3):
        net.submit(OPS[n].public_key, transfer(U[0], n, OPS[1].public_key, amount=5))
        net.run_until(net.all_at_least(n + 1))
    net.assert_same_head()
    node = net.nodes[OPS[0].public_key]
    return g, [(c.block, c.cert) for c in node.commits[:3]], node.chain.head_root


def fresh(g) -> Chain:
    return Chain.from_genesis(g)


def test_genesis_chain() -> None:
    g = make_genesis(OPS, U)
    c = fresh(g)
    assert c.height == 0 and c.head_hash == GENESIS_HASH and c.head_time_ms == 0
    assert c.head_root == g.initial_state().state_root()
    assert set(c.committee.members) == set(KEYS)
    assert c.chain_id == CHAIN_ID


def test_check_commit_accepts_engine_commits_and_replays_to_the_same_root(engine_commits) -> None:
    g, commits, root = engine_commits
    c = fresh(g)
    for block, cert in commits:
        v = c.check_commit(block, cert)
        assert v.block.height == c.height + 1
        c.apply(v)
    assert c.height == 3 and c.head_root == root


def test_check_commit_refuses_the_wrong_height(engine_commits) -> None:
    g, commits, _ = engine_commits
    with pytest.raises(InvalidBlock, match="height 2, expected 1"):
        fresh(g).check_commit(*commits[1])
    c = fresh(g)
    c.apply(c.check_commit(*commits[0]))
    with pytest.raises(InvalidBlock, match="height 1, expected 2"):
        c.check_commit(*commits[0])  # already applied


def test_check_commit_refuses_garbage(engine_commits) -> None:
    g, commits, _ = engine_commits
    c = fresh(g)
    with pytest.raises(InvalidBlock, match="undecodable"):
        c.check_commit(b"\x00", commits[0][1])
    with pytest.raises(InvalidBlock, match="undecodable"):
        c.check_commit(commits[0][0], b"\x93")


def test_check_block_refuses_each_field(engine_commits) -> None:
    g, _, _ = engine_commits
    c = fresh(g)
    extend(c, KEYS)
    good = next_block(c)
    assert c.check_block(good) is None
    cases = {
        "height": dataclasses.replace(good, height=3),
        "parent hash": dataclasses.replace(good, parent_hash=bytes(32)),
        "parent state root": dataclasses.replace(good, parent_state_root=bytes(32)),
        "not after the parent": dataclasses.replace(good, time_ms=c.head_time_ms),
        "not a committee member": dataclasses.replace(good, proposer=U[0].public_key),
    }
    for reason, block in cases.items():
        problem = c.check_block(block)
        assert problem is not None and reason in problem, (reason, problem)


def _signed_commit(c: Chain, block: Block, signers=None) -> tuple[bytes, bytes]:
    signers = signers if signers is not None else [KEYS[m] for m in c.committee.members]
    return block.encode(), certify(block, signers).encode()


def test_check_commit_refuses_the_wrong_parent() -> None:
    g = make_genesis(OPS, U)
    c = fresh(g)
    extend(c, KEYS)
    block = dataclasses.replace(next_block(c), parent_hash=b"\x01" * 32)
    with pytest.raises(InvalidBlock, match="parent hash"):
        c.check_commit(*_signed_commit(c, block))


def test_check_commit_refuses_the_wrong_parent_state_root() -> None:
    g = make_genesis(OPS, U)
    c = fresh(g)
    block = dataclasses.replace(next_block(c), parent_state_root=b"\x02" * 32)
    with pytest.raises(InvalidBlock, match="state root"):
        c.check_commit(*_signed_commit(c, block))


def test_check_commit_refuses_a_certificate_for_another_block(engine_commits) -> None:
    g, commits, _ = engine_commits
    c = fresh(g)
    block, cert = commits[0]
    other = next_block(c, (transfer(U[1], 0, U[2].public_key),))
    other_cert = certify(other, OPS).encode()
    with pytest.raises(InvalidBlock, match="another block"):
        c.check_commit(block, other_cert)
    # a certificate whose hash was edited to fit no longer verifies
    decoded = CommitCertificate.decode(other_cert)
    moved = dataclasses.replace(decoded, block_hash=Block.decode(block).block_hash())
    with pytest.raises(InvalidBlock, match="below the quorum"):
        c.check_commit(block, moved.encode())
    # and a certificate for the right hash at another height is refused too
    wrong_height = dataclasses.replace(CommitCertificate.decode(cert), height=2)
    with pytest.raises(InvalidBlock, match="another block"):
        c.check_commit(block, wrong_height.encode())


def test_check_commit_needs_a_quorum_of_committee_signatures() -> None:
    g = make_genesis(OPS, U)
    c = fresh(g)
    block = next_block(c)
    members_ = [KEYS[m] for m in c.committee.members]
    assert c.committee.quorum_weight == 4 * 1_000_000 * 2 // 3 + 1  # three of four
    c.check_commit(*_signed_commit(c, block, members_[:3]))  # exactly a quorum: fine
    with pytest.raises(InvalidBlock, match="below the quorum"):
        c.check_commit(*_signed_commit(c, block, members_[:2]))
    outsiders = members(3, "not-on-the-committee")
    with pytest.raises(InvalidBlock, match="below the quorum"):
        c.check_commit(*_signed_commit(c, block, members_[:2] + outsiders))


def test_check_commit_refuses_signers_dropped_from_an_engine_certificate(engine_commits) -> None:
    g, commits, _ = engine_commits
    c = fresh(g)
    block, cert_bytes = commits[0]
    cert = CommitCertificate.decode(cert_bytes)
    assert len(cert.signers) >= 3
    thin = dataclasses.replace(cert, signers=cert.signers[:2], signatures=cert.signatures[:2])
    with pytest.raises(InvalidBlock, match="below the quorum"):
        c.check_commit(block, thin.encode())


def test_check_commit_refuses_a_forged_signature() -> None:
    g = make_genesis(OPS, U)
    c = fresh(g)
    block = next_block(c)
    members_ = [KEYS[m] for m in c.committee.members]
    cert = certify(block, members_[:3])
    # the third signature is replaced by one of the right bytes made with another key
    impostor = Identity.derive("impostor")
    fake = sign(Vote(1, 0, VoteKind.PRECOMMIT, block.block_hash()), impostor, CHAIN_ID).signature
    forged = dataclasses.replace(cert, signatures=(*cert.signatures[:2], fake))
    with pytest.raises(InvalidBlock, match="below the quorum"):
        c.check_commit(block.encode(), forged.encode())
    # a signature for another chain id does not count either
    other = certify(block, members_[:3], chain_id=b"another-chain")
    with pytest.raises(InvalidBlock, match="below the quorum"):
        c.check_commit(block.encode(), other.encode())


def test_apply_refuses_a_commit_that_does_not_extend_the_head() -> None:
    g = make_genesis(OPS, U)
    c = fresh(g)
    v = c.check_commit(*_signed_commit(c, next_block(c)))
    c.apply(v)
    with pytest.raises(InvalidBlock):
        c.apply(v)


def test_a_block_with_refused_transactions_still_applies() -> None:
    g = make_genesis(OPS, U)
    c = fresh(g)
    bad = transfer(U[0], 5, U[1].public_key)  # nonce 5 while 0 is next
    good = transfer(U[0], 0, U[1].public_key, amount=3)
    v = c.check_commit(*_signed_commit(c, next_block(c, (bad, good))))
    outcome = c.apply(v)
    assert len(outcome.receipts) == 1 and len(outcome.rejected) == 1
    assert c.state.nonce(U[0].public_key) == 1


# -- committees and epochs ----------------------------------------------------------------------


SIX = members(6, "epoch")
SIX_KEYS = {o.public_key: o for o in SIX}


def six_operator_chain(epoch_blocks: int = 3) -> Chain:
    params = make_params(committee_size=4, epoch_blocks=epoch_blocks)
    stakes = [1_000_000, 2_000_000, 3_000_000, 1_500_000, 2_500_000, 1_200_000]
    return fresh(make_genesis(SIX, U, params=params, stakes=stakes))


def test_committee_turns_over_only_at_epoch_boundaries() -> None:
    E = 3
    c = six_operator_chain(E)
    assert c.committee == c.state.next_committee()
    seen = {c.committee.members}
    for h in range(1, 5 * E + 1):
        before = c.committee
        extend(c, SIX_KEYS)
        if h % E == 0:
            assert c.committee == c.state.next_committee(), h
            assert c.state.epoch == h // E
        else:
            assert c.committee is before, h
        seen.add(c.committee.members)
    assert len(seen) >= 2, "five epochs and the committee never changed: not a turnover test"
    assert all(len(m) == 4 for m in seen)


def test_stake_changes_within_an_epoch_wait_for_its_end() -> None:
    E = 3
    c = six_operator_chain(E)
    before = c.committee
    target = next(o for o in SIX if o.public_key in before)
    big = signed_tx(Delegate(nonce=0, fee=1, operator=target.public_key, amount=10**11), U[0])
    extend(c, SIX_KEYS, (big,))
    assert c.state.operators[target.public_key].pool > 10**11
    assert c.committee is before  # stakes moved, the committee did not
    extend(c, SIX_KEYS)
    extend(c, SIX_KEYS)  # closes the epoch
    assert c.committee == c.state.next_committee()
    assert c.committee.weight_of_member(target.public_key) > 10**11


def test_a_certificate_from_the_old_committee_is_refused_after_turnover() -> None:
    E = 2
    c = six_operator_chain(E)
    changed = None
    for _ in range(6 * E):
        old = c.committee
        extend(c, SIX_KEYS)
        if set(c.committee.members) != set(old.members):
            changed = old
            break
    assert changed is not None
    leavers = [SIX_KEYS[m] for m in changed.members if m not in c.committee]
    stayers = [SIX_KEYS[m] for m in changed.members if m in c.committee]
    block = next_block(c)
    with pytest.raises(InvalidBlock, match="below the quorum"):
        c.check_commit(block.encode(), certify(block, leavers + stayers[:1]).encode())


# -- snapshots ----------------------------------------------------------------------------------


def test_snapshot_round_trips() -> None:
    c = six_operator_chain(3)
    for i in range(4):
        extend(c, SIX_KEYS, (transfer(U[0], i, U[1].public_key, amount=7),))
    back = Chain.from_snapshot(c.snapshot())
    assert back.head_root == c.head_root
    assert back.head_hash == c.head_hash
    assert back.head_time_ms == c.head_time_ms
    assert back.height == c.height == 4
    assert back.committee == c.committee
    assert back.committee.members == c.committee.members  # draw order matters (leaders)
    assert back.snapshot() == c.snapshot()
    # and it carries on exactly like the original
    block = next_block(c, (transfer(U[0], 4, U[2].public_key),))
    cert = certify(block, [SIX_KEYS[m] for m in c.committee.members]).encode()
    c.apply(c.check_commit(block.encode(), cert))
    back.apply(back.check_commit(block.encode(), cert))
    assert back.head_root == c.head_root


def test_snapshot_keeps_a_committee_that_differs_from_the_draw() -> None:
    """The committee is held, not recomputed: after an in-epoch stake change the snapshot must
    restore the sitting committee, not what state.next_committee() would draw now."""
    c = six_operator_chain(5)
    outsider = next(o for o in SIX if o.public_key not in c.committee)
    big = signed_tx(Delegate(nonce=0, fee=1, operator=outsider.public_key, amount=10**11), U[0])
    extend(c, SIX_KEYS, (big,))
    back = Chain.from_snapshot(c.snapshot())
    assert back.committee == c.committee
    assert outsider.public_key not in back.committee


@pytest.mark.parametrize(
    "data",
    [
        codec.pack([2, b"", b"", 0, [], []]),
        codec.pack([1, b"x"]),
        codec.pack([1, 5, b"", 0, [], []]),
        codec.pack(b"nope"),
    ],
)
def test_from_snapshot_refuses_malformed_input(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Chain.from_snapshot(data)


def test_from_snapshot_refuses_a_bad_committee() -> None:
    c = fresh(make_genesis(OPS, U))
    raw = codec.unpack(c.snapshot(), max_bytes=10**8, max_depth=3)
    raw[5] = raw[5][:-1]  # one weight short
    with pytest.raises(DecodeError):
        Chain.from_snapshot(codec.pack(raw))


def test_from_snapshot_refuses_junk_in_the_committee() -> None:
    c = fresh(make_genesis(OPS, U))
    raw = codec.unpack(c.snapshot(), max_bytes=10**8, max_depth=3)
    raw[4] = [*raw[4], 7]  # a member that is not a key
    raw[5] = [*raw[5], b"w"]  # and a weight that is not a number
    with pytest.raises(DecodeError):
        Chain.from_snapshot(codec.pack(raw))
