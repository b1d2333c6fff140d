"""What a node's offer says about its RTTs: the measured ones, stepped and sorted; the first
ones once every connected node is measured (or RTT_FIRST_WAIT_BLOCKS later); a newly measured
node at once; a changed RTT only every RTT_REFRESH_BLOCKS."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from node.chain_service import ChainService, peer_of
from node.job_runner import (
    RTT_FIRST_WAIT_BLOCKS,
    RTT_REFRESH_BLOCKS,
    RTT_STEP_MS,
    JobRunner,
    WantedOffer,
)
from p2p.identity import Identity

ME = Identity.derive("offer-rtts", "me", 0)
PEERS = [Identity.derive("offer-rtts", "peer", i) for i in range(3)]


class _Transport:
    def __init__(self, rtt_ms: dict[str, float]) -> None:
        self.rtt_ms = rtt_ms

    def connected_peers(self) -> frozenset[str]:
        return frozenset(peer_of(p.public_key) for p in PEERS) | {"not-a-node"}

    def peer_rtt_ms(self) -> dict[str, float]:
        return dict(self.rtt_ms)


def _runner(tmp_path: Path, rtt_ms: dict[str, float]) -> JobRunner:
    runner = JobRunner(ME, cast(ChainService, None), tmp_path / "results",
                       WantedOffer((), "eu-west", 1))  # fmt: skip
    runner._transport = cast(Any, _Transport(rtt_ms))
    return runner


def test_first_rtts_wait_for_every_connected_node_or_a_bounded_number_of_blocks(
    tmp_path: Path,
) -> None:
    one = {peer_of(PEERS[0].public_key): 7.2}
    runner = _runner(tmp_path, one)
    rtts = runner.measured_rtts()
    assert [(r.node, r.ms) for r in rtts] == [(PEERS[0].public_key, 2 * RTT_STEP_MS)]
    assert not runner._first_rtts_ready(10, rtts)  # two of three nodes not yet measured
    assert not runner._first_rtts_ready(10 + RTT_FIRST_WAIT_BLOCKS - 1, rtts)
    assert runner._first_rtts_ready(10 + RTT_FIRST_WAIT_BLOCKS, rtts)  # then as they are

    every = {peer_of(p.public_key): 1.0 + i for i, p in enumerate(PEERS)}
    runner = _runner(tmp_path, every)
    rtts = runner.measured_rtts()
    assert sorted(r.node for r in rtts) == sorted(p.public_key for p in PEERS)
    assert all(r.ms == RTT_STEP_MS for r in rtts)  # rounded up to one step
    assert runner._first_rtts_ready(10, rtts)  # every connected node: at once


def test_an_offer_gains_a_newly_measured_node_at_once_and_changes_only_every_refresh(
    tmp_path: Path,
) -> None:
    every = {peer_of(p.public_key): 1.0 + 20 * i for i, p in enumerate(PEERS)}
    runner = _runner(tmp_path, every)
    rtts = runner.measured_rtts()
    offered = tuple(r for r in rtts if r.node != PEERS[2].public_key)  # published partial
    assert runner._rtts_due(500, 490, offered, rtts)  # PEERS[2] is new: at once
    assert not runner._rtts_due(500, 490, rtts, rtts)  # nothing new
    slower = tuple(replace(r, ms=r.ms + RTT_STEP_MS) for r in rtts)
    assert not runner._rtts_due(490 + RTT_REFRESH_BLOCKS - 1, 490, rtts, slower)
    assert runner._rtts_due(490 + RTT_REFRESH_BLOCKS, 490, rtts, slower)  # a change, rarely
    assert not runner._rtts_due(500, 490, rtts, ())  # nothing measured: nothing to say
