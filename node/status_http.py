"""The node's local HTTP endpoint: /status (JSON), /metrics (Prometheus), /healthz.

Bound to loopback only (config refuses anything else): it is for the operator on this machine
and for Prometheus scraping through a local agent, never for the network. /status can
long-poll (`?wait_peers=N&wait_nodes=M&timeout_ms=T`): the server answers once the node's
view satisfies the condition, woken by the runtime after every step, so tools and tests wait
on the node's own events instead of polling in a sleep loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import trio

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

REQUEST_BYTES_MAX = 8 * 1024
WAIT_MS_MAX = 120_000
log = logging.getLogger("gpumesh.status")


@dataclass
class StatusApp:
    """What the endpoint serves; the runtime fills it and calls `changed()` after each step."""

    snapshot: Callable[[], dict[str, object]]
    metrics: Callable[[], bytes]

    def __post_init__(self) -> None:
        self._changed = trio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(
        self, ready: Callable[[dict[str, object]], bool], timeout_ms: int
    ) -> tuple[bool, dict[str, object]]:
        with trio.move_on_after(timeout_ms / 1000):
            while not ready(snap := self.snapshot()):
                await self._changed.wait()
            return True, snap
        return False, self.snapshot()


def _condition(query: dict[str, list[str]]) -> tuple[Callable[[dict[str, object]], bool], int]:
    def number(key: str) -> int:
        values = query.get(key)
        if not values:
            return 0
        value = int(values[0])
        if value < 0:
            raise ValueError(f"{key} must be >= 0")
        return value

    peers, nodes = number("wait_peers"), number("wait_nodes")
    timeout_ms = min(number("timeout_ms") or 10_000, WAIT_MS_MAX)

    def ready(snap: dict[str, object]) -> bool:
        supply = snap.get("supply", {})
        seen = supply.get("nodes", 0) if isinstance(supply, dict) else 0
        have_peers = snap.get("peers", [])
        return len(have_peers) >= peers and seen >= nodes  # type: ignore[arg-type]

    return ready, (timeout_ms if peers or nodes else 0)


async def _respond(stream: trio.SocketStream, code: int, body: bytes, ctype: str) -> None:
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        408: "Request Timeout",
        405: "Method Not Allowed",
    }.get(code, "Error")
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    await stream.send_all(head + body)


async def _read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > REQUEST_BYTES_MAX:
            raise ValueError("request head too large")
    return data


async def _handle(app: StatusApp, stream: trio.SocketStream) -> None:
    async with stream:
        try:
            with trio.fail_after(5):
                head = await _read_head(stream)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except (ValueError, trio.TooSlowError, trio.BrokenResourceError):
            return
        url = urlsplit(target)
        if method != "GET":
            await _respond(stream, 405, b"only GET\n", "text/plain")
        elif url.path == "/metrics":
            await _respond(stream, 200, app.metrics(), "text/plain; version=0.0.4")
        elif url.path == "/healthz":
            await _respond(stream, 200, b"ok\n", "text/plain")
        elif url.path == "/status":
            await _status(app, stream, parse_qs(url.query))
        else:
            await _respond(stream, 404, b"routes: /status /metrics /healthz\n", "text/plain")


async def _status(app: StatusApp, stream: trio.SocketStream, query: dict[str, list[str]]) -> None:
    try:
        ready, timeout_ms = _condition(query)
    except ValueError as exc:
        await _respond(stream, 400, f"{exc}\n".encode(), "text/plain")
        return
    met, snap = await app.wait_until(ready, timeout_ms) if timeout_ms else (True, app.snapshot())
    body = json.dumps(snap, sort_keys=True).encode() + b"\n"
    await _respond(stream, 200 if met else 408, body, "application/json")


async def serve_status(
    app: StatusApp,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port (port 0 picks a free one)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.debug("status endpoint listening", extra={"fields": {"host": host, "port": bound}})
    task_status.started(bound)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(app, stream)

    await trio.serve_listeners(handler, listeners)
