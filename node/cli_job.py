"""`gpumesh job submit|status|result|cancel|list`, `gpumesh market offers|prices` and
`gpumesh uptime`: the market through a node's loopback endpoint (no libp2p in the CLI).

A job is signed here with `--key` (its escrow comes from that account) and submitted like any
transaction; its id is `job_id(chain, signer, nonce)`, printed at once. `--wait` follows it
with a progress bar through its phases (pending, assigned, revealing) until it settles,
fails or expires. `job result` fetches a settled job's result array from the node (which
fetches it from a winning replica and checks it against the committed digest), checks it
again here, and writes it as `.npy`, or as a PNG for a render tile.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from node.cli_chain import node_args
from node.cli_chain_http import ChainCliError, NodeClient, parse_account

EXIT_REFUSED = 1
EXIT_FAILED = 1
console = Console(width=None if Console().is_terminal else 120)
err = Console(stderr=True)
PHASES = ("pending", "assigned", "revealing", "settled")
FINAL = frozenset({"settled", "failed", "expired", "cancelled"})
DEFAULT_PRICE = 5_000_000
"""Default price cap per GPU-hour (base units): above the swarm's default asking price."""


def _spec(args: argparse.Namespace) -> Any:
    from node.workloads import inference, matmul, render

    if args.kind == "matmul":
        return matmul.MatmulParams(n=args.n, seed=args.seed)
    if args.kind == "render":
        x0, y0, w, h = (int(v) for v in args.tile.split(","))
        return render.RenderParams(args.seed, args.width, args.height, x0, y0, w, h)
    if args.weights:
        weights = _weights_file(args.weights)
        sizes = (weights[0][0].shape[0], *(w.shape[1] for w, _ in weights))
        digest = inference.weights_hash(weights)
        return inference.InferenceParams(sizes, 0, digest, args.input_seed, args.batch)
    sizes = tuple(int(v) for v in args.layers.split(","))
    digest = inference.weights_hash(inference.generate_weights(args.seed, sizes))
    return inference.InferenceParams(sizes, args.seed, digest, args.input_seed, args.batch)


def _weights_file(path: str) -> Any:
    from node.blobs import weights_from_blob
    from p2p.errors import DecodeError

    try:
        return weights_from_blob(Path(path).read_bytes())
    except (OSError, DecodeError) as exc:
        raise ChainCliError(f"--weights {path}: {exc}") from None


def near_node(client: NodeClient, near: str | None) -> bytes:
    """The node a job is submitted near: --near, else the node the CLI talks to."""
    if near:
        return parse_account(near, "--near")
    from p2p.identity import public_key_from_peer_id

    _, snap = client._call("/status")
    return public_key_from_peer_id(str(snap["peer_id"]))


def upload_blob(client: NodeClient, data: bytes) -> bytes:
    """Store a job input on the node; its content hash (the name a job gives it)."""
    _, doc = client._call("/blob", body=data)
    return bytes.fromhex(doc["hash"])


def _client(args: argparse.Namespace) -> NodeClient:
    return NodeClient.resolve(args.node, args.swarm)


def get_json(client: NodeClient, path: str) -> tuple[int, dict[str, Any]]:
    return client._call(path)  # type: ignore[no-any-return]


def submit_job(
    client: NodeClient, identity: Any, terms: dict[str, Any], nonce: int | None = None
) -> dict[str, Any]:
    """Sign and submit a SubmitJob; the node's verdict with the job id and nonce. Without
    `nonce`, the account's next committed nonce (a caller sending several at once counts
    them itself)."""
    from consensus.ledger.job_records import SubmitJob, job_id
    from p2p.wire import sign

    chain = client.chain_status()
    if nonce is None:
        account = client.account(identity.public_key)
        nonce = int(account["nonce"]) if account else 0
    record = SubmitJob(nonce=nonce, fee=int(chain["min_fee"]), **terms)
    chain_id = str(chain["chain_id"]).encode()
    verdict = client.submit(sign(record, identity, chain_id).encode())
    job = job_id(chain_id, identity.public_key, nonce)
    return {"job_id": job.hex(), "nonce": nonce, "max_cost": record.max_cost, **verdict}


