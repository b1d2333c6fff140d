"""The node's local HTTP endpoint: /status (JSON), /metrics (Prometheus), /healthz, /admin.

Bound to loopback only (config refuses anything else): it is for the operator on this machine
and for Prometheus scraping through a local agent, never for the network. /status can
long-poll (`?wait_peers=N&wait_nodes=M&wait_nodes_max=K&timeout_ms=T`): the server answers
once the node's view satisfies the condition, woken by the runtime after every step, so tools
and tests wait on the node's own events instead of polling in a sleep loop.

With a chain, the market's routes too (node/market_http.py: /jobs, /job/<hex>,
/result/<hex>, /offers) and: GET /account/<hex> (balance, nonce, stakes; 404 for an
account the ledger does not know), GET /ledger?limit=N (every account and operator),
GET /block/<height> (a stored block's hash, state root and "txs": its transactions' hex
ids), GET /tx/<id> (whether it waits in the mempool), and POST /tx, whose body is one
signed transaction's bytes: the node hands it to its consensus engine and answers the
verdict as JSON ({"accepted", "code", "reason"}), so a CLI needs no libp2p.
`/status?wait_height=H` long-polls until the chain's head reaches H.

/admin/policy (GET, POST) reads and replaces the node's traffic policy, the fault injection
a local swarm drives. Loopback is not enough for that (any local user can reach the port), so
it also demands `Authorization: Bearer <token>` with the token from `status.admin_token_file`,
compared in constant time; a wrong or missing token gets a bare 401, and without a token
file the route does not exist (404).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import parse_qs, urlsplit

import trio

from node.config import ConfigError
from p2p.codec import unpack
from p2p.errors import DecodeError
from p2p.transport import PolicyError, TrafficPolicy

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

REQUEST_BYTES_MAX = 8 * 1024
ADMIN_BODY_BYTES_MAX = 256 * 1024
"""A policy naming the most peers it may (1,024 per set) fits well inside this."""
TX_BODY_BYTES_MAX = 1024 * 1024
"""The largest transaction any chain's parameters allow."""
TXS_BATCH_MAX = 1_000
"""Transactions in one POST /txs."""
TXS_BODY_BYTES_MAX = 4 * 1024 * 1024
"""The largest POST /txs body."""
KEEP_ALIVE_IDLE_S = 15.0
"""How long a kept transaction connection waits for the client's next request."""
LEDGER_LIMIT_MAX = 10_000
TOKEN_CHARS = (32, 1024)
WAIT_MS_MAX = 120_000
log = logging.getLogger("gpumesh.status")
_ROUTES = (
    b"routes: /status /metrics /healthz /account/<hex> /ledger /block/<h> /tx /txs /jobs "
    b"/job/<hex> /result/<hex> /offers\n"
)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    503: "Service Unavailable",
    413: "Content Too Large",
}


@dataclass(frozen=True)
class AdminApi:
    """What /admin may do to the node: read and replace its traffic policy."""

    token: bytes
    policy: Callable[[], TrafficPolicy]
    apply: Callable[[TrafficPolicy], None]


class TxVerdictLike(Protocol):
    """What `ChainApi.submit_tx` returns (consensus.engine.TxVerdict is one)."""

    @property
    def accepted(self) -> bool: ...
    @property
    def code(self) -> str: ...
    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class ChainApi:
    """The chain service's views and its transaction intake."""

    account: Callable[[bytes], dict[str, object] | None]
    ledger: Callable[[int], dict[str, object]]
    submit_tx: Callable[[bytes], Awaitable[TxVerdictLike]]
    block: Callable[[int], Awaitable[dict[str, object] | None]]
    tx_pending: Callable[[bytes], bool]
    submit_txs: Callable[[list[bytes]], Awaitable[Sequence[TxVerdictLike]]]
    """Many at once, handed to the engine in their order (POST /txs)."""


