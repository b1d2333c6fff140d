"""yamux flow control as the libp2p adapter sets it: the receiver credits the sender once
half its window has been read (go-yamux's rule), so a small request and its response on a
kept stream are two yamux frames, not four; and payloads of several windows still flow both
ways, again and again, on one kept stream."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
from libp2p.stream_muxer.yamux import yamux

from p2p.identity import Identity
from p2p.libp2p_transport import Libp2pTransport
from p2p.transport import PeerId

DEADLINE_S = 20
PROTOCOL = "/conformance/flow/1"


async def test_small_requests_cost_no_window_updates_and_large_ones_still_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames = {"data": 0, "window_update": 0}
    write_frame = yamux.Yamux._write_frame

    async def counting(self: Any, data: bytes, *args: Any, **kwargs: Any) -> Any:
        kind = data[1] if len(data) >= 2 else -1  # yamux header: version, type, ...
        if kind == yamux.TYPE_WINDOW_UPDATE:
            frames["window_update"] += 1
        elif kind == yamux.TYPE_DATA:
            frames["data"] += 1
        return await write_frame(self, data, *args, **kwargs)

    monkeypatch.setattr(yamux.Yamux, "_write_frame", counting)
    large = os.urandom(3 * 1024 * 1024 + 17)  # over ten 256 KiB windows

    async def serve(peer: PeerId, data: bytes) -> bytes:
        return large if data == b"large" else data[::-1]

    ids = [Identity.derive("conformance", "flow", i) for i in range(2)]
    async with Libp2pTransport.open(ids[0]) as client, Libp2pTransport.open(ids[1]) as server:
        server.set_request_handler(PROTOCOL, serve)
        await client.connect(server.listen_addrs[0])
        with trio.fail_after(DEADLINE_S):
            await client.request(server.peer_id, PROTOCOL, b"warm", keep_stream=True)
            await trio.sleep(0.5)  # let pubsub's and the ping's first frames go by
            before = dict(frames)
            for i in range(50):
                body = bytes([i]) * 300
                got = await client.request(server.peer_id, PROTOCOL, body, keep_stream=True)
                assert got == body[::-1]
            assert frames["window_update"] - before["window_update"] <= 2  # pings, if any
            assert frames["data"] - before["data"] >= 100
            for _ in range(3):  # several windows each way, on the same kept stream
                got = await client.request(server.peer_id, PROTOCOL, b"large", keep_stream=True)
                assert got == large
                echo = await client.request(server.peer_id, PROTOCOL, large, keep_stream=True)
                assert echo == large[::-1]
        assert client.stats.requests_failed == 0