def job_terms(args: argparse.Namespace, height: int) -> dict[str, Any]:
    from node.job_exec import encode_params

    try:
        spec = _spec(args)
    except (ValueError, TypeError) as exc:
        raise ChainCliError(f"{args.kind} parameters: {exc}") from None
    return dict(
        kind=args.kind,
        params=encode_params(spec),
        inputs=(),
        gpu_model=args.gpu_model,
        min_memory_mib=args.min_memory,
        gpus=args.gpus,
        region=args.region,
        max_rtt_ms=args.max_rtt,
        redundancy=args.redundancy,
        deadline_height=height + args.deadline_blocks,
        max_price_per_gpu_hour=args.max_price,
        max_hours_milli=args.hours_milli,
    )


def cmd_job_submit(args: argparse.Namespace) -> int:
    from p2p.keyfile import load_key_file

    identity = load_key_file(Path(args.key))
    client = _client(args)
    height = int(client.chain_status()["height"])
    terms = job_terms(args, height)
    terms["near"] = near_node(client, args.near)
    if args.kind == "inference" and args.weights:
        terms["inputs"] = (upload_blob(client, Path(args.weights).read_bytes()),)
    doc = submit_job(client, identity, terms)
    if not doc["accepted"]:
        _out(args, doc, f"[red]refused[/]: {doc['code']}: {doc['reason']}")
        return EXIT_REFUSED
    if not args.wait:
        _out(args, doc, f"[green]submitted[/] {args.kind} job {doc['job_id']} "
                        f"(escrow {doc['max_cost']})")  # fmt: skip
        return 0
    view = follow(client, bytes.fromhex(doc["job_id"]), args.timeout, show=not args.json)
    doc["job"] = view
    status = view["status"] if view else "unknown"
    _out(args, doc, _summary(view) if view else f"job {doc['job_id']} never appeared")
    return 0 if status == "settled" else EXIT_FAILED


def follow(
    client: NodeClient, job: bytes, timeout_s: float, *, show: bool
) -> dict[str, Any] | None:
    """Poll the job until it reaches a final status or the timeout; a progress bar on stderr
    moves through the phases."""
    deadline = time.monotonic() + timeout_s
    view: dict[str, Any] | None = None
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(), console=err, disable=not show, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"job {job.hex()[:12]}", total=len(PHASES) - 1, phase="submitted")
        while time.monotonic() < deadline:
            code, doc = get_json(client, f"/job/{job.hex()}")
            if code == 200:
                view = doc
                status = doc["status"]
                step = PHASES.index(status) if status in PHASES else len(PHASES) - 1
                bar.update(task, completed=step, phase=_phase_text(doc))
                if status in FINAL:
                    break
            time.sleep(0.25)
    return view


def _phase_text(view: dict[str, Any]) -> str:
    status = view["status"]
    if status == "pending" and view.get("last_reason"):
        return f"pending ({view['last_reason']})"
    if status in ("assigned", "revealing"):
        done = sum(
            1 for r in view["replicas"] if r["committed" if status == "assigned" else "revealed"]
        )
        return f"{status} {done}/{len(view['replicas'])}"
    return str(status)


def _summary(view: dict[str, Any]) -> str:
    status = view["status"]
    colour = "green" if status == "settled" else "red"
    text = f"[{colour}]{status}[/] {view['kind']} job {view['job_id'][:16]}..."
    if status == "settled":
        text += (f": paid {view['paid']} + fee {view['fee_paid']}, refunded {view['refunded']}, "
                 f"billed {view['billed_ms']} ms on {len(view['replicas'])} replicas")  # fmt: skip
        if view.get("audit") == "wanted":
            text += " (one drawn at random to audit"
            if view.get("subsidy"):
                text += f", paid {view['subsidy']} by the protocol, not the escrow"
            text += ")"
    elif view.get("refunded"):
        text += f": refunded {view['refunded']}"
    return text


def cmd_job_weights(args: argparse.Namespace) -> int:
    from node.blobs import weights_to_blob
    from node.workloads import inference

    try:
        sizes = tuple(int(v) for v in args.layers.split(","))
        weights = inference.generate_weights(args.seed, sizes)
    except ValueError as exc:
        raise ChainCliError(f"--layers {args.layers!r}: {exc}") from None
    Path(args.out).write_bytes(weights_to_blob(weights))
    doc = {"out": args.out, "layers": list(sizes), "weights_hash": inference.weights_hash(weights)}
    _out(args, doc, f"wrote {args.out}: layers {list(sizes)}, weights hash "
                    f"{doc['weights_hash'][:16]}...")  # fmt: skip
    return 0


