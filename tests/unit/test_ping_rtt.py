"""The ping monitor measures each peer's round-trip time from its pings: the least of its last
RTT_WINDOW, once it has RTT_MIN_SAMPLES, so a host's stall does not read as distance."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2p.liveness import PING_BUSY_ROUNDS, RTT_MIN_SAMPLES, RTT_WINDOW, PingMonitor
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
    assert RTT_MIN_SAMPLES == 2
    with trio.move_on_after(1.5):
        await monitor.run()  # one round, at 1 s: one ping is not yet a measurement
    assert monitor.rtt_ms == {}
    with trio.move_on_after(1.5):
        await monitor.run()  # a second round: each peer has two pings, its RTT is the lesser
    assert monitor.rtt_ms == {
        "fast": pytest.approx(4.0, abs=0.5), "slow": pytest.approx(40.0, abs=0.5),
    }  # fmt: skip
    monitor.forget("slow")
    assert "slow" not in monitor.rtt_ms


async def test_a_stall_does_not_read_as_distance_and_a_slower_path_shows_once_the_window_rolls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One 1.9 s ping (the peer's host stalled) among 5 ms pings leaves the RTT at 5 ms; when
    every ping takes 50 ms, the RTT is 50 ms after RTT_WINDOW of them."""
    delays = [0.005, 1.9, 0.005] + [0.050] * RTT_WINDOW
    seen: list[float] = []  # the peer's RTT before each ping, and at the end

    async def round_trip(peer: str, nonce: bytes, timeout_s: float) -> bytes:
        seen.append(round(monitor.rtt_ms.get("peer", -1.0)))
        if not delays:
            await trio.sleep_forever()
        await trio.sleep(delays.pop(0))
        return nonce

    async def drop(peer: str) -> None:
        raise AssertionError("nobody misses a ping here")

    monitor = PingMonitor(
        TransportConfig(ping_interval_ms=1_000, ping_timeout_ms=10_000), TransportStats(),
        round_trip=round_trip, peers=lambda: frozenset({"peer"}), drop=drop,
    )  # fmt: skip
    with trio.move_on_after(len(delays) + 2.5):
        await monitor.run()
    assert delays == [] and len(seen) == 3 + RTT_WINDOW + 1  # and one more ping began
    seen = seen[1:]  # after each ping
    assert seen[:3] == [-1, 5, 5]  # the stall never shows
    assert seen[3:-1] == [5] * (RTT_WINDOW - 1)  # the 5 ms ping is still in the window
    assert seen[-1] == 50  # ... and now it has rolled out


async def test_a_peer_that_answers_our_requests_is_pinged_only_every_few_rounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pinged: list[str] = []

    async def round_trip(peer: str, nonce: bytes, timeout_s: float) -> bytes:
        pinged.append(peer)
        return nonce

    async def drop(peer: str) -> None:
        raise AssertionError("nobody misses a ping here")

    stats = TransportStats()
    monitor = PingMonitor(
        TransportConfig(ping_interval_ms=1_000), stats, round_trip=round_trip,
        peers=lambda: frozenset({"busy", "quiet"}), drop=drop,
    )  # fmt: skip

    async def traffic() -> None:  # "busy" answers a request of ours 10 times a second
        for _ in range(120):
            await trio.sleep(0.1)
            monitor.heard("busy")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic)
        with trio.move_on_after(12.05):
            await monitor.run()  # rounds at 1 s .. 12 s
        nursery.cancel_scope.cancel()
    quiet = [p for p in pinged if p == "quiet"]
    busy = [p for p in pinged if p == "busy"]
    assert len(quiet) == 12  # every round
    assert len(busy) == 12 // PING_BUSY_ROUNDS  # its round trip is still measured
    assert stats.extra["pings_skipped_busy"] == 12 - len(busy)
    assert "busy" in monitor.rtt_ms


async def test_a_peer_that_talks_to_us_is_not_dropped_for_late_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a saturated host every ping can be late while the peer still sends us frames: that
    peer is busy, not hung, and stays. One that falls silent too is dropped as before."""
    dropped: list[str] = []
    connected = {"busy", "hung"}

    async def round_trip(peer: str, nonce: bytes, timeout_s: float) -> bytes:
        await trio.sleep(timeout_s)  # never answers in time
        return b""

    async def drop(peer: str) -> None:
        dropped.append(peer)
        connected.discard(peer)

    stats = TransportStats()
    config = TransportConfig(ping_interval_ms=1_000, ping_timeout_ms=800, ping_misses_max=3)
    monitor = PingMonitor(
        config, stats, round_trip=round_trip, peers=lambda: frozenset(connected),
        drop=drop,
    )  # fmt: skip
    talking = trio.Event()

    async def traffic() -> None:  # "busy" answers us, then asks us, 10 times a second
        for i in range(200):
            await trio.sleep(0.1)
            (monitor.heard if i < 100 else monitor.asked)("busy")
        talking.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic)
        with trio.move_on_after(20.05):
            await monitor.run()
        assert dropped == ["hung"]  # three late pings in a row, nothing heard from it
        # While it answers us (to 10 s) "busy" is pinged every PING_BUSY_ROUNDS-th round (at 5
        # and 10 s); while it asks us, every round (11 .. 19 s; 20 s's ends after the window).
        assert PING_BUSY_ROUNDS == 5
        assert stats.extra["pings_missed_but_heard"] == 2 + 9
        await talking.wait()
        with trio.move_on_after(6):
            await monitor.run()  # "busy" fell silent: its late pings count again
        nursery.cancel_scope.cancel()
    assert dropped == ["hung", "busy"]
