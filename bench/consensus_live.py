"""Consensus throughput and commit latency on real node processes: committees of 4 and 16
nodes on 127.0.0.1 over libp2p, every node a member (committee_size = nodes).

The live half of the consensus benchmark (bench/consensus.py is the simulator half). Per
committee size one local swarm with a chain (`Swarm.create(chain=True)`, short empty blocks,
64+ funded users), started and awaited until every node has committed height 2. Then, per
offered rate, signed transfers are offered open-loop at a fixed rate for a fixed time:
round-robin over the users (nonces tracked here, a refused nonce reissued), each POSTed as
raw bytes to a random node's /tx, with a bounded number of requests in flight. Commits are
learnt by following one node's chain: long-polling /status?wait_height=H and reading
/block/<h>, whose "txs" lists the committed transaction ids (SHA-256 of the bytes sent).
Figures are taken over the measuring window after a warm-up: offered and committed tx/s
(committed counts only the load generator's transactions, in blocks seen in the window; the
nodes' own heartbeats and offers are reported apart as node_txs_per_s), latency from
submission to commit seen at the followed node (p50, p99), blocks/s, txs/block, refusals by
code, CPU% and RSS per node process, the whole machine's busy CPU and the load
generator's own CPU.

Everything shares one machine: on 2 cores the node processes and the load generator
(signing, HTTP) compete for the same CPUs, so these are figures for that machine, not for a
committee with a machine per member. Targets (from the issue, 2 cores), reported, never
asserted: n=4 >= 2,000 tx/s with p99 <= 0.5 s; n=16 >= 500 tx/s with p99 <= 2 s.

    python bench/consensus_live.py                     # n=4 at 200, 500 tx/s; n=16 at 100, 200
    python bench/consensus_live.py --sizes 4 --rates 1000,2000 --duration 30
    python bench/consensus_live.py --sizes 4 --rates 2000 --keep-alive  # one tx per POST, kept
    python bench/consensus_live.py --sizes 4 --rates 2000 --batch 20   # POST /txs, 20 a time
    python bench/consensus_live.py --quick --json      # n=4, 50 tx/s, ~5 s (make test)

By default every transaction is its own POST /tx on a new connection, as a naive client
does. --keep-alive posts over kept HTTP/1.1 connections (a client session; the node keeps a
connection open for the next transaction when asked). With --batch N the load generator
posts up to N of a node's transactions at once to /txs, as a relayer or a wallet with many
payments would; a transaction's latency still counts from when it was signed, so the wait
for its batch (at most 20 ms) is in the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import trio

from consensus.ledger.tx import Transfer
from p2p.codec import pack
from p2p.identity import Identity
from p2p.keyfile import load_key_file
from p2p.wire import sign
from sim_harness.swarm import LOOPBACK, Swarm
from sim_harness.swarm_genesis import user_key_path

TARGETS = {4: (2_000, 500), 16: (500, 2_000)}
"""committee size -> (tx/s, p99 ms): the issue's 2-core targets."""
DEFAULT_RATES = {4: (200, 500), 16: (100, 200)}
CHAIN_ID = "gpumesh-bench-live"
EMPTY_BLOCK_MS = 200
ANNOUNCE_INTERVAL_MS = 10_000
"""Capacity gossip every 10 s (each announcement live for 30 s), the cadence of
bench/sim_speed.py (whose TTL is 60 s). The swarm's default of 1 s, meant for quick tests, is
16 gossip messages a second at n=16, each delivered to every node several times over: on 2
cores that alone kept 16 idle nodes busy."""
USERS_MIN = 64
IN_FLIGHT_MAX = 64
"""HTTP requests in flight at once; when all are busy the schedule waits (the offered rate
then falls short of the target, which the figures show)."""
BATCH_WINDOW_S = 0.02
"""With --batch, the longest a transaction waits for its batch to fill."""
START_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 120.0
DRAIN_S = 5.0
"""After the load ends, how long to keep following the chain for what is still pending."""
HTTP_TIMEOUT_S = 15.0
CLOCK_TICKS_S = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- HTTP/1.1 over trio (the node answers Connection: close) ---------------------------------