def cmd_job_status(args: argparse.Namespace) -> int:
    client = _client(args)
    job = parse_account(args.job, "JOB")
    code, view = get_json(client, f"/job/{job.hex()}")
    if code == 404:
        raise ChainCliError(f"unknown job {job.hex()}")
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
        return 0
    console.print(_summary(view), highlight=False)
    console.print(replicas_table(view))
    return 0


def replicas_table(view: dict[str, Any]) -> Table:
    table = Table(title=f"job {view['job_id'][:16]}... ({view['status']})")
    for col in ("node", "price/GPU-h", "committed", "revealed", "digest", "runtime ms", "verdict"):
        table.add_column(col)
    result = view.get("result_digest")
    for r in view["replicas"]:
        verdict = (
            "" if not result or not r["digest"] else "win" if r["digest"] == result else "LOSE"
        )
        table.add_row(
            r["node"][:12], str(r["price_per_gpu_hour"]), "yes" if r["committed"] else "",
            "yes" if r["revealed"] else "", (r["digest"] or "")[:12],
            "" if r["runtime_ms"] is None else str(r["runtime_ms"]), verdict,
        )  # fmt: skip
    return table


def cmd_job_list(args: argparse.Namespace) -> int:
    client = _client(args)
    query = (
        f"?submitter={parse_account(args.submitter, 'SUBMITTER').hex()}" if args.submitter else ""
    )
    _, doc = get_json(client, "/jobs" + query)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    console.print(jobs_table(doc["jobs"], f"jobs at height {doc['height']}"))
    console.print(", ".join(f"{k} {v}" for k, v in sorted(doc["by_status"].items())) or "no jobs")
    return 0