@dataclass
class StatusApp:
    """What the endpoint serves; the runtime fills it and calls `changed()` after each step."""

    snapshot: Callable[[], dict[str, object]]
    metrics: Callable[[], bytes]
    admin: AdminApi | None = None
    chain: ChainApi | None = None
    market: MarketRoute | None = None
    """The market's routes (node/market_http.py), when the node runs a chain."""
    market_paths: Callable[[str], bool] = lambda path: False
    probe: Callable[[], dict[str, object]] | None = None
    """The few fields a long-poll waits on (peers, supply.nodes, chain.height), cheaply: a
    node under load signals a change on every step, and re-rendering the whole snapshot
    each time for every waiting client cost a followed node about a tenth of its CPU."""

    def __post_init__(self) -> None:
        self._changed = trio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(
        self, ready: Callable[[dict[str, object]], bool], timeout_ms: int
    ) -> tuple[bool, dict[str, object]]:
        probe = self.probe or self.snapshot
        with trio.move_on_after(timeout_ms / 1000):
            while not ready(probe()):
                await self._changed.wait()
            return True, self.snapshot()
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

    peers, nodes, height = number("wait_peers"), number("wait_nodes"), number("wait_height")
    nodes_max = number("wait_nodes_max") if "wait_nodes_max" in query else None
    timeout_ms = min(number("timeout_ms") or 10_000, WAIT_MS_MAX)

    def ready(snap: dict[str, object]) -> bool:
        supply = snap.get("supply", {})
        seen = supply.get("nodes", 0) if isinstance(supply, dict) else 0
        have_peers = snap.get("peers", [])
        at_most = nodes_max is None or seen <= nodes_max
        chain = snap.get("chain", {})
        reached = not height or (isinstance(chain, dict) and chain.get("height", 0) >= height)
        return len(have_peers) >= peers and seen >= nodes and at_most and reached  # type: ignore[arg-type]

    waits = peers or nodes or height or nodes_max is not None
    return ready, (timeout_ms if waits else 0)


async def respond(
    stream: trio.SocketStream,
    code: int,
    body: bytes,
    ctype: str,
    extra: str = "",
    *,
    keep_alive: bool = False,
) -> None:
    connection = "keep-alive" if keep_alive else "close"
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: {connection}\r\n\r\n"
    ).encode()
    await stream.send_all(head + body)


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    """Lower-cased names; a repeated header keeps its last value."""
    body_start: bytes
    """Whatever arrived after the head: the beginning of the body."""


MarketRoute = Callable[[trio.SocketStream, Request, str, dict[str, list[str]]], Awaitable[None]]