def request_head(method: str, port: int, path: str, length: int, connection: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Length: {length}\r\n"
        f"Content-Type: application/octet-stream\r\nConnection: {connection}\r\n\r\n"
    ).encode()


def decode_response(status_line: bytes, payload: bytes, what: str) -> tuple[int, Any]:
    """(status code, JSON body, or {"error": text} when the body is not JSON)."""
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        # a starved node gives up reading a request after 5 s and closes without a word
        raise ConnectionError(f"no HTTP answer to {what}")
    try:
        return int(parts[1]), json.loads(payload)
    except ValueError:
        return int(parts[1]), {"error": payload.decode("utf-8", "replace").strip()}


async def http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """(status code, JSON body) of one request to a node's loopback endpoint."""
    with trio.fail_after(HTTP_TIMEOUT_S):
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        async with stream:
            await stream.send_all(request_head(method, port, path, len(body), "close") + body)
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    status_line, _, rest = b"".join(chunks).partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return decode_response(status_line, payload, f"{method} {path} on port {port}")


HTTP_ERRORS = (OSError, trio.BrokenResourceError, trio.TooSlowError, ValueError)
"""What a request to a node may raise when the node is busy, restarting or gone: counted or
retried by the caller. trio reports a connection reset by the node as BrokenResourceError,
which is no OSError: on a saturated host it ended a whole run with a traceback."""


class StaleConnection(ConnectionError):
    """A kept connection the node had closed: nothing came back, so nothing was taken in."""


class KeptHttp:
    """POSTs over kept connections (HTTP/1.1 keep-alive), a few per node, reused one request
    at a time: what a wallet or relayer with a session does. A connection that fails or
    that the node answers with `Connection: close` is dropped, not reused."""

    def __init__(self) -> None:
        self.idle: dict[int, list[trio.SocketStream]] = {}

    async def post(self, port: int, path: str, body: bytes) -> tuple[int, Any]:
        pool = self.idle.setdefault(port, [])
        if pool:
            try:
                return await self._post_on(pool.pop(), port, path, body)
            except StaleConnection:
                pass  # the node closed it while idle (after 15 s): go again on a fresh one
        return await self._post_on(await trio.open_tcp_stream(LOOPBACK, port), port, path, body)

    async def _post_on(
        self, stream: trio.SocketStream, port: int, path: str, body: bytes
    ) -> tuple[int, Any]:
        pool = self.idle.setdefault(port, [])
        head = request_head("POST", port, path, len(body), "keep-alive")
        try:
            with trio.fail_after(HTTP_TIMEOUT_S):
                try:
                    await stream.send_all(head + body)
                except trio.BrokenResourceError:
                    raise StaleConnection(f"port {port} closed the connection") from None
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        if not data:
                            raise StaleConnection(f"port {port} closed the connection")
                        raise ConnectionError(f"port {port} closed inside a response head")
                    data += chunk
                raw_head, _, payload = data.partition(b"\r\n\r\n")
                lines = raw_head.decode("latin-1").split("\r\n")
                fields = {k.strip().lower(): v.strip() for k, _, v in
                          (line.partition(":") for line in lines[1:])}  # fmt: skip
                length = int(fields.get("content-length", "0"))
                while len(payload) < length:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise ConnectionError(f"port {port} closed inside a response")
                    payload += chunk
        except BaseException:
            await stream.aclose()
            raise
        if fields.get("connection", "").lower() == "keep-alive" and len(payload) == length:
            pool.append(stream)
        else:
            await stream.aclose()
        return decode_response(lines[0].encode("latin-1"), payload, f"POST {path} on port {port}")

    async def close(self) -> None:
        for pool in self.idle.values():
            for stream in pool:
                await stream.aclose()
        self.idle.clear()


# -- /proc figures ---------------------------------------------------------------------------


