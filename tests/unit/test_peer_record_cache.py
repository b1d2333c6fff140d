"""A pubsub peer's signed record is checked once per host, peer and bytes, with the real
library check (py-libp2p's envelopes and peerstore), and anything new is checked again."""

from __future__ import annotations

from dataclasses import dataclass, field

import multiaddr
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore, create_signed_peer_record
from libp2p.pubsub import gossipsub, pubsub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.utils import maybe_consume_signed_record

from p2p import libp2p_transport
from p2p.peer_record_cache import REFRESH_S, VerifiedRecords


@dataclass(eq=False)
class _Host:
    store: PeerStore = field(default_factory=PeerStore)

    def get_peerstore(self) -> PeerStore:
        return self.store


def _rpc(seed: bytes, port: int) -> tuple[rpc_pb2.RPC, ID]:
    keys = create_new_key_pair(seed)
    peer = ID.from_pubkey(keys.public_key)
    addr = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
    envelope = create_signed_peer_record(peer, [addr], keys.private_key)
    return rpc_pb2.RPC(senderRecord=envelope.marshal_envelope()), peer


def test_the_same_record_is_checked_once_and_a_new_or_forged_one_always() -> None:
    now = [0.0]
    calls: list[ID] = []

    def library(msg: rpc_pb2.RPC, host: _Host, peer: ID) -> bool:
        calls.append(peer)
        return maybe_consume_signed_record(msg, host, peer)  # type: ignore[arg-type]

    cache = VerifiedRecords(library, clock=lambda: now[0])
    host, other_host = _Host(), _Host()
    rpc, peer = _rpc(b"a" * 32, 4001)
    for _ in range(5):
        assert cache(rpc, host, peer)  # type: ignore[arg-type]
    assert calls == [peer] and cache.skipped == 4
    assert host.store.addrs(peer) == [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    assert cache(rpc, other_host, peer)  # type: ignore[arg-type]  # another host checks its own
    assert len(calls) == 2

    moved, _ = _rpc(b"a" * 32, 4002)  # the peer's addresses changed: a new record
    assert cache(moved, host, peer)  # type: ignore[arg-type]
    assert len(calls) == 3
    assert multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4002") in host.store.addrs(peer)

    stranger_rpc, _ = _rpc(b"b" * 32, 4003)
    assert not cache(stranger_rpc, host, peer)  # type: ignore[arg-type]  # someone else's record
    assert not cache(stranger_rpc, host, peer)  # type: ignore[arg-type]  # refused every time
    assert len(calls) == 5
    assert cache(moved, host, peer)  # type: ignore[arg-type]  # a refusal forgets the last one
    assert len(calls) == 6

    now[0] += REFRESH_S  # old enough: checked again (and the peerstore's TTL renewed)
    assert cache(moved, host, peer)  # type: ignore[arg-type]
    assert len(calls) == 7
    cache.forget(host, peer)  # the peer disconnected
    assert cache(moved, host, peer)  # type: ignore[arg-type]
    assert len(calls) == 8
    assert cache(rpc_pb2.RPC(), host, peer)  # type: ignore[arg-type]  # no record: nothing to do
    assert len(calls) == 8


def test_pubsub_calls_the_cache_once_the_transport_is_imported() -> None:
    cache = libp2p_transport._peer_records
    assert isinstance(cache, VerifiedRecords)
    assert libp2p_transport._install_peer_record_cache() is cache  # once per process
    assert pubsub.maybe_consume_signed_record is cache  # type: ignore[attr-defined]
    assert gossipsub.maybe_consume_signed_record is cache  # type: ignore[attr-defined]
