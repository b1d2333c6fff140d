"""Committed capacity offers, and the scheduler's view of them.

An operator's node offers its GPUs with `OfferCapacity`; the row replaces any earlier one, and
an offer of no GPUs withdraws it. The scheduler sees an offer only while its operator is
active (staked to the minimum, not jailed), with the GPUs that replicas already hold on it
subtracted: a replica holds its GPUs from assignment until it reveals its result (or leaves
the job), because the ledger cannot know sooner that the work is done.
"""

from __future__ import annotations

from consensus.ledger.apply import BlockContext, register_tx_handler
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.job_records import JobRecord, JobStatus
from consensus.ledger.liveness import heard_from, is_down
from consensus.ledger.market_records import Offer, OfferCapacity
from consensus.ledger.prices import effective_price, list_classes
from consensus.ledger.staking import Effect
from consensus.ledger.state import LedgerState
from consensus.market.scheduler import NodeOffer

OPEN_STATUSES = frozenset({JobStatus.PENDING, JobStatus.ASSIGNED, JobStatus.REVEALING})
"""A job in one of these may still hold GPUs, pay, or be paid."""


def busy_gpus(jobs: dict[bytes, JobRecord]) -> dict[bytes, int]:
    """GPUs each node holds for replicas that have not revealed yet."""
    busy: dict[bytes, int] = {}
    for record in jobs.values():
        if record.status in OPEN_STATUSES:
            for replica in record.replicas:
                if not replica.revealed:
                    busy[replica.node] = busy.get(replica.node, 0) + record.terms.gpus
    return busy


def market_offers(state: LedgerState) -> list[NodeOffer]:
    """Every active operator's offer as a `NodeOffer`, sorted by node, with free GPUs net of
    the replicas it holds; a node that is down (liveness.py) is left out. A node is its own
    operator: its key is the operator account."""
    busy = busy_gpus(state.jobs)
    offers = []
    for node, offer in sorted(state.offers.items()):
        total = offer.gpu_total
        if total == 0 or not state.is_active(node) or is_down(state, node, state.height):
            continue
        offers.append(
            NodeOffer(
                node_id=node,
                operator=node,
                gpus=offer.gpus,
                free_gpus=max(0, total - busy.get(node, 0)),
                region=offer.region,
                price_per_gpu_hour=effective_price(state, offer),
                rtt_ms=((node, 0), *((p.node, p.ms) for p in offer.rtt_ms)),
            )
        )
    return offers


def _offer(
    state: LedgerState, sender: bytes, tx: OfferCapacity, spendable: int, ctx: BlockContext
) -> Effect:
    if sender not in state.operators:
        raise InvalidTransaction(
            TxCode.UNKNOWN_OPERATOR, "only an operator's node may offer capacity: stake first"
        )
    models = [g.model.lower() for g in tx.gpus]
    if len(set(models)) != len(models):
        raise InvalidTransaction(TxCode.MALFORMED, "each GPU model may appear once per offer")
    peers = [p.node for p in tx.rtt_ms]
    if peers != sorted(set(peers)) or sender in peers:
        raise InvalidTransaction(
            TxCode.MALFORMED, "RTTs must name other nodes, each once, sorted by node"
        )
    offer = Offer(tx.gpus, tx.region, tx.price_per_gpu_hour, ctx.height, tx.rtt_ms)

    def effect() -> None:
        if tx.gpus:
            state.offers[sender] = offer
            heard_from(state, sender, ctx.height)
            list_classes(state, offer)
        else:
            state.offers.pop(sender, None)

    return effect


register_tx_handler(OfferCapacity, _offer)