def proc_figures(pid: int | None) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of a live process, from /proc; zeros once it is gone."""
    if pid is None:
        return 0.0, 0.0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    rss_kib = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
    )
    return rss_kib / 1024, (int(stat[11]) + int(stat[12])) / CLOCK_TICKS_S


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / CLOCK_TICKS_S, total / CLOCK_TICKS_S


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# -- the load ---------------------------------------------------------------------------------


class Users:
    """Funded accounts that send transfers round-robin, each with its own nonce sequence.
    A nonce whose transaction was refused (or whose fate is unknown) is reissued next."""

    def __init__(self, ids: list[Identity], nonces: list[int], chain_id: str, fee: int) -> None:
        self.ids, self.next_nonce, self.fee = ids, nonces, fee
        self.chain_id = chain_id.encode()
        self.gaps: list[list[int]] = [[] for _ in ids]
        self.turn = 0

    def next_tx(self) -> tuple[int, int, bytes]:
        """(user, nonce, signed transaction bytes)."""
        u = self.turn
        self.turn = (self.turn + 1) % len(self.ids)
        if self.gaps[u]:
            nonce = heapq.heappop(self.gaps[u])
        else:
            nonce = self.next_nonce[u]
            self.next_nonce[u] += 1
        to = self.ids[(u + 1) % len(self.ids)].public_key
        record = Transfer(nonce=nonce, fee=self.fee, to=to, amount=1)
        return u, nonce, sign(record, self.ids[u], self.chain_id).encode()

    def reissue(self, user: int, nonce: int) -> None:
        if nonce not in self.gaps[user]:
            heapq.heappush(self.gaps[user], nonce)


@dataclass
class Phase:
    """What one offered rate did, in the load generator's clock (trio.current_time())."""

    rate: float
    t0: float
    warmup_s: float
    duration_s: float
    sent: dict[str, float] = field(default_factory=dict)
    """tx id (hex) -> submission time, for every transaction the node accepted."""
    submitted: list[float] = field(default_factory=list)
    """Submission time of every request made (accepted or not)."""
    refused: Counter[str] = field(default_factory=Counter)
    commits: dict[str, float] = field(default_factory=dict)
    """tx id -> time its block was first seen committed at the followed node."""
    blocks: list[tuple[float, int, int, int]] = field(default_factory=list)
    """(seen, height, txs, of which ours) of every block committed while following: the
    others are the nodes' own (heartbeats, offers), counted apart."""
    load_done: bool = False
    cpu: dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> tuple[float, float]:
        start = self.t0 + self.warmup_s
        return start, start + self.duration_s


def record_verdict(
    phase: Phase, users: Users, user: int, nonce: int, tx_id: str, started: float,
    code: int, doc: dict[str, Any],
) -> None:  # fmt: skip
    """What the node said of one transaction: accepted (its submission time is kept), or
    refused (counted by code; the nonce is reissued unless it was used after all)."""
    if code == 200 and doc.get("accepted"):
        phase.sent[tx_id] = started
        return
    reason = str(doc.get("code") or f"http_{code}")
    phase.refused[reason] += 1
    used = reason == "bad_nonce" and "was used" in str(doc.get("reason", ""))
    if reason != "already_pending" and not used:
        users.reissue(user, nonce)


