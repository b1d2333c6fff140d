"""The market half of `gpumesh demo`: real jobs through a live swarm, end to end.

Twenty jobs of the three kinds (eight tiles of one rendered image, six matrix products,
six network forward passes), each on two replicas, are signed by the swarm's user keys and
submitted exactly as `gpumesh job submit` does; a progress bar follows them to settlement.
Then: the table of assignments, verdicts and payments; the operators' balances, pools and
slashes; their measured uptime; and the eight tiles fetched from the replicas (checked
against their committed digests) and stitched into one PNG.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from node.cli_chain_http import NodeClient
from node.cli_job import (
    FINAL,
    fetch_result,
    jobs_table,
    prices_table,
    submit_job,
    uptime_report,
)
from node.job_exec import encode_params, load_output
from node.workloads import inference, matmul, render
from p2p.keyfile import load_key_file
from sim_harness.swarm import LOOPBACK, Swarm
from sim_harness.swarm_genesis import USERS, user_key_path

IMAGE_W, IMAGE_H, TILE = 256, 128, 64
MATMULS = 6
INFERENCES = 6
REDUNDANCY = 2
PRICE_CAP = 5_000_000
HOURS_MILLI = 10
DEADLINE_BLOCKS = 400


def demo_specs() -> list[tuple[str, Any]]:
    """The twenty jobs: (kind, workload parameters)."""
    specs: list[tuple[str, Any]] = [
        ("render", render.RenderParams(11, IMAGE_W, IMAGE_H, x, y, TILE, TILE))
        for y in range(0, IMAGE_H, TILE)
        for x in range(0, IMAGE_W, TILE)
    ]
    specs += [("matmul", matmul.MatmulParams(n=256, seed=s)) for s in range(MATMULS)]
    sizes = (64, 256, 256, 10)
    weights = inference.weights_hash(inference.generate_weights(5, sizes))
    specs += [
        ("inference", inference.InferenceParams(sizes, 5, weights, s, 64))
        for s in range(INFERENCES)
    ]
    return specs


def run_market_demo(swarm: Swarm, console: Console, *, timeout_s: float = 120.0) -> bool:
    client = NodeClient(f"http://{LOOPBACK}:{swarm.nodes[0].status_port}")
    console.rule("[bold]the market: 20 real jobs, each on 2 replicas, verified and paid")
    with console.status("waiting for every node's GPU offer to be committed on chain"):
        if not _wait_offers(client, len(swarm.nodes), timeout_s):
            console.print("[red]offers were not all committed in time[/]")
            return False
    users = [load_key_file(user_key_path(swarm.root, i)) for i in range(USERS)]
    nonces = {u.public_key: _nonce(client, u.public_key) for u in users}
    height = int(client.chain_status()["height"])
    jobs: list[tuple[str, Any, str]] = []
    specs = demo_specs()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"), console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("jobs submitted", total=len(specs), last="")
        for i, (kind, spec) in enumerate(specs):
            user = users[i % len(users)]
            terms = dict(
                kind=kind, params=encode_params(spec), inputs=(), gpu_model="",
                min_memory_mib=0, gpus=1, region="", max_rtt_ms=0, redundancy=REDUNDANCY,
                deadline_height=height + DEADLINE_BLOCKS, max_price_per_gpu_hour=PRICE_CAP,
                max_hours_milli=HOURS_MILLI,
            )  # fmt: skip
            doc = submit_job(client, user, terms, nonces[user.public_key])
            if not doc["accepted"]:
                console.print(f"[red]refused[/] {kind}: {doc['code']}: {doc['reason']}")
                return False
            nonces[user.public_key] += 1
            jobs.append((kind, spec, doc["job_id"]))
            bar.update(task, advance=1, last=f"{kind} {doc['job_id'][:12]}")
    console.print("(each signed and sent as `gpumesh job submit KIND --key "
                  "swarm/users/userN.key` does)")  # fmt: skip
    views = _follow(client, [j for _, _, j in jobs], console, timeout_s)
    console.print(
        jobs_table(
            [views[j] for _, _, j in jobs if j in views], "assignments, verdicts and payments"
        )
    )
    settled = sum(1 for v in views.values() if v["status"] == "settled")
    console.print(_operators_table(client))
    _, prices = client._call("/prices")
    console.print(prices_table(prices))
    _, uptime = client._call("/uptime")
    for item in uptime_report(uptime):
        console.print(item, highlight=False)
    image = swarm.root / "render.png"
    tiles = _stitch(client, [(s, j) for k, s, j in jobs if k == "render"], image)
    paid = sum(v["paid"] for v in views.values())
    fees = sum(v["fee_paid"] for v in views.values())
    colour = "green" if settled == len(jobs) else "red"
    console.print(
        f"[bold {colour}]{settled}/{len(jobs)} jobs settled[/]: operators paid {paid}, "
        f"protocol fees {fees}; {tiles} render tiles verified and stitched into {image}"
    )
    return settled == len(jobs)


def _nonce(client: NodeClient, key: bytes) -> int:
    view = client.account(key)
    return int(view["nonce"]) if view else 0


def _wait_offers(client: NodeClient, count: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, doc = client._call("/offers")
        if len(doc["offers"]) >= count:
            return True
        time.sleep(0.3)
    return False


def _follow(
    client: NodeClient, ids: list[str], console: Console, timeout_s: float
) -> dict[str, dict[str, Any]]:
    views: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("jobs settled", total=len(ids), detail="")
        while time.monotonic() < deadline:
            _, doc = client._call("/jobs")
            views = {j["job_id"]: j for j in doc["jobs"] if j["job_id"] in ids}
            done = sum(1 for v in views.values() if v["status"] in FINAL)
            counts: dict[str, int] = {}
            for v in views.values():
                counts[v["status"]] = counts.get(v["status"], 0) + 1
            detail = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
            bar.update(task, completed=done, detail=detail)
            if done == len(ids):
                break
            time.sleep(0.3)
    return views


def _operators_table(client: NodeClient) -> Table:
    ledger = client.ledger()
    balances = {a["account"]: a["balance"] for a in ledger["accounts"]}
    table = Table(title=f"operators at height {ledger['height']} (epoch {ledger['epoch']})")
    for col in ("operator", "balance", "pool (self-stake + delegations + earnings)", "slashed"):
        table.add_column(col, justify="left" if col == "operator" else "right")
    for o in ledger["operators"]:
        table.add_row(o["operator"][:16], str(balances.get(o["operator"], 0)), str(o["pool"]),
                      str(o["slashed_total"]))  # fmt: skip
    return table


def _stitch(client: NodeClient, tiles: list[tuple[Any, str]], out: Path) -> int:
    """Fetch each settled tile (digest-checked) and place it; returns how many came back."""
    image = np.zeros((IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    placed = 0
    for spec, job in tiles:
        try:
            _, data = fetch_result(client, bytes.fromhex(job))
        except Exception:  # a tile that did not settle stays black; the count says so
            continue
        pixels = load_output(data)
        image[spec.y0 : spec.y0 + spec.h, spec.x0 : spec.x0 + spec.w] = pixels
        placed += 1
    out.write_bytes(render.encode_png(image))
    return placed
