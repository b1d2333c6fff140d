"""Transaction intake on a kept HTTP connection: a client that asks for keep-alive posts
transaction after transaction (to /tx or /txs) on one TCP connection; anything else is
answered as before and closes it.

The endpoint runs for real on 127.0.0.1 (trio sockets); only the chain behind it is a stub
that accepts every transaction it is handed and counts them."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from node.status_http import ChainApi, StatusApp, serve_status
from p2p.codec import pack


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    code: str
    reason: str


async def _read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[bytes, bytes]:
    """(head, body) of one response, by its Content-Length; `buffer` keeps what came after."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(4096)
        assert chunk, "connection closed before a response"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    while len(rest) < length:
        chunk = await stream.receive_some(4096)
        assert chunk, "connection closed inside a body"
        rest += chunk
    buffer[:] = rest[length:]
    return head, rest[:length]


def _post(path: str, body: bytes, connection: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {connection}\r\n\r\n"
    ).encode() + body


async def test_a_kept_connection_carries_transaction_after_transaction() -> None:
    seen: list[bytes] = []

    async def submit(data: bytes) -> Verdict:
        seen.append(data)
        return Verdict(True, "accepted", "")

    async def no_block(height: int) -> None:
        return None

    async def submit_all(batch: list[bytes]) -> list[Verdict]:
        return [await submit(data) for data in batch]

    chain = ChainApi(lambda a: None, lambda n: {}, submit, no_block, lambda t: False, submit_all)
    app = StatusApp(lambda: {"peers": []}, lambda: b"", chain=chain)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_status, app, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray()
        with trio.fail_after(10):
            for i in range(5):
                await stream.send_all(_post("/tx", b"tx-%d" % i, "keep-alive"))
                head, body = await _read_response(stream, buffer)
                assert b"200 OK" in head and b"Connection: keep-alive" in head
                assert b'"accepted": true' in body
            await stream.send_all(_post("/txs", pack([b"a", b"b"]), "keep-alive"))
            head, body = await _read_response(stream, buffer)
            assert b"Connection: keep-alive" in head and body.count(b'"accepted": true') == 2
            # a request that does not ask to keep the connection is answered and closes it
            await stream.send_all(_post("/tx", b"last", "close"))
            head, _ = await _read_response(stream, buffer)
            assert b"Connection: close" in head
            assert await stream.receive_some(4096) == b""
        assert seen == [b"tx-0", b"tx-1", b"tx-2", b"tx-3", b"tx-4", b"a", b"b", b"last"]

        # a bad body fails that request and closes the connection, kept or not
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray()
        with trio.fail_after(10):
            await stream.send_all(_post("/txs", b"\xc1", "keep-alive"))
            head, _ = await _read_response(stream, buffer)
            assert b"400" in head.split(b"\r\n")[0] and b"Connection: close" in head
            assert await stream.receive_some(4096) == b""
        nursery.cancel_scope.cancel()