async def offer_load(
    phase: Phase, users: Users, ports: list[int], rng: random.Random, in_flight: int,
    batch: int = 1, keep_alive: bool = False,
) -> None:  # fmt: skip
    """Submit at `phase.rate` from t0 until the window ends, each transaction to a random
    node: one POST /tx per transaction, or (`batch` > 1) POST /txs of up to `batch` of a
    node's transactions, sent when full or BATCH_WINDOW_S after its first (a transaction's
    latency counts from when it was made, so the wait in a batch is in the figures)."""
    total = int(phase.rate * (phase.warmup_s + phase.duration_s))
    slots = trio.Semaphore(in_flight)
    Item = tuple[int, int, bytes, float]  # user, nonce, signed bytes, made at
    kept = KeptHttp() if keep_alive else None

    async def post(port: int, path: str, body: bytes) -> tuple[int, Any]:
        if kept is not None:
            return await kept.post(port, path, body)
        return await http(port, "POST", path, body)

    async def submit(items: list[Item], port: int) -> None:
        try:
            try:
                if batch == 1:
                    code, doc = await post(port, "/tx", items[0][2])
                    docs = [doc]
                else:
                    code, doc = await post(port, "/txs", pack([i[2] for i in items]))
                    docs = doc.get("verdicts") or [doc] * len(items)
                    if len(docs) != len(items):
                        raise ValueError(f"{len(docs)} verdicts for {len(items)} transactions")
            except (*HTTP_ERRORS, IndexError) as exc:
                phase.refused[f"http_error:{type(exc).__name__}"] += len(items)
                for user, nonce, _, _ in items:
                    users.reissue(user, nonce)  # fate unknown: a duplicate is refused harmlessly
                return
            for (user, nonce, data, started), verdict in zip(items, docs, strict=True):
                tx_id = hashlib.sha256(data).hexdigest()  # as the node names it
                record_verdict(phase, users, user, nonce, tx_id, started, code, verdict)
        finally:
            slots.release()

    pending: dict[int, list[Item]] = {port: [] for port in ports}

    async def flush(port: int, nursery: trio.Nursery) -> None:
        items, pending[port] = pending[port], []
        await slots.acquire()
        nursery.start_soon(submit, items, port)

    async def flush_due(now: float, nursery: trio.Nursery) -> None:
        for p in ports:
            queue = pending[p]
            if queue and (len(queue) >= batch or now - queue[0][3] >= BATCH_WINDOW_S):
                await flush(p, nursery)

    async with trio.open_nursery() as nursery:
        for i in range(total):
            made_at = phase.t0 + i / phase.rate
            # A batch that would outwait its window before the next transaction is made
            # goes when its window ends (at low rates), not with that transaction.
            while due := [q[0][3] + BATCH_WINDOW_S for q in pending.values() if q]:
                if min(due) >= made_at:
                    break
                await trio.sleep_until(min(due))
                await flush_due(trio.current_time(), nursery)
            await trio.sleep_until(made_at)
            now = trio.current_time()
            user, nonce, data = users.next_tx()
            port = rng.choice(ports)
            phase.submitted.append(now)
            pending[port].append((user, nonce, data, now))
            await flush_due(now, nursery)
        for p in ports:
            if pending[p]:
                await flush(p, nursery)
    if kept is not None:
        await kept.close()
    phase.load_done = True


async def follow_chain(phase: Phase, port: int, height: int, drain_s: float) -> int:
    """Record commit times from the followed node until the load is done and everything it
    accepted has committed, or `drain_s` after the window ends; returns the last height."""
    hard_stop = phase.window[1] + drain_s
    while trio.current_time() < hard_stop:
        if phase.load_done and all(t in phase.commits for t in phase.sent):
            break
        try:
            _, snap = await http(port, "GET", f"/status?wait_height={height + 1}&timeout_ms=500")
            seen = trio.current_time()
            head = int(snap.get("chain", {}).get("height", height))
            for h in range(height + 1, head + 1):
                code, block = await http(port, "GET", f"/block/{h}")
                if code != 200:
                    break
                ours = 0
                for tx_id in block["txs"]:
                    phase.commits.setdefault(tx_id, seen)
                    ours += tx_id in phase.sent
                phase.blocks.append((seen, h, len(block["txs"]), ours))
                height = h
        except (*HTTP_ERRORS, KeyError):
            await trio.sleep(0.1)  # the node is unreachable for a moment: retry, bounded above
    return height