async def _read_request(stream: trio.SocketStream) -> Request:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > REQUEST_BYTES_MAX:
            raise ValueError("request head too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers, rest)


async def _handle(app: StatusApp, stream: trio.SocketStream) -> None:
    async with stream:
        try:
            with trio.fail_after(5):
                request = await _read_request(stream)
        except (ValueError, trio.TooSlowError, trio.BrokenResourceError):
            return
        while app.chain is not None and _keeps_alive(request):
            # Transaction intake on a kept connection: a wallet or relayer posting one
            # transaction after another spares a TCP connection each (on a loaded node,
            # accepting and closing them was a large part of taking a transaction in).
            if not await _post_txs(app.chain, stream, request, keep_alive=True):
                return
            next_request = None
            with trio.move_on_after(KEEP_ALIVE_IDLE_S):
                try:
                    next_request = await _read_request(stream)
                except (ValueError, trio.BrokenResourceError):
                    return
            if next_request is None:
                return  # idle (a closed connection raised ValueError above)
            request = next_request
        method, url = request.method, urlsplit(request.target)
        if url.path == "/admin" or url.path.startswith("/admin/"):
            await _admin(app.admin, stream, request, url.path)
        elif url.path in ("/tx", "/txs", "/ledger") or url.path.startswith(
            ("/account/", "/block/", "/tx/")
        ):
            await _chain(app.chain, stream, request, url.path, parse_qs(url.query))
        elif app.market is not None and app.market_paths(url.path):
            await app.market(stream, request, url.path, parse_qs(url.query))
        elif method != "GET":
            await respond(stream, 405, b"only GET\n", "text/plain")
        elif url.path == "/metrics":
            await respond(stream, 200, app.metrics(), "text/plain; version=0.0.4")
        elif url.path == "/healthz":
            await respond(stream, 200, b"ok\n", "text/plain")
        elif url.path == "/status":
            await _status(app, stream, parse_qs(url.query))
        else:
            await respond(stream, 404, _ROUTES, "text/plain")


async def _status(app: StatusApp, stream: trio.SocketStream, query: dict[str, list[str]]) -> None:
    try:
        ready, timeout_ms = _condition(query)
    except ValueError as exc:
        await respond(stream, 400, f"{exc}\n".encode(), "text/plain")
        return
    met, snap = await app.wait_until(ready, timeout_ms) if timeout_ms else (True, app.snapshot())
    body = json.dumps(snap, sort_keys=True).encode() + b"\n"
    await respond(stream, 200 if met else 408, body, "application/json")


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


# ---------------------------------------------------------------------------------------------
# chain routes


async def respond_json(
    stream: trio.SocketStream, code: int, doc: object, *, keep_alive: bool = False
) -> None:
    body = json.dumps(doc, sort_keys=True).encode() + b"\n"
    await respond(stream, code, body, "application/json", keep_alive=keep_alive)


async def _chain(
    api: ChainApi | None,
    stream: trio.SocketStream,
    request: Request,
    path: str,
    query: dict[str, list[str]],
) -> None:
    if api is None:
        await respond_json(stream, 404, {"error": "this node runs no chain (no [chain] genesis)"})
    elif path in ("/tx", "/txs"):
        if request.method != "POST":
            await respond(stream, 405, f"{path} takes POST\n".encode(), "text/plain")
            return
        await _post_txs(api, stream, request)
    elif request.method != "GET":
        await respond(stream, 405, b"only GET\n", "text/plain")
    elif path.startswith("/tx/"):
        tx_id = hex32(path.removeprefix("/tx/"))
        if tx_id is None:
            await respond_json(stream, 400, {"error": "expected /tx/<64 hex digits of a tx id>"})
        else:
            await respond_json(
                stream, 200, {"tx_id": tx_id.hex(), "pending": api.tx_pending(tx_id)}
            )
    elif path.startswith("/block/"):
        text = path.removeprefix("/block/")
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            await respond_json(stream, 400, {"error": f"{text[:40]!r} is not a block height"})
            return
        block = await api.block(int(text))
        if block is None:
            await respond_json(stream, 404, {"error": "no such block", "height": int(text)})
        else:
            await respond_json(stream, 200, block)
    elif path == "/ledger":
        try:
            limit = min(int(query.get("limit", [str(LEDGER_LIMIT_MAX)])[0]), LEDGER_LIMIT_MAX)
        except ValueError:
            await respond_json(stream, 400, {"error": "limit must be an integer"})
            return
        await respond_json(stream, 200, api.ledger(max(limit, 0)))
    else:
        text = path.removeprefix("/account/")
        account = hex32(text)
        if account is None:
            problem = f"{text[:80]!r} is not an account: expected 64 hex digits"
            await respond_json(stream, 400, {"error": problem})
            return
        view = api.account(account)
        if view is None:
            await respond_json(stream, 404, {"error": "unknown account", "account": account.hex()})
        else:
            await respond_json(stream, 200, view)


def hex32(text: str) -> bytes | None:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def _keeps_alive(request: Request) -> bool:
    """A POST of transactions whose client asked to keep the connection, and sent nothing
    beyond its body (pipelined requests are not served: such a connection is closed)."""
    if request.method != "POST" or urlsplit(request.target).path not in ("/tx", "/txs"):
        return False
    if request.headers.get("connection", "").lower() != "keep-alive":
        return False
    length = request.headers.get("content-length", "")
    return length.isascii() and length.isdigit() and len(request.body_start) <= int(length)


async def _post_txs(
    api: ChainApi, stream: trio.SocketStream, request: Request, *, keep_alive: bool = False
) -> bool:
    """POST /tx or /txs: read the body, hand it to the engine, answer the verdicts. True if
    it answered 200 (with `keep_alive`, the connection then stays open for the next)."""
    path = urlsplit(request.target).path
    limit = TX_BODY_BYTES_MAX if path == "/tx" else TXS_BODY_BYTES_MAX
    body = await read_body(stream, request, limit)
    if body is None:
        return False
    if path == "/txs":
        return await _submit_batch(api, stream, body, keep_alive=keep_alive)
    doc = _verdict_doc(await api.submit_tx(body))
    await respond_json(stream, 200, doc, keep_alive=keep_alive)
    return True


def _verdict_doc(v: TxVerdictLike) -> dict[str, object]:
    return {"accepted": v.accepted, "code": v.code, "reason": v.reason}


async def _submit_batch(
    api: ChainApi, stream: trio.SocketStream, body: bytes, *, keep_alive: bool = False
) -> bool:
    """POST /txs: a canonical msgpack array of signed transactions, each as /tx takes it,
    all handed to the engine at once; the verdicts come back in the same order. One request
    for many transactions spares a relayer or a wallet a connection per transaction (on a
    loaded node that cost was a large part of taking a transaction in)."""
    try:
        txs = unpack(body, max_bytes=TXS_BODY_BYTES_MAX, max_depth=1)
    except DecodeError as exc:
        await respond_json(stream, 400, {"error": f"expected a msgpack array of txs: {exc}"})
        return False
    if not isinstance(txs, list) or not all(isinstance(tx, bytes) for tx in txs):
        await respond_json(stream, 400, {"error": "expected a msgpack array of byte strings"})
        return False
    if len(txs) > TXS_BATCH_MAX:
        problem = f"{len(txs)} transactions in one batch; at most {TXS_BATCH_MAX}"
        await respond_json(stream, 413, {"error": problem})
        return False
    verdicts = [_verdict_doc(v) for v in await api.submit_txs(cast("list[bytes]", txs))]
    await respond_json(stream, 200, {"verdicts": verdicts}, keep_alive=keep_alive)
    return True


async def read_body(stream: trio.SocketStream, request: Request, limit: int) -> bytes | None:
    """The request's body (Content-Length bytes), or None once an error was answered."""
    length_text = request.headers.get("content-length", "")
    if not length_text.isascii() or not length_text.isdigit():
        await respond(stream, 411, b"POST needs a Content-Length header\n", "text/plain")
        return None
    length = int(length_text)
    if length > limit:
        problem = f"body of {length} bytes exceeds the limit of {limit}\n"
        await respond(stream, 413, problem.encode(), "text/plain")
        return None
    body = request.body_start[:length]
    try:
        with trio.fail_after(5):
            while len(body) < length:
                chunk = await stream.receive_some(length - len(body))
                if not chunk:
                    problem = f"body ended after {len(body)} of {length} bytes\n"
                    await respond(stream, 400, problem.encode(), "text/plain")
                    return None
                body += chunk
    except trio.TooSlowError:
        return None
    return body


# ---------------------------------------------------------------------------------------------
# /admin


async def _admin(
    api: AdminApi | None, stream: trio.SocketStream, request: Request, path: str
) -> None:
    if api is None or path != "/admin/policy":
        await respond(stream, 404, _ROUTES, "text/plain")
    elif not _authorised(api.token, request.headers.get("authorization", "")):
        # Nothing about why: a prober learns neither the scheme's details nor the token's.
        await respond(stream, 401, b"unauthorised\n", "text/plain", "WWW-Authenticate: Bearer\r\n")
    elif request.method == "GET":
        await respond(stream, 200, _policy_json(api.policy()), "application/json")
    elif request.method == "POST":
        await _admin_post(api, stream, request)
    else:
        await respond(stream, 405, b"/admin/policy takes GET and POST\n", "text/plain")


async def _admin_post(api: AdminApi, stream: trio.SocketStream, request: Request) -> None:
    body = await read_body(stream, request, ADMIN_BODY_BYTES_MAX)
    if body is None:
        return
    try:
        policy = TrafficPolicy.from_json(json.loads(body))
    except PolicyError as exc:
        await respond(stream, 400, f"bad policy: {exc}\n".encode(), "text/plain")
        return
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        await respond(stream, 400, f"body is not a JSON policy: {exc}\n".encode(), "text/plain")
        return
    api.apply(policy)
    await respond(stream, 200, _policy_json(api.policy()), "application/json")


def _authorised(token: bytes, header: str) -> bool:
    """Compare digests in constant time, so neither the token's bytes nor its length leak
    through how long a wrong guess takes."""
    scheme, _, presented = header.partition(" ")
    presented_bytes = presented.strip().encode("latin-1", errors="replace")
    digests = (hashlib.sha256(presented_bytes).digest(), hashlib.sha256(token).digest())
    ok = hmac.compare_digest(*digests)
    return scheme.lower() == "bearer" and ok


def _policy_json(policy: TrafficPolicy) -> bytes:
    return json.dumps(policy.as_json(), sort_keys=True).encode() + b"\n"


def read_admin_token(path: Path, config_file: Path) -> bytes:
    """The admin token, refused (as a config error naming `status.admin_token_file`) when the
    file is missing, readable by others, or not 32..1024 printable non-space characters."""

    def problem(text: str) -> ConfigError:
        return ConfigError(config_file, "status.admin_token_file", f"{path}: {text}")

    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise problem("file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise problem(f"cannot read: {exc}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise problem(f"readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    lo, hi = TOKEN_CHARS
    if not lo <= len(text) <= hi or not all("!" <= ch <= "~" for ch in text):
        raise problem(f"expected {lo}..{hi} printable characters without spaces")
    return text.encode()
