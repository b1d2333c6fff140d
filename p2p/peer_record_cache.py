"""Verify a pubsub peer's signed peer record once, not on every message it sends.

py-libp2p 0.8.1 puts the sender's signed peer record into every pubsub RPC (each message,
each heartbeat's control frame) and the receiver checks it every time: it parses the
envelope, verifies its ed25519 signature, derives the peer id from the key and rewrites the
peer's addresses in the peerstore. The bytes are the same on every RPC until the peer's
addresses change. On a 16-member chain sharing 2 cores that repeated check was 5% of a node's
event loop, and 12% with capacity announced every second.

The libp2p adapter (`p2p.libp2p_transport`, the one module that imports libp2p) puts a
`VerifiedRecords` around the library's `maybe_consume_signed_record` where pubsub calls it: a
record whose bytes are the very bytes this host last accepted from the same peer (over the
same Noise-authenticated connection's peer id) is accepted without a second check; identical
bytes verify identically, so nothing a forger could use is skipped. Anything else (a new
record, an unknown peer, a record refused before) goes through the library's own check. An
entry is dropped when its peer disconnects (`forget`) and renewed every REFRESH_S, so the
peerstore's address TTL (two hours) is still refreshed by a long-lived peer.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Protocol

REFRESH_S = 600.0
"""How long an accepted record's bytes are trusted before the library checks them again."""
PEERS_MAX = 4096
"""Per host; past this the host's entries are cleared (they are only a shortcut)."""


class RecordRpc(Protocol):
    """The part of a pubsub RPC (protobuf) that carries the sender's record."""

    senderRecord: bytes

    def HasField(self, name: str) -> bool: ...


Consume = Callable[[Any, Any, Any], bool]
"""The library's check: (rpc, host, peer id) -> accepted."""


class VerifiedRecords:
    """The library's check, remembered per host and peer by the record's bytes."""

    def __init__(self, consume: Consume, clock: Callable[[], float] = time.monotonic) -> None:
        self._consume, self._clock = consume, clock
        self._accepted: weakref.WeakKeyDictionary[Any, dict[Hashable, tuple[bytes, float]]] = (
            weakref.WeakKeyDictionary()
        )
        self.skipped = 0
        """Records accepted as the bytes already checked."""

    def __call__(self, msg: RecordRpc, host: Any, peer_id: Hashable) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        raw = msg.senderRecord
        accepted = self._accepted.setdefault(host, {})
        now = self._clock()
        last = accepted.get(peer_id)
        if last is not None and last[0] == raw and now - last[1] < REFRESH_S:
            self.skipped += 1
            return True
        ok = self._consume(msg, host, peer_id)
        if not ok:
            accepted.pop(peer_id, None)
            return False
        if len(accepted) >= PEERS_MAX:
            accepted.clear()
        accepted[peer_id] = (raw, now)
        return True

    def forget(self, host: Any, peer_id: Hashable) -> None:
        """The peer left: its next record is checked again (and rewrites its addresses)."""
        accepted = self._accepted.get(host)
        if accepted is not None:
            accepted.pop(peer_id, None)