async def sample_cpu(phase: Phase, pids: list[int | None]) -> None:
    """CPU seconds of every node, the machine and this process at the window's ends. Per
    process figures are % of one core; machine_busy_percent is % of all cores, and
    other_processes_cpu_percent (% of one core) is what neither the nodes nor the load
    generator used: other work on the machine competing with the run."""
    start, end = phase.window
    await trio.sleep_until(start)
    before = [proc_figures(p)[1] for p in pids], machine_cpu(), own_cpu_s(), trio.current_time()
    await trio.sleep_until(end)
    after = [proc_figures(p) for p in pids], machine_cpu(), own_cpu_s(), trio.current_time()
    span = after[3] - before[3]
    node_pct = [100 * (a[1] - b) / span for a, b in zip(after[0], before[0], strict=True)]
    busy = (after[1][0] - before[1][0]) / max(1e-9, after[1][1] - before[1][1])
    loadgen_pct = 100 * (after[2] - before[2]) / span
    phase.cpu = {
        "cpu_percent_per_node_mean": round(float(np.mean(node_pct)), 1),
        "cpu_percent_per_node_max": round(max(node_pct), 1),
        "cpu_percent_nodes_total": round(sum(node_pct), 1),
        "loadgen_cpu_percent": round(loadgen_pct, 1),
        "machine_busy_percent": round(100 * busy, 1),
        "other_processes_cpu_percent": round(
            max(0.0, 100 * busy * CORES - sum(node_pct) - loadgen_pct), 1
        ),
        "rss_mib_per_node_mean": round(float(np.mean([a[0] for a in after[0]])), 1),
        "rss_mib_per_node_max": round(max(a[0] for a in after[0]), 1),
    }


async def wait_height(ports: list[int], height: int, timeout_s: float) -> list[int]:
    """Long-poll every node's /status until its chain reaches `height`; their heights."""
    deadline = trio.current_time() + timeout_s
    heights = [0] * len(ports)

    async def one(i: int, port: int) -> None:
        while heights[i] < height and (left := deadline - trio.current_time()) > 0:
            wait_ms = int(min(left, 10.0) * 1000)
            try:
                _, snap = await http(
                    port, "GET", f"/status?wait_height={height}&timeout_ms={wait_ms}"
                )
            except HTTP_ERRORS:
                await trio.sleep(0.2)  # not listening yet: retry until the deadline
                continue
            chain = snap.get("chain")
            if isinstance(chain, dict):
                heights[i] = int(chain.get("height", 0))
            if heights[i] < height and not isinstance(chain, dict):
                await trio.sleep(0.2)  # no chain view yet; /status answered at once

    async with trio.open_nursery() as nursery:
        for i, port in enumerate(ports):
            nursery.start_soon(one, i, port)
    return heights


