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
from consensus.ledger.job_records import JobStatus
from consensus.ledger.market_records import FlagNode, Heartbeat
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


def is_watched(state: LedgerState, node: bytes) -> bool:
    """Under audit after a `FlagNode`: every job it takes part in gets an audit replica."""
    live = state.liveness.get(node)
    return live is not None and state.epoch < live.watch_until_epoch


def _flag(
    state: LedgerState, sender: bytes, tx: FlagNode, spendable: int, ctx: BlockContext
) -> Effect:
    market = state.params.market
    if not state.is_active(sender):
        raise InvalidTransaction(TxCode.OPERATOR_INACTIVE, "only an active operator may flag")
    if tx.node == sender:
        raise InvalidTransaction(TxCode.MALFORMED, "a node cannot flag itself")
    mine = state.liveness.get(sender)
    if (mine.flags_sent if mine is not None else 0) >= market.flags_per_epoch_max:
        raise InvalidTransaction(
            TxCode.RATE_LIMITED, f"{market.flags_per_epoch_max} flags already sent this epoch"
        )
    record = state.jobs.get(tx.job_id)
    if record is None or record.status != JobStatus.SETTLED:
        raise InvalidTransaction(TxCode.UNKNOWN_JOB, "the evidence must be a settled job")
    if not any(r.node == tx.node and r.revealed for r in record.replicas):
        raise InvalidTransaction(TxCode.NOT_REPLICA, "the flagged node revealed nothing there")

    def effect() -> None:
        state.liveness.setdefault(sender, Liveness()).flags_sent += 1
        target = state.liveness.setdefault(tx.node, Liveness())
        target.watch_until_epoch = max(target.watch_until_epoch, state.epoch + market.watch_epochs)

    return effect


register_tx_handler(FlagNode, _flag)
