"""Per-GPU-class prices on chain: the pricing rule (consensus/market/pricing.py) applied once
per block to the utilisation the ledger itself sees, and how it bears on the market.

A GPU class is a model name made canonical (`gpu_class`: "RTX 4090" -> "rtx-4090"). A class is
listed when the first offer of it is committed, at that offer's asking price. In every block,
after assignment, each class moves one bounded step towards the price where demand meets
`target_utilisation_permille` of supply:
- supply: GPUs of the class offered by nodes that are up and active;
- demand: GPUs of the class held by replicas that have not revealed, plus the GPUs still
  wanted by pending jobs that ask for that model (a job that takes any model cannot be
  attributed to a class until it is placed, and then counts as held).
The class price is the market's floor: a node is scheduled and bills at the higher of its own
ask and the price of its classes, so a surge lifts what replicas earn (and turns away jobs
whose cap is below it, which is what relieves the surge), while in idle times prices fall
back until each node's own ask is what counts.
"""

from __future__ import annotations

from collections.abc import Mapping

from consensus.ledger.job_records import JobStatus
from consensus.ledger.liveness import is_down
from consensus.ledger.market_records import Offer
from consensus.ledger.state import LedgerState
from consensus.market.pricing import CLASSES_MAX, GPU_CLASS_BYTES_MAX, next_prices

OPEN = frozenset({JobStatus.PENDING, JobStatus.ASSIGNED, JobStatus.REVEALING})


def gpu_class(model: str) -> str:
    """The class of a GPU model: lower case, runs of anything but [a-z0-9.-] as one "-"."""
    out: list[str] = []
    for ch in model.lower():
        keep = ch.isascii() and (ch.isalnum() or ch in ".-")
        if keep:
            out.append(ch)
        elif out and out[-1] != "-":
            out.append("-")
    name = "".join(out).strip("-")[:GPU_CLASS_BYTES_MAX]
    return name or "unnamed"


def offer_classes(offer: Offer) -> list[str]:
    return sorted({gpu_class(g.model) for g in offer.gpus})


def main_class(offer: Offer) -> str:
    """The class of the offer's largest GPU group (ties: the model name), which its replicas
    count against; the offer must list GPUs."""
    return gpu_class(max(offer.gpus, key=lambda g: (g.count, g.model)).model)


def list_classes(state: LedgerState, offer: Offer) -> None:
    """List the offer's classes the book does not know yet, at the offer's ask (while the
    book has room: a full book lists nothing new)."""
    book = state.prices
    for name in offer_classes(offer):
        if name not in book and len(book) < CLASSES_MAX:
            book = book.listing(name, max(1, offer.price_per_gpu_hour))
    state.prices = book


def effective_price(state: LedgerState, offer: Offer) -> int:
    """What the node is scheduled and paid at: its ask, or its dearest class's price."""
    listed = [state.prices[c] for c in offer_classes(offer) if c in state.prices]
    return max([offer.price_per_gpu_hour, *listed])


def supply_and_demand(state: LedgerState) -> tuple[dict[str, int], dict[str, int]]:
    """GPUs per class offered by up, active nodes, and wanted or held by open jobs."""
    height = state.height
    supply: dict[str, int] = {}
    class_of: dict[bytes, str] = {}
    for node, offer in state.offers.items():
        if not offer.gpus:
            continue
        class_of[node] = main_class(offer)
        if not state.is_active(node) or is_down(state, node, height):
            continue
        for g in offer.gpus:
            name = gpu_class(g.model)
            supply[name] = supply.get(name, 0) + g.count
    demand: dict[str, int] = {}
    for record in state.jobs.values():
        if record.status not in OPEN:
            continue
        gpus = record.terms.gpus
        for replica in record.replicas:
            if not replica.revealed and replica.node in class_of:
                name = class_of[replica.node]
                demand[name] = demand.get(name, 0) + gpus
        if record.status == JobStatus.PENDING and record.terms.gpu_model:
            missing = record.replicas_wanted - len(record.replicas)
            name = gpu_class(record.terms.gpu_model)
            demand[name] = demand.get(name, 0) + max(0, missing) * gpus
    return supply, demand


def step_prices(state: LedgerState) -> None:
    """Move every listed class one step (runs in each block after assignment)."""
    if not state.prices:
        return
    supply, demand = supply_and_demand(state)
    state.prices = next_prices(state.prices, demand, supply, state.params.pricing)


def utilisation_permille(supply: Mapping[str, int], demand: Mapping[str, int], name: str) -> int:
    have = supply.get(name, 0)
    return min(demand.get(name, 0), have) * 1000 // have if have else 0
