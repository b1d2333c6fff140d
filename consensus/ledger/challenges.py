"""Challenge jobs: the protocol probes a node with a small job of its own, even when no user
is sending work, and a second node runs the same job beside it.

Every `challenge_every_blocks` blocks, the block step draws one offering node that is up,
active and has a free GPU, from the parent block's hash. It creates a matmul job paid from
the protocol account. The job is assigned at once to that node and to one more node, also
drawn, on another operator. From there it is an ordinary job: commit-reveal, verdict, pay,
and penalties for a no-show or a withheld result. So the probe measures two things:
- liveness under load, which heartbeats alone cannot show;
- a runtime to compare with the second node's on identical work. The anomaly detector
  (node/anomaly.py) uses these, so a node whose GPUs do not match its claim is found even on
  an idle network.
A probe is skipped when the protocol account cannot pay for it or nobody fits.
"""

from __future__ import annotations

import hashlib

from consensus.ledger.escrow import escrow_lock
from consensus.ledger.job_records import JobRecord, JobStatus, SubmitJob, job_id
from consensus.ledger.market_records import Replica
from consensus.ledger.offers import market_offers
from consensus.ledger.state import PROTOCOL_ACCOUNT, LedgerState
from p2p import codec

CHALLENGE_DOMAIN = b"gpumesh/challenge/v1"
CHALLENGE_N = 256
"""Matrix side of a probe: a real but small job (milliseconds on any GPU, ~20 ms on a CPU)."""
CHALLENGE_HOURS_MILLI = 1


def _draw(seed: bytes, label: bytes, count: int) -> int:
    digest = hashlib.sha256(CHALLENGE_DOMAIN + label + seed).digest()
    return int.from_bytes(digest[:8], "big") % count


def step_challenges(state: LedgerState, height: int, parent_hash: bytes) -> bytes | None:
    """Create this block's probe, if one is due and possible; returns its job id."""
    market = state.params.market
    every = market.challenge_every_blocks
    if every == 0 or height % every:
        return None
    offers = [o for o in market_offers(state) if o.free_gpus >= 1]
    if len(offers) < 2:
        return None
    target = offers[_draw(parent_hash, b"target", len(offers))]
    others = [o for o in offers if o.operator != target.operator]
    if not others:
        return None
    partner = others[_draw(parent_hash, b"partner", len(others))]
    price = max(target.price_per_gpu_hour, partner.price_per_gpu_hour)
    windows = market.commit_window_blocks + market.reveal_window_blocks
    terms = SubmitJob(
        nonce=height, fee=0, kind="matmul",
        params=codec.pack([CHALLENGE_N, int.from_bytes(parent_hash[:8], "big")]),
        inputs=(), gpu_model="", min_memory_mib=0, gpus=1, region="", max_rtt_ms=0,
        redundancy=2, deadline_height=height + 2 * windows + 1,
        max_price_per_gpu_hour=price, max_hours_milli=CHALLENGE_HOURS_MILLI,
    )  # fmt: skip
    cost = terms.max_cost
    job = job_id(state.chain_id, PROTOCOL_ACCOUNT, height)
    if cost == 0 or state.balance(PROTOCOL_ACCOUNT) < cost or job in state.jobs:
        return None
    escrow_lock(state, job, PROTOCOL_ACCOUNT, cost)
    replicas = tuple(
        sorted(
            (Replica(o.node_id, o.price_per_gpu_hour, height) for o in (target, partner)),
            key=lambda r: r.node,
        )
    )
    state.jobs[job] = JobRecord(
        PROTOCOL_ACCOUNT, height, JobStatus.ASSIGNED, cost, terms,
        replicas=replicas, phase_height=height,
    )  # fmt: skip
    return job
