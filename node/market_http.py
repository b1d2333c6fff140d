"""The market's routes on the node's loopback status endpoint (see node/status_http.py):

GET /jobs[?submitter=<hex>&limit=N]  jobs in id order with counts by status
GET /job/<hex>                       one job's record (404 if unknown)
GET /result/<hex>                    a settled job's result array (.npy bytes), fetched from a
                                     winning replica if this node did not run it and checked
                                     against the committed digest (404 / 409 otherwise)
GET /offers                          committed capacity offers and what replicas hold
GET /uptime[?node=<hex>]             measured availability per node and for the network
GET /prices                          each GPU class's price, supply, demand, utilisation
POST /blob                           store a job input (body: its bytes, at most 3 MiB);
                                     answers {"hash": <hex SHA-256>}, its name in SubmitJob
GET /blob/<hex>                      a stored input
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from consensus.ledger.state import LedgerState
from node.blobs import BLOB_BYTES_MAX
from node.chain_service import ChainService
from node.job_runner import JobRunner
from node.job_views import job_view, jobs_view, offers_view, prices_view, uptime_view
from node.status_http import Request, hex32, read_body, respond, respond_json

JOBS_LIMIT_MAX = 1_000
MARKET_PATHS = ("/jobs", "/offers", "/uptime", "/prices", "/blob")
MARKET_PREFIXES = ("/job/", "/result/", "/blob/")


@dataclass(frozen=True)
class MarketApi:
    jobs: Callable[[bytes | None, int], dict[str, object]]
    job: Callable[[bytes], dict[str, object] | None]
    result: Callable[[bytes], Awaitable[bytes | None]]
    offers: Callable[[], dict[str, object]]
    uptime: Callable[[bytes | None], dict[str, object]]
    prices: Callable[[], dict[str, object]]
    put_blob: Callable[[bytes], bytes]
    get_blob: Callable[[bytes], bytes | None]


def market_api(chain: ChainService, jobs: JobRunner) -> MarketApi:
    """The routes' view of a running node: committed state at the head, results via the
    runner (local store, else a winning replica)."""

    def state() -> LedgerState:
        if chain.engine is None:
            raise RuntimeError("the chain service is not running")  # our bug
        return chain.engine.chain.state

    return MarketApi(
        jobs=lambda submitter, limit: jobs_view(state(), submitter, limit),
        job=lambda job: job_view(state(), job),
        result=jobs.fetch_result,
        offers=lambda: offers_view(state()),
        uptime=lambda node: uptime_view(state(), jobs.block_ms(), node),
        prices=lambda: prices_view(state()),
        put_blob=jobs.blobs.put,
        get_blob=jobs.blobs.get,
    )


def is_market_path(path: str) -> bool:
    return path in MARKET_PATHS or path.startswith(MARKET_PREFIXES)


async def serve_market(
    api: MarketApi, stream: trio.SocketStream, request: Request, path: str,
    query: dict[str, list[str]],
) -> None:  # fmt: skip
    if path == "/blob":
        await _post_blob(api, stream, request)
    elif request.method != "GET":
        await respond(stream, 405, b"only GET\n", "text/plain")
    elif path.startswith("/blob/"):
        digest = hex32(path.removeprefix("/blob/"))
        # reading and re-hashing up to 3 MiB: off the event loop, as uploads are
        data = await trio.to_thread.run_sync(api.get_blob, digest) if digest is not None else None
        if data is None:
            await respond_json(stream, 404, {"error": "no such blob here"})
        else:
            await respond(stream, 200, data, "application/octet-stream")
    elif path == "/offers":
        await respond_json(stream, 200, api.offers())
    elif path == "/prices":
        await respond_json(stream, 200, api.prices())
    elif path == "/uptime":
        node = None
        if "node" in query:
            node = hex32(query["node"][0])
            if node is None:
                await respond_json(stream, 400, {"error": "node must be 64 hex digits"})
                return
        await respond_json(stream, 200, api.uptime(node))
    elif path == "/jobs":
        submitter = None
        if "submitter" in query:
            submitter = hex32(query["submitter"][0])
            if submitter is None:
                await respond_json(stream, 400, {"error": "submitter must be 64 hex digits"})
                return
        try:
            limit = min(int(query.get("limit", [str(JOBS_LIMIT_MAX)])[0]), JOBS_LIMIT_MAX)
        except ValueError:
            await respond_json(stream, 400, {"error": "limit must be an integer"})
            return
        await respond_json(stream, 200, api.jobs(submitter, max(limit, 0)))
    else:
        prefix = "/job/" if path.startswith("/job/") else "/result/"
        job = hex32(path.removeprefix(prefix))
        if job is None:
            await respond_json(stream, 400, {"error": f"expected {prefix}<64 hex digits>"})
            return
        view = api.job(job)
        if view is None:
            await respond_json(stream, 404, {"error": "unknown job", "job_id": job.hex()})
        elif prefix == "/job/":
            await respond_json(stream, 200, view)
        elif view["status"] != "settled":
            await respond_json(stream, 409, {"error": f"job is {view['status']}, not settled"})
        else:
            data = await api.result(job)
            if data is None:
                problem = "no replica served a result matching the committed digest"
                await respond_json(stream, 502, {"error": problem, "job_id": job.hex()})
            else:
                await respond(stream, 200, data, "application/octet-stream")


async def _post_blob(api: MarketApi, stream: trio.SocketStream, request: Request) -> None:
    if request.method != "POST":
        await respond(stream, 405, b"/blob takes POST\n", "text/plain")
        return
    body = await read_body(stream, request, BLOB_BYTES_MAX)
    if body is not None:
        digest = await trio.to_thread.run_sync(api.put_blob, body)
        await respond_json(stream, 200, {"hash": digest.hex(), "bytes": len(body)})