async def drive(
    swarm: Swarm, n: int, rates: list[float], duration_s: float, warmup_s: float, seed: int,
    batch: int = 1, keep_alive: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Wait for height 2 everywhere, then offer each rate in turn; a size whose chain never
    gets going within READY_TIMEOUT_S is reported (with what the nodes were doing), not run."""
    ports = [node.status_port for node in swarm.nodes]
    pids = [node.pid for node in swarm.nodes]
    t_ready = trio.current_time()
    cpu_before, machine_before = [proc_figures(p)[1] for p in pids], machine_cpu()
    heights = await wait_height(ports, 2, READY_TIMEOUT_S)
    ready_s = trio.current_time() - t_ready
    if min(heights) < 2:
        return {"ready_s": round(ready_s, 1), "runs": [], "not_ready": await stuck(
            ports, pids, heights, ready_s, cpu_before, machine_before)}  # fmt: skip
    _, snap = await http(ports[0], "GET", "/status")
    fee = int(snap["chain"]["min_fee"])
    height = int(snap["chain"]["height"])
    count = sum(1 for _ in (swarm.root / "users").glob("user*.key"))
    ids = [load_key_file(user_key_path(swarm.root, i)) for i in range(count)]
    nonces = []
    for ident in ids:
        _, view = await http(ports[0], "GET", f"/account/{ident.public_key.hex()}")
        nonces.append(int(view["nonce"]))
    users = Users(ids, nonces, CHAIN_ID, fee)
    rng = random.Random(seed)
    out = []
    for rate in rates:
        log(f"  n={n}: offering {rate:g} tx/s for {warmup_s:g} s warm-up + {duration_s:g} s")
        phase = Phase(rate, trio.current_time() + 0.2, warmup_s, duration_s)
        nodes_before = await node_figures(ports)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                offer_load, phase, users, ports, rng, IN_FLIGHT_MAX, batch, keep_alive
            )
            nursery.start_soon(sample_cpu, phase, [node.pid for node in swarm.nodes])
            height = await follow_chain(phase, ports[0], height, DRAIN_S)
        phase.cpu.update(node_delta(nodes_before, await node_figures(ports)))
        out.append(figures(n, phase))
    return {"ready_s": round(ready_s, 1), "runs": out}


async def node_figures(ports: list[int]) -> list[dict[str, Any] | None]:
    """Each node's garbage-collector figures ("gc": node/gc_pauses.py) and the rounds past
    the first that its commits needed (chain.service "rounds_failed"), from /status."""
    out: list[dict[str, Any] | None] = []
    for port in ports:
        try:
            _, snap = await http(port, "GET", "/status")
            service = snap.get("chain", {}).get("service", {})
            out.append({"gc": snap.get("gc"), "rounds_failed": service.get("rounds_failed", 0)})
        except (OSError, ValueError, KeyError, AttributeError):
            out.append(None)
    return out


def node_delta(
    before: list[dict[str, Any] | None], after: list[dict[str, Any] | None]
) -> dict[str, Any]:
    """What the nodes did during one rate: full (generation 2) collections per node, the
    most pause time any node spent collecting (all generations), the longest single full
    collection on any node since it started, and the most failed rounds any node committed
    through (a round that ended without a decision: a timeout, a slow or silent proposer)."""
    full, paused, longest, rounds = [], [], [], []
    for b, a in zip(before, after, strict=True):
        if not a or not b:
            continue
        rounds.append(a["rounds_failed"] - b["rounds_failed"])
        if not a["gc"] or not b["gc"]:
            continue
        gens_b, gens_a = b["gc"]["generations"], a["gc"]["generations"]
        full.append(gens_a[2]["collections"] - gens_b[2]["collections"])
        paused.append(sum(ga["pause_ms_total"] - gb["pause_ms_total"]
                          for ga, gb in zip(gens_a, gens_b, strict=True)))  # fmt: skip
        longest.append(gens_a[2]["pause_ms_max"])
    out: dict[str, Any] = {"rounds_failed": max(rounds)} if rounds else {}
    if full:
        out.update({
            "gc_full_collections_per_node": round(float(np.mean(full)), 1),
            "gc_pause_ms_node_max": round(max(paused), 1),
            "gc_longest_full_pause_ms": max(longest),
        })  # fmt: skip
    return out


async def stuck(
    ports: list[int],
    pids: list[int | None],
    heights: list[int],
    waited_s: float,
    cpu_before: list[float],
    machine_before: tuple[float, float],
) -> dict[str, Any]:
    """What a committee that did not reach height 2 was doing: heights, rounds, the first
    node's consensus frame counters, CPU per node and the machine's busy share while waiting."""
    machine_after = machine_cpu()
    cpu = [100 * (proc_figures(p)[1] - b) / waited_s for p, b in zip(pids, cpu_before, strict=True)]
    rounds: list[object] = []
    frames: Any = None
    for i, port in enumerate(ports):
        try:
            _, snap = await http(port, "GET", "/status")
        except HTTP_ERRORS:
            rounds.append(None)
            continue
        chain = snap.get("chain") if isinstance(snap.get("chain"), dict) else {}
        rounds.append(chain.get("round"))
        if i == 0:
            frames = {"frames": chain.get("frames"), "service": chain.get("service"),
                      "peers": len(snap.get("peers", []))}  # fmt: skip
    busy = (machine_after[0] - machine_before[0]) / max(1e-9, machine_after[1] - machine_before[1])
    return {
        "waited_s": round(waited_s, 1),
        "heights": heights,
        "rounds": rounds,
        "node0": frames,
        "cpu_percent_per_node_mean": round(float(np.mean(cpu)), 1),
        "machine_busy_percent": round(100 * busy, 1),
    }


def figures(n: int, phase: Phase) -> dict[str, Any]:
    start, end = phase.window
    window = end - start
    in_window = [b for b in phase.blocks if start <= b[0] < end]
    committed = sum(ours for _, _, _, ours in in_window)
    all_txs = sum(k for _, _, k, _ in in_window)
    lat = np.array(
        [
            phase.commits[t] - s
            for t, s in phase.sent.items()
            if start <= s < end and t in phase.commits
        ]
    )
    accepted_in_window = sum(1 for s in phase.sent.values() if start <= s < end)
    offered = sum(1 for s in phase.submitted if start <= s < end)
    out: dict[str, Any] = {
        "committee": n,
        "target_offered_tx_per_s": phase.rate,
        "offered_tx_per_s": round(offered / window, 1),
        "committed_tx_per_s": round(committed / window, 1),
        "node_txs_per_s": round((all_txs - committed) / window, 1),
        "commit_p50_ms": round(1000 * float(np.percentile(lat, 50))) if lat.size else None,
        "commit_p99_ms": round(1000 * float(np.percentile(lat, 99))) if lat.size else None,
        "commit_max_ms": round(1000 * float(lat.max())) if lat.size else None,
        "accepted_in_window": accepted_in_window,
        "uncommitted_in_window": accepted_in_window - int(lat.size),
        "blocks_per_s": round(len(in_window) / window, 2),
        "txs_per_block": round(all_txs / len(in_window), 1) if in_window else 0.0,
        "refused": dict(sorted(phase.refused.items())),
        "refused_total": sum(phase.refused.values()),
        "window_s": round(window, 1),
        **phase.cpu,
    }
    target = TARGETS.get(n)
    if target is not None:
        p99 = out["commit_p99_ms"]
        out["target_tx_per_s"], out["target_p99_ms"] = target
        out["p99_within_target"] = p99 is not None and p99 <= target[1]
        out["meets_target"] = bool(out["committed_tx_per_s"] >= 0.98 * target[0]) and bool(
            out["p99_within_target"]
        )
    return out


def run_size(
    n: int, rates: list[float], duration_s: float, warmup_s: float, root: Path, seed: int,
    batch: int = 1, keep_alive: bool = False,
) -> dict[str, Any]:  # fmt: skip
    users = max(USERS_MIN, int(max(rates)) // 4)
    started = time.monotonic()
    swarm = Swarm.create(
        root / f"n{n}",
        n,
        chain=True,
        chain_id=CHAIN_ID,
        committee_size=n,
        users=users,
        epoch_blocks=100_000,
        empty_block_ms=EMPTY_BLOCK_MS,
        announce_interval_ms=ANNOUNCE_INTERVAL_MS,
        announcement_ttl_ms=3 * ANNOUNCE_INTERVAL_MS,
    )
    try:
        swarm.start(timeout_s=START_TIMEOUT_S)
        start_s = time.monotonic() - started
        log(f"n={n}: {n} node processes up in {start_s:.1f} s; waiting for height 2 on each")
        driven = trio.run(drive, swarm, n, rates, duration_s, warmup_s, seed, batch, keep_alive)
    finally:
        swarm.stop()
    left = swarm.running()
    if left:
        raise SystemExit(f"n={n}: processes left running: {[x.name for x in left]}")
    return {
        "committee": n,
        "users": users,
        "start_s": round(start_s, 1),
        "wall_s": round(time.monotonic() - started, 1),
        **driven,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4,16", help="committee sizes (nodes), comma-separated")
    parser.add_argument(
        "--rates",
        default=None,
        help="offered tx/s for every size (default: 200,500 at n=4; "
        "100,200 at n=16; 100,200 otherwise)",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="transactions per request: 1 posts each to /tx (the default), N > 1 posts up "
        "to N of a node's transactions at once to /txs (as a relayer or wallet would)",
    )
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="post over kept HTTP connections (a session), not a new connection per request",
    )
    parser.add_argument("--quick", action="store_true", help="n=4 at 50 tx/s for ~5 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    sizes = [4] if args.quick else [int(x) for x in args.sizes.split(",")]
    duration = 4.0 if args.quick else args.duration
    warmup = 1.0 if args.quick else args.warmup
    cores = CORES
    machine = (
        f"{cores} cores shared by all node processes and the load generator (signing, HTTP): "
        "figures for this machine, not for a machine per member"
    )
    print(f"consensus_live: real node processes on {LOOPBACK} over libp2p; {machine}", flush=True)
    started = time.monotonic()
    sizes_out = []
    with tempfile.TemporaryDirectory(prefix="gpumesh-bench-consensus-live-") as tmp:
        for n in sizes:
            if args.quick:
                rates = [50.0]
            elif args.rates:
                rates = [float(x) for x in args.rates.split(",")]
            else:
                rates = [float(x) for x in DEFAULT_RATES.get(n, (100, 200))]
            size = run_size(
                n, rates, duration, warmup, Path(tmp), args.seed, args.batch, args.keep_alive
            )
            sizes_out.append(size)
            for r in size["runs"]:
                print(
                    f"n={n:>2} offered {r['offered_tx_per_s']:>6} tx/s "
                    f"(target {r['target_offered_tx_per_s']:g}): committed "
                    f"{r['committed_tx_per_s']:>6} tx/s, p50 {r['commit_p50_ms']} ms, "
                    f"p99 {r['commit_p99_ms']} ms, {r['blocks_per_s']} blocks/s x "
                    f"{r['txs_per_block']} txs (nodes' own {r['node_txs_per_s']} tx/s), "
                    f"refused {r['refused_total']} {r['refused']}, "
                    f"uncommitted {r['uncommitted_in_window']}, CPU/node "
                    f"{r.get('cpu_percent_per_node_mean')}% (max "
                    f"{r.get('cpu_percent_per_node_max')}%), loadgen "
                    f"{r.get('loadgen_cpu_percent')}%, machine busy "
                    f"{r.get('machine_busy_percent')}% (others "
                    f"{r.get('other_processes_cpu_percent')}%), RSS/node "
                    f"{r.get('rss_mib_per_node_mean')} MiB, GC: "
                    f"{r.get('gc_full_collections_per_node')} full collections/node, "
                    f"longest {r.get('gc_longest_full_pause_ms')} ms, failed rounds "
                    f"{r.get('rounds_failed')}, meets target "
                    f"{r.get('meets_target', '-')} (p99 within target "
                    f"{r.get('p99_within_target', '-')})",
                    flush=True,
                )
            if "not_ready" in size:
                nr = size["not_ready"]
                print(
                    f"n={n:>2}: NOT MEASURED: height 2 not reached on every node within "
                    f"{nr['waited_s']} s (heights {nr['heights']}, rounds {nr['rounds']}); "
                    f"CPU/node {nr['cpu_percent_per_node_mean']}%, machine busy "
                    f"{nr['machine_busy_percent']}%; node-0 {nr['node0']}",
                    flush=True,
                )
            print(
                f"n={n:>2}: processes up in {size['start_s']} s, waited {size['ready_s']} s "
                f"for height 2 on all, {size['wall_s']} s wall for this size",
                flush=True,
            )
    wall = round(time.monotonic() - started, 1)
    print(f"total wall {wall} s", flush=True)
    if args.json:
        doc = {
            "benchmark": "consensus_live",
            "mode": "real node processes on loopback, libp2p",
            "machine": machine,
            "cpu_count": cores,
            "duration_s": duration,
            "warmup_s": warmup,
            "empty_block_ms": EMPTY_BLOCK_MS,
            "in_flight_max": IN_FLIGHT_MAX,
            "batch": args.batch,
            "keep_alive": args.keep_alive,
            "targets": {str(k): {"tx_per_s": v[0], "p99_ms": v[1]} for k, v in TARGETS.items()},
            "sizes": sizes_out,
            "wall_s": wall,
        }
        print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
