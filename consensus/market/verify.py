"""Verifying redundant results: commit-reveal of result digests, and the verdict over them.

A job runs on k replicas (distinct operators). Each replica first commits to its result with
`result_commitment(job, node, digest, salt)`, a hash that hides the digest; only when every
replica has committed may they reveal (digest and salt), and a reveal must open the replica's
own commitment. A lazy node therefore cannot copy another's digest: by the time digests are
public its own commitment is already fixed, and a commitment made before any digest was
public can only open to a digest the node knew then.

A commitment travels with the digest's token, `result_token(job, digest)`: equal results give
equal tokens, so the ledger learns that replicas disagree while every digest is still hidden.
It then draws the tie-breaker at once, and that replica commits blind too, so the majority
it makes can slash the minority (with k = 2, a split is always 1-1). A token opens nothing:
a replica must still reveal a digest that opens its own commitment and matches its token,
and finding a digest for a copied token means computing the result.

The verdict (`verdict`) is a pure function of the revealed digests:
- every digest equal: AGREED, all replicas win;
- one digest held by a strict majority: MAJORITY, its holders win and the others are the
  minority (slashed by the ledger, with the two revealed, signed commitments as evidence any
  node can re-check);
- no strict majority (1-1 with k = 2, or a three-way split): TIE, and the ledger draws one more
  replica on yet another operator to break it.

Digests are canonical (`node.workloads.canonical`): results are quantised before hashing, so
honest CPU and GPU runs agree and a wrong result differs. Nothing here reads a clock or a
random source; the ledger calls it while applying a block.
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

DIGEST_BYTES = 32
SALT_BYTES = 32
COMMIT_DOMAIN = b"gpumesh/result-commit/v1"
TOKEN_DOMAIN = b"gpumesh/result-token/v1"


def result_commitment(job_id: bytes, node: bytes, digest: bytes, salt: bytes) -> bytes:
    """What a replica commits to. Binding the job and the node means a commitment cannot be
    replayed for another job, nor copied by another node (its reveal would not open it)."""
    if len(digest) != DIGEST_BYTES or len(salt) != SALT_BYTES:
        raise ValueError(f"digest and salt must be {DIGEST_BYTES} and {SALT_BYTES} bytes")
    return hashlib.sha256(COMMIT_DOMAIN + job_id + node + digest + salt).digest()


def result_token(job_id: bytes, digest: bytes) -> bytes:
    """Equal for equal results of one job, whoever computed them; shown with the commitment.
    Not bound to the node, so that tokens can be compared across replicas."""
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a digest must be {DIGEST_BYTES} bytes")
    return hashlib.sha256(TOKEN_DOMAIN + job_id + digest).digest()


class Outcome(enum.IntEnum):
    """Committed values: they never change meaning."""

    AGREED = 0
    MAJORITY = 1
    TIE = 2


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    digest: bytes
    """The winning digest (b"" on a tie)."""
    winners: tuple[bytes, ...]
    """Nodes whose digest won, sorted."""
    losers: tuple[bytes, ...]
    """Nodes whose digest lost, sorted (empty when AGREED or TIE)."""


def verdict(reveals: Sequence[tuple[bytes, bytes]]) -> Verdict:
    """The verdict over (node, digest) pairs: every replica of the job, each revealed."""
    if not reveals:
        raise ValueError("a verdict needs at least one revealed result")
    counts = Counter(digest for _, digest in reveals)
    # Most common first; among equal counts the smallest digest, so the order is canonical.
    digest, held = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if held == len(reveals):
        return Verdict(Outcome.AGREED, digest, tuple(sorted(n for n, _ in reveals)), ())
    if 2 * held > len(reveals):
        winners = tuple(sorted(n for n, d in reveals if d == digest))
        losers = tuple(sorted(n for n, d in reveals if d != digest))
        return Verdict(Outcome.MAJORITY, digest, winners, losers)
    return Verdict(Outcome.TIE, b"", (), ())