def jobs_table(jobs: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("job", "kind", "status", "replicas", "verdict", "paid", "fee", "refunded"):
        table.add_column(col, justify="right" if col in ("paid", "fee", "refunded") else "left")
    for j in jobs:
        result = j.get("result_digest")
        losers = sum(1 for r in j["replicas"] if result and r["digest"] and r["digest"] != result)
        verdict = "" if not result else "agreed" if not losers else f"{losers} slashed"
        if j["tie_breakers"]:
            verdict += f" (+{j['tie_breakers']} tie-breaker)"
        table.add_row(
            j["job_id"][:12], j["kind"], j["status"],
            ",".join(r["node"][:6] for r in j["replicas"]), verdict,
            str(j["paid"]), str(j["fee_paid"]), str(j["refunded"]),
        )  # fmt: skip
    return table


def fetch_result(client: NodeClient, job: bytes) -> tuple[dict[str, Any], bytes]:
    """The job's view and its result bytes, re-checked here against the committed digest."""
    from node.job_exec import output_digest

    code, view = get_json(client, f"/job/{job.hex()}")
    if code == 404:
        raise ChainCliError(f"unknown job {job.hex()}")
    if view["status"] != "settled":
        raise ChainCliError(f"job {job.hex()[:16]}... is {view['status']}: no result yet")
    try:
        with urllib.request.urlopen(f"{client.base}/result/{job.hex()}", timeout=30) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ChainCliError(f"cannot fetch the result: {exc}") from None
    if output_digest(view["kind"], data).hex() != view["result_digest"]:
        raise ChainCliError("the node served bytes that do not match the committed digest")
    return view, data


def cmd_job_result(args: argparse.Namespace) -> int:
    from node.job_exec import load_output
    from node.workloads.render import encode_png

    client = _client(args)
    job = parse_account(args.job, "JOB")
    view, data = fetch_result(client, job)
    out = Path(args.out)
    if view["kind"] == "render" and out.suffix.lower() == ".png":
        out.write_bytes(encode_png(load_output(data)))
    else:
        out.write_bytes(data)
    doc = {"job_id": job.hex(), "out": str(out), "bytes": out.stat().st_size,
           "digest": view["result_digest"]}  # fmt: skip
    _out(args, doc, f"wrote {out} ({doc['bytes']} bytes), digest {view['result_digest'][:16]}... "
                    "checked")  # fmt: skip
    return 0


def cmd_job_cancel(args: argparse.Namespace) -> int:
    from consensus.ledger.job_records import CancelJob
    from p2p.keyfile import load_key_file
    from p2p.wire import sign

    identity = load_key_file(Path(args.key))
    client = _client(args)
    job = parse_account(args.job, "JOB")
    chain = client.chain_status()
    account = client.account(identity.public_key)
    nonce = int(account["nonce"]) if account else 0
    record = CancelJob(nonce=nonce, fee=int(chain["min_fee"]), job_id=job)
    verdict = client.submit(sign(record, identity, str(chain["chain_id"]).encode()).encode())
    doc = {"job_id": job.hex(), **verdict}
    if not verdict["accepted"]:
        _out(args, doc, f"[red]refused[/]: {verdict['code']}: {verdict['reason']}")
        return EXIT_REFUSED
    _out(args, doc, f"[green]cancel accepted[/] for job {job.hex()[:16]}... (refund on commit)")
    return 0


def cmd_market_prices(args: argparse.Namespace) -> int:
    _, doc = get_json(_client(args), "/prices")
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    console.print(prices_table(doc))
    return 0


def prices_table(doc: dict[str, Any]) -> Table:
    table = Table(title=f"GPU class prices at height {doc['height']} (they move at most "
                        f"{doc['max_step_bps'] / 100:.1f}% a block towards "
                        f"{doc['target_utilisation_permille'] / 10:.0f}% utilisation)")  # fmt: skip
    for col in ("class", "price/GPU-h", "supply", "demand", "utilisation"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in doc["classes"]:
        table.add_row(c["gpu_class"], str(c["price_per_gpu_hour"]), str(c["supply_gpus"]),
                      str(c["demand_gpus"]), f"{c['utilisation_permille'] / 10:.1f}%")  # fmt: skip
    return table


def _offer_state(offer: dict[str, Any]) -> str:
    state = "active" if offer["active"] else "inactive"
    return state + (", [yellow]audited[/]" if offer.get("watched") else "")


def cmd_market_offers(args: argparse.Namespace) -> int:
    _, doc = get_json(_client(args), "/offers")
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    table = Table(title=f"committed offers at height {doc['height']}")
    for col in ("node", "gpus", "region", "price/GPU-h", "busy", "state"):
        table.add_column(col)
    for o in doc["offers"]:
        gpus = ", ".join(f"{c}x {m} ({mem // 1024} GiB)" for m, c, mem in o["gpus"])
        table.add_row(o["node"][:12], gpus, o["region"], str(o["price_per_gpu_hour"]),
                      str(o["busy_gpus"]), _offer_state(o))  # fmt: skip
    console.print(table)
    return 0


def cmd_uptime(args: argparse.Namespace) -> int:
    client = NodeClient.resolve(args.via, args.swarm)
    query = f"?node={parse_account(args.node, 'NODE').hex()}" if args.node else ""
    _, doc = get_json(client, "/uptime" + query)
    if args.node and not doc["nodes"]:
        raise ChainCliError(f"no uptime measured for {args.node}: it has never offered capacity")
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    for item in uptime_report(doc):
        console.print(item, highlight=False)
    return 0


def uptime_report(doc: dict[str, Any]) -> list[Table | str]:
    """The per-node table and the network's line for an /uptime document."""
    title = (f"measured uptime at height {doc['height']} (epoch {doc['epoch']}, one block "
             f"~{doc['block_ms'] / 1000:.2f} s, down after {doc['down_after_blocks']} silent "
             "blocks)")  # fmt: skip
    table = Table(title=title)
    for col in ("node", "now", "this epoch", "min down", "closed epochs", "worst epoch"):
        table.add_column(col, justify="left" if col in ("node", "now") else "right")
    for n in doc["nodes"]:
        cur = n["current"]
        closed = [e for e in n["epochs"] if e["uptime_percent"] is not None]
        worst = min(closed, key=lambda e: e["uptime_percent"]) if closed else None
        table.add_row(
            n["node"][:16],
            "[red]down[/]" if n["down_now"] else "[green]up[/]",
            _percent(cur["uptime_percent"]),
            f"{cur['minutes_down']:.2f}",
            str(len(closed)),
            f"{_percent(worst['uptime_percent'])} (epoch {worst['epoch']})" if worst else "-",
        )
    net = doc["network"]
    rows = ", ".join(
        f"epoch {e['epoch']} {_percent(e['uptime_percent'])}" for e in net["epochs"][-6:]
    )
    line = f"network availability {_percent(net['uptime_percent'])} over the epochs kept; {rows}"
    return [table, line]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _out(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        console.print(text, highlight=False)


def add_job_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = sub.add_parser("job", help="submit and follow compute jobs").add_subparsers(
        dest="action", required=True
    )
    s = job.add_parser("submit", help="sign and submit a job; --wait follows it to settlement")
    s.add_argument("kind", choices=("matmul", "render", "inference"))
    s.add_argument("--key", required=True, help="the submitter's key file (pays the escrow)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--n", type=int, default=256, help="matmul: matrix side")
    s.add_argument("--width", type=int, default=256, help="render: image width")
    s.add_argument("--height", type=int, default=256, help="render: image height")
    s.add_argument("--tile", default="0,0,64,64", help="render: X0,Y0,W,H of the tile")
    s.add_argument("--layers", default="64,128,10", help="inference: layer widths")
    s.add_argument("--batch", type=int, default=32, help="inference: batch size")
    s.add_argument("--input-seed", type=int, default=2, help="inference: input seed")
    s.add_argument(
        "--weights",
        default=None,
        metavar="FILE.npz",
        help="inference: your weights (see `gpumesh job weights`), uploaded to the "
        "node and named in the job by content hash",
    )
    s.add_argument("--gpus", type=int, default=1, help="GPUs per replica")
    s.add_argument("--redundancy", type=int, default=2, help="replicas on distinct operators")
    s.add_argument("--gpu-model", default="", help="exact model; default any")
    s.add_argument("--min-memory", type=int, default=0, help="MiB per GPU")
    s.add_argument("--region", default="", help="default anywhere")
    s.add_argument(
        "--max-rtt",
        type=int,
        default=0,
        metavar="MS",
        help="round-trip limit from the job's --near node (measured; 0: none)",
    )
    s.add_argument(
        "--near",
        default=None,
        metavar="NODE",
        help="the node RTTs are measured from (default: the node you talk to)",
    )
    s.add_argument("--max-price", type=int, default=DEFAULT_PRICE, help="per GPU-hour")
    s.add_argument("--hours-milli", type=int, default=10, help="most GPU-hours x 1000 billed")
    s.add_argument("--deadline-blocks", type=int, default=200, help="blocks from now")
    s.add_argument("--wait", action="store_true")
    s.add_argument("--timeout", type=float, default=120.0)
    node_args(s)
    s.set_defaults(func=cmd_job_submit)
    w = job.add_parser("weights", help="write integer MLP weights as an .npz for --weights")
    w.add_argument("--layers", default="64,128,10", help="layer widths")
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--out", required=True, metavar="FILE.npz")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_job_weights)
    st = job.add_parser("status", help="one job's record and replicas")
    st.add_argument("job", metavar="JOB", help="job id (64 hex digits)")
    node_args(st)
    st.set_defaults(func=cmd_job_status)
    ls = job.add_parser("list", help="every job (or one submitter's)")
    ls.add_argument("--submitter", default=None, help="hex account, peer id or key file")
    node_args(ls)
    ls.set_defaults(func=cmd_job_list)
    r = job.add_parser("result", help="fetch a settled job's result, checked against its digest")
    r.add_argument("job", metavar="JOB")
    r.add_argument("--out", required=True, help="FILE.npy, or FILE.png for a render tile")
    node_args(r)
    r.set_defaults(func=cmd_job_result)
    c = job.add_parser("cancel", help="withdraw a job not yet assigned (full refund)")
    c.add_argument("job", metavar="JOB")
    c.add_argument("--key", required=True)
    node_args(c)
    c.set_defaults(func=cmd_job_cancel)

    u = sub.add_parser("uptime", help="measured availability per node and for the network")
    u.add_argument("--node", default=None, help="only this node: hex account, peer id, key file")
    u.add_argument("--via", default="node-0", help="status URL, HOST:PORT or swarm node to ask")
    u.add_argument("--swarm", default="swarm", help="swarm folder for node names")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=cmd_uptime)

    market = sub.add_parser("market", help="committed offers and prices").add_subparsers(
        dest="action", required=True
    )
    o = market.add_parser("offers", help="committed capacity offers and busy GPUs")
    node_args(o)
    o.set_defaults(func=cmd_market_offers)
    pr = market.add_parser("prices", help="each GPU class's price, supply and demand")
    node_args(pr)
    pr.set_defaults(func=cmd_market_prices)
