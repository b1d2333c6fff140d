"""Frames to peers over direct request streams: one sender task and one bounded queue per
peer, so a slow or dead peer delays only what is addressed to it, and the caller (the
engine loop) never waits on the network.

A frame whose request fails is tried a few times with a short backoff (a link may be
re-forming after a restart); after that it is dropped and counted. A frame whose request timed
out is not tried again: the peer may be merely slow and may already hold it, and on an
overloaded host (16 members on 2 cores) resending every late frame to peers that are late
because they are busy, each time on a fresh stream, kept a committee saturated at height 0.
A full queue drops its oldest frame: the consensus core re-sends what still matters on its
own timers, so the newest frames are the ones worth keeping. Nothing here is lost silently:
every drop and failure is in `stats`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from node.logs import LOGGER_NAME, log_event
from p2p.identity import short_peer
from p2p.transport import MessageTooLarge, PeerId, RequestFailed, RequestTimedOut, Transport

QUEUE_MAX = 256
BATCH_FRAMES = 64
BATCH_BYTES = 1024 * 1024
"""At most this much of a peer's backlog goes out as one request (when a `batch` is given)."""
TRIES = 3
BACKOFF_S = (0.1, 0.3)
"""Pause after the first and the second failed try."""
REQUEST_TIMEOUT_MS = 5_000
"""The receiver acknowledges as soon as it queued the frame, so a late acknowledgement means
a busy or hung peer. Long enough that a busy one is waited for (each timeout also costs the
kept stream, and a new stream a multistream negotiation on both sides), short enough that a
hung one holds up only its own queue for a few seconds."""


@dataclass
class SenderStats:
    queued: int = 0
    sent: int = 0
    dropped_queue_full: int = 0
    dropped_failed: int = 0
    """Frames given up after every try failed."""
    timed_out: int = 0
    """Frames given up because their acknowledgement was late (also in dropped_failed)."""
    retries: int = 0
    batched: int = 0
    """Frames that went out inside a batch with others."""

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class _Queue:
    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()
        self.wake = trio.Event()


class PeerSenders:
    """Fire-and-forget sends on one protocol; the tasks live in `nursery`."""

    def __init__(
        self,
        transport: Transport,
        protocol: str,
        nursery: trio.Nursery,
        *,
        queue_max: int = QUEUE_MAX,
        batch: Callable[[list[bytes]], bytes] | None = None,
    ) -> None:
        """`batch`: how to wrap several queued frames into one (the protocol's own batch
        frame); without it, frames go one request each."""
        self._transport, self._protocol, self._nursery = transport, protocol, nursery
        self._batch = batch
        self._queue_max = queue_max
        self._queues: dict[PeerId, _Queue] = {}
        self.stats = SenderStats()
        self._log = logging.getLogger(f"{LOGGER_NAME}.chain")

    def send(self, peer: PeerId, frame: bytes) -> None:
        """Queue `frame` for `peer` and return at once."""
        q = self._queues.get(peer)
        if q is None:
            q = self._queues[peer] = _Queue()
            self._nursery.start_soon(self._run, peer, q)
        if len(q.frames) >= self._queue_max:
            q.frames.popleft()
            self.stats.dropped_queue_full += 1
        q.frames.append(frame)
        self.stats.queued += 1
        q.wake.set()

    def backlog(self) -> dict[str, int]:
        return {short_peer(p): len(q.frames) for p, q in sorted(self._queues.items())}

    async def _run(self, peer: PeerId, q: _Queue) -> None:
        while True:
            while not q.frames:
                await q.wake.wait()
                q.wake = trio.Event()
            frames = [q.frames.popleft()]
            size = len(frames[0])
            while self._batch is not None and q.frames and len(frames) < BATCH_FRAMES:
                if size + len(q.frames[0]) > BATCH_BYTES:
                    break
                size += len(q.frames[0])
                frames.append(q.frames.popleft())
            if len(frames) > 1 and self._batch is not None:
                self.stats.batched += len(frames)
                await self._deliver(peer, self._batch(frames), len(frames))
            else:
                await self._deliver(peer, frames[0])

    async def _deliver(self, peer: PeerId, frame: bytes, count: int = 1) -> None:
        reason = ""
        for attempt in range(TRIES):
            if attempt:
                self.stats.retries += 1
                await trio.sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
            try:
                await self._transport.request(
                    peer, self._protocol, frame, timeout_ms=REQUEST_TIMEOUT_MS, keep_stream=True
                )
            except MessageTooLarge as exc:  # our bug, but one frame must not stop the node
                reason = str(exc)
                break
            except RequestTimedOut as exc:
                reason = exc.reason
                self.stats.timed_out += count
                break
            except RequestFailed as exc:
                reason = exc.reason
                continue
            self.stats.sent += count
            return
        self.stats.dropped_failed += count
        log_event(
            self._log,
            "frame_send_failed",
            {"peer": short_peer(peer), "reason": reason[:200]},
            logging.DEBUG,
        )
