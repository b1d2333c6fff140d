"""Our own peer liveness check: libp2p never notices a hung (SIGSTOPped) peer.

Every interval each connected peer is pinged over a direct stream with a deadline; a peer that
misses `ping_misses_max` pings in a row is dropped (LIBP2P_NOTES.md). The transport supplies
the round trip, the peer set and the drop, so this part holds no libp2p types and the adapter
module stays small.

A peer that answered one of our requests on a kept stream during the last interval (the
transport calls `heard`; consensus frames travel that way) is alive without a ping: it is
pinged only every PING_BUSY_ROUNDS intervals, to keep its round-trip time fresh. Committee
members exchange frames all the time, and at 16 members on 2 cores the pings were as many
frames as the transactions' forwarding. A ping missed by a peer that answered us, or sent us a
request (`asked`), within the interval does not count against it: when that host was
saturated every member missed its pings at once, dropped every peer, and spent what CPU was
left redialling them.

A peer's round-trip time is the least of its last RTT_WINDOW pings, reported once it has
RTT_MIN_SAMPLES of them (a windowed minimum, as TCP and BBR keep min_rtt). A ping's time adds
the network's delay to both hosts' scheduling delay, and only the network's part is what a
job's submitter wants to know: with a mean, one node stalled for two seconds at start-up (a
loaded test suite) made its peers offer ~1,900 ms to it for the next 100 blocks. A stall only
ever adds, so the minimum of a few pings a round apart drops it, and a path that really got
slower shows once the window has rolled past its older pings.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from p2p.transport import PeerId, RequestFailed, TransportConfig, TransportStats

PING_NONCE = struct.Struct(">Q")
RTT_WINDOW = 8
RTT_MIN_SAMPLES = 2
PING_BUSY_ROUNDS = 5
logger = logging.getLogger("gpumesh.libp2p")

RoundTrip = Callable[[PeerId, bytes, float], Awaitable[bytes]]
"""(peer, nonce, timeout_s) -> the echoed nonce; raises RequestFailed."""


class PingMonitor:
    """Pings each peer per interval and drops one after too many misses in a row."""

    def __init__(
        self,
        config: TransportConfig,
        stats: TransportStats,
        *,
        round_trip: RoundTrip,
        peers: Callable[[], frozenset[PeerId]],
        drop: Callable[[PeerId], Awaitable[None]],
    ) -> None:
        self._config = config
        self._stats = stats
        self._round_trip = round_trip
        self._peers = peers
        self._drop = drop
        self._misses: dict[PeerId, int] = {}
        self._heard_s: dict[PeerId, float] = {}
        self._asked_s: dict[PeerId, float] = {}
        self._skipped: dict[PeerId, int] = {}
        self._nonce = 0
        self._rtt_samples: dict[PeerId, deque[float]] = {}
        stats.extra.setdefault("pings_ok", 0)
        stats.extra.setdefault("pings_skipped_busy", 0)
        stats.extra.setdefault("pings_missed_but_heard", 0)

    def forget(self, peer: PeerId) -> None:
        """A peer that left starts with a clean record when it comes back."""
        self._misses.pop(peer, None)
        self._rtt_samples.pop(peer, None)
        self._heard_s.pop(peer, None)
        self._asked_s.pop(peer, None)
        self._skipped.pop(peer, None)

    @property
    def rtt_ms(self) -> dict[PeerId, float]:
        """Each peer's round-trip time: the least of its last RTT_WINDOW pings, for peers with
        at least RTT_MIN_SAMPLES answered pings (see the module's docstring)."""
        return {
            peer: min(samples)
            for peer, samples in self._rtt_samples.items()
            if len(samples) >= RTT_MIN_SAMPLES
        }

    def heard(self, peer: PeerId) -> None:
        """`peer` just answered a request of ours: proof of life for this interval."""
        self._heard_s[peer] = trio.current_time()

    def asked(self, peer: PeerId) -> None:
        """`peer` just sent us a request: alive, so a late ping does not count against it.
        It is still pinged every round (unlike a peer that answers us, see `_due`): its pings
        are what measure its round-trip time."""
        self._asked_s[peer] = trio.current_time()

    def _due(self, peer: PeerId, now_s: float, interval_s: float) -> bool:
        """Ping unless the peer answered us within the interval, and then still every
        PING_BUSY_ROUNDS-th round (its round-trip time stays measured by pings alone)."""
        heard = self._heard_s.get(peer)
        skipped = self._skipped.get(peer, 0)
        if heard is not None and now_s - heard < interval_s and skipped + 1 < PING_BUSY_ROUNDS:
            self._skipped[peer] = skipped + 1
            self._stats.extra["pings_skipped_busy"] += 1
            return False
        self._skipped[peer] = 0
        return True

    async def run(self) -> None:
        interval_s = self._config.ping_interval_ms / 1000
        next_round_s = trio.current_time() + interval_s
        while True:
            await trio.sleep_until(next_round_s)
            next_round_s = max(next_round_s + interval_s, trio.current_time())
            now_s = trio.current_time()
            async with trio.open_nursery() as round_nursery:
                for peer in sorted(self._peers()):
                    if self._due(peer, now_s, interval_s):
                        round_nursery.start_soon(self._ping_once, peer)

    async def _ping_once(self, peer: PeerId) -> None:
        self._nonce += 1
        nonce = PING_NONCE.pack(self._nonce)
        sent_s = trio.current_time()
        try:
            echo = await self._round_trip(peer, nonce, self._config.ping_timeout_ms / 1000)
        except RequestFailed:
            echo = b""
        if echo == nonce:
            took_ms = (trio.current_time() - sent_s) * 1000
            samples = self._rtt_samples.setdefault(peer, deque(maxlen=RTT_WINDOW))
            samples.append(took_ms)
            self._misses.pop(peer, None)
            self._stats.extra["pings_ok"] += 1
            return
        if peer not in self._peers():
            return  # it left while we waited; the transport reports that
        self._stats.pings_missed += 1
        interval_s = self._config.ping_interval_ms / 1000
        alive_s = max(self._heard_s.get(peer, -math.inf), self._asked_s.get(peer, -math.inf))
        if trio.current_time() - alive_s < interval_s:
            self._stats.extra["pings_missed_but_heard"] += 1
            return  # busy, not hung: it answered us or asked us something just now
        misses = self._misses.get(peer, 0) + 1
        self._misses[peer] = misses
        if misses < self._config.ping_misses_max:
            return
        logger.warning("peer %s missed %d pings in a row: disconnecting", peer[-8:], misses)
        self._stats.peers_dropped_unresponsive += 1
        self._misses.pop(peer, None)
        await self._drop(peer)
