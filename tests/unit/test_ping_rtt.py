"""The ping monitor measures each peer's round-trip time (smoothed) from its pings."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2p.liveness import RTT_WEIGHT, PingMonitor
from p2p.transport import TransportConfig, TransportStats


async def test_rtts_follow_the_pings_and_are_forgotten_with_the_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    delays = {"slow": [0.080, 0.040], "fast": [0.004, 0.004]}

    async def round_trip(peer: str, nonce: bytes, timeout_s: float) -> bytes:
        await trio.sleep(delays[peer].pop(0))
        return nonce

    async def drop(peer: str) -> None:
        raise AssertionError("nobody misses a ping here")

    monitor = PingMonitor(
        TransportConfig(ping_interval_ms=1_000), TransportStats(), round_trip=round_trip,
        peers=lambda: frozenset(delays), drop=drop,
    )  # fmt: skip
    with trio.move_on_after(2.5):
        await monitor.run()  # two rounds, at 1 s and 2 s
    assert monitor.rtt_ms["fast"] == pytest.approx(4.0, abs=0.5)
    assert monitor.rtt_ms["slow"] == pytest.approx(80 + RTT_WEIGHT * (40 - 80), abs=0.5)
    monitor.forget("slow")
    assert "slow" not in monitor.rtt_ms
