"""Uptime, measured by the ledger itself: heartbeats in, up and down blocks counted.

A node that offers capacity promises to be there. It proves it with a `Heartbeat` (kind 21)
every `heartbeat_blocks` blocks (an offer counts as one too). In every block, each node with
an offer is counted once, and counted *up* if it was heard from within `down_after_blocks`;
the epoch's uptime is up / counted, in permille, and rewards weigh by it. A node that is
down is not scheduled on, and its unfinished replicas are rerouted in the same block
(job_flow.py), which is what keeps reroutes quick when a node crashes mid-job.

Heartbeats are transactions, so they are signed, ordered and replayable like everything
else, and the measurement needs no clock: blocks are the ledger's time. `gpumesh uptime`
turns blocks into minutes with the chain's measured block interval.
"""

from __future__ import annotations

from consensus.ledger.apply import BlockContext, register_tx_handler
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.market_records import Heartbeat
from consensus.ledger.staking import Effect
from consensus.ledger.state import LedgerState, Liveness


def heard_from(state: LedgerState, node: bytes, height: int) -> None:
    """Record a sign of life (a heartbeat or an offer) at `height`."""
    state.liveness.setdefault(node, Liveness()).last_heartbeat = height


def is_down(state: LedgerState, node: bytes, height: int) -> bool:
    """Silent for more than `down_after_blocks` (a node never heard from is not down: it
    has no offer, so nothing expects it)."""
    live = state.liveness.get(node)
    down_after = state.params.market.down_after_blocks
    return live is not None and height - live.last_heartbeat > down_after


def count_block(state: LedgerState, height: int) -> None:
    """Count this block for every node with an offer: up, or down."""
    down_after = state.params.market.down_after_blocks
    for node in state.offers:
        live = state.liveness.setdefault(node, Liveness(last_heartbeat=height))
        live.counted_blocks += 1
        if height - live.last_heartbeat <= down_after:
            live.up_blocks += 1


def _heartbeat(
    state: LedgerState, sender: bytes, tx: Heartbeat, spendable: int, ctx: BlockContext
) -> Effect:
    if sender not in state.offers:
        raise InvalidTransaction(
            TxCode.NO_OFFER, "only a node with a capacity offer sends heartbeats: offer first"
        )

    def effect() -> None:
        heard_from(state, sender, ctx.height)

    return effect


register_tx_handler(Heartbeat, _heartbeat)
