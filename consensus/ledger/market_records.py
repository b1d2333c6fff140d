"""Market records of the ledger: a node's capacity offer (kind 18), a replica's result
commitment (19) and reveal (20), a node's heartbeat (21), and the rows they leave in state
(offers, replicas).

A leaf module, like `job_records`: the state, the snapshot reader and the job records need
these types; the rules live in `offers.py` (offers), `job_results.py` (commit and reveal) and
`job_flow.py` (assignment, timeouts, verdicts, settlement).

Offers are on chain, not only gossiped, because the scheduler runs inside block application:
every node must schedule from the same inputs. A node's gossiped announcement stays the fast,
rich view for dashboards; its offer is the slow, committed one that jobs are placed on.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.ledger.tx import ACCOUNT_BYTES, LedgerTx
from p2p.announcements import GpuSpec
from p2p.wire import Blob, Nested, Seq, Struct, Text, UInt, register, wire_field

JOB_ID_BYTES = 32
DIGEST_BYTES = 32
SALT_BYTES = 32
COMMITMENT_BYTES = 32
OFFER_GPU_SPECS_MAX = 16
REGION_BYTES_MAX = 32
RTTS_MAX = 32
RTT_MS_MAX = 60_000
LATE = 1
AUDIT = 2
REPLICA_FLAGS_MAX = LATE | AUDIT
RUNTIME_MS_MAX = 30 * 24 * 3600 * 1000
"""A month: no replica may claim more (the job's own hours cap bills far less)."""


@dataclass(frozen=True)
class PeerRtt(Struct):
    """A round-trip time the offering node measured (its pings) to another node."""

    node: bytes = wire_field(Blob(ACCOUNT_BYTES, ACCOUNT_BYTES))
    ms: int = wire_field(UInt(RTT_MS_MAX))


@register
@dataclass(frozen=True)
class OfferCapacity(LedgerTx):
    """The signer (a node whose key is an operator account) offers these GPUs at this price.
    A later offer replaces the earlier one; an offer with no GPUs withdraws it. Only an
    active operator (staked, not jailed) is scheduled on."""

    KIND = 18
    VERSION = 1

    gpus: tuple[GpuSpec, ...] = wire_field(Seq(Nested(GpuSpec), OFFER_GPU_SPECS_MAX))
    region: str = wire_field(Text(REGION_BYTES_MAX))
    price_per_gpu_hour: int = wire_field(UInt())
    rtt_ms: tuple[PeerRtt, ...] = wire_field(Seq(Nested(PeerRtt), RTTS_MAX), ())
    """Measured RTTs to other nodes, sorted by node, at most RTTS_MAX (the scheduler uses
    them for jobs submitted near one of those nodes)."""


@register
@dataclass(frozen=True)
class CommitResult(LedgerTx):
    """A replica's commitment to its result: `verify.result_commitment(job, node, digest,
    salt)`, and the digest's token `verify.result_token(job, digest)` (replicas that disagree
    are found before any digest is public). Accepted only from a replica of the job while the
    job collects commitments."""

    KIND = 19
    VERSION = 2

    job_id: bytes = wire_field(Blob(JOB_ID_BYTES, JOB_ID_BYTES))
    commitment: bytes = wire_field(Blob(COMMITMENT_BYTES, COMMITMENT_BYTES))
    token: bytes = wire_field(Blob(DIGEST_BYTES, DIGEST_BYTES))


@register
@dataclass(frozen=True)
class RevealResult(LedgerTx):
    """Open the commitment: the result's canonical digest (it must match the committed
    token), the salt, and the measured runtime (billing uses the winners' median runtime,
    `job_results.billed_ms`, so one replica inflating its own moves the bill no further than
    the median). Accepted only once every replica has committed."""

    KIND = 20
    VERSION = 1

    job_id: bytes = wire_field(Blob(JOB_ID_BYTES, JOB_ID_BYTES))
    digest: bytes = wire_field(Blob(DIGEST_BYTES, DIGEST_BYTES))
    salt: bytes = wire_field(Blob(SALT_BYTES, SALT_BYTES))
    runtime_ms: int = wire_field(UInt(RUNTIME_MS_MAX))


@register
@dataclass(frozen=True)
class Heartbeat(LedgerTx):
    """A node with an offer says it is alive. Every `heartbeat_blocks` blocks; a node silent
    for more than `down_after_blocks` is down (liveness.py)."""

    KIND = 21
    VERSION = 1


@register
@dataclass(frozen=True)
class FlagNode(LedgerTx):
    """An operator's anomaly detector found `node`'s runtimes out of line with its GPU class
    (node/anomaly.py); `job_id` is a settled job in which `node` revealed, as the pointer to
    the evidence. Every job `node` takes part in is audited for `watch_epochs` epochs."""

    KIND = 22
    VERSION = 1

    node: bytes = wire_field(Blob(ACCOUNT_BYTES, ACCOUNT_BYTES))
    job_id: bytes = wire_field(Blob(JOB_ID_BYTES, JOB_ID_BYTES))


@dataclass(frozen=True)
class Offer(Struct):
    """A node's committed offer (the row of `LedgerState.offers`, keyed by node)."""

    gpus: tuple[GpuSpec, ...] = wire_field(Seq(Nested(GpuSpec), OFFER_GPU_SPECS_MAX))
    region: str = wire_field(Text(REGION_BYTES_MAX))
    price_per_gpu_hour: int = wire_field(UInt())
    height: int = wire_field(UInt())
    """When it was last offered."""
    rtt_ms: tuple[PeerRtt, ...] = wire_field(Seq(Nested(PeerRtt), RTTS_MAX), ())

    @property
    def gpu_total(self) -> int:
        return sum(g.count for g in self.gpus)


@dataclass(frozen=True)
class Replica(Struct):
    """One replica of a job on one node: where it runs, at what price, and how far its
    commit-reveal has come. Frozen; a change replaces it in the job's record."""

    node: bytes = wire_field(Blob(ACCOUNT_BYTES, ACCOUNT_BYTES))
    price_per_gpu_hour: int = wire_field(UInt())
    """The node's offered price when it was assigned: what it bills, whatever it offers later."""
    assigned_height: int = wire_field(UInt())
    commitment: bytes = wire_field(Blob(COMMITMENT_BYTES), b"")
    """b"" until committed."""
    token: bytes = wire_field(Blob(DIGEST_BYTES), b"")
    """The token committed with it (b"" until committed)."""
    digest: bytes = wire_field(Blob(DIGEST_BYTES), b"")
    """b"" until revealed."""
    runtime_ms: int = wire_field(UInt(RUNTIME_MS_MAX), 0)
    flags: int = wire_field(UInt(REPLICA_FLAGS_MAX), 0)
    """LATE: assigned after a digest of the job was public, so it could have copied one (its
    vote never slashes anyone); AUDIT: the protocol's spot-check replica (paid by it)."""

    @property
    def late(self) -> bool:
        return bool(self.flags & LATE)

    @property
    def audit(self) -> bool:
        return bool(self.flags & AUDIT)

    @property
    def committed(self) -> bool:
        return bool(self.commitment)

    @property
    def revealed(self) -> bool:
        return bool(self.digest)
