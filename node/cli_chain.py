"""`gpumesh tx | ledger | chain`: transactions, the ledger and the chain, through a node's
loopback status endpoint (the CLI needs no libp2p).

`--node` names the node: a URL (http://127.0.0.1:9101), HOST:PORT, or the name of a node of
the local swarm in `--swarm` (default: node-0 of ./swarm). A transaction is signed here with
`--key`, its nonce read from the node (GET /account/<hex>), and submitted with POST /tx; the
node answers accepted or the refusal's code and reason. `--wait` then follows the chain's
head until the sender's nonce moves past the transaction's (committed), or the transaction
left the node's mempool while the nonce stayed (refused when its block was applied: the
mempool checks signature, nonce and fee, the ledger the rest), or the deadline passes.
Refusals exit with code 1; problems the user can fix (unreachable node, bad hex, unknown
account) with code 2, as every gpumesh command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from node.cli_chain_http import ChainCliError, NodeClient, parse_account, parse_amount

EXIT_REFUSED = 1
console = Console(width=None if Console().is_terminal else 110)


def _out(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        console.print(text, highlight=False)


# -- gpumesh tx ---------------------------------------------------------------------------------


def _record(args: argparse.Namespace, nonce: int, fee: int) -> Any:
    from consensus.ledger.tx import Delegate, Stake, Transfer, Unbond, Undelegate

    amount = parse_amount(args.amount)
    if args.kind == "transfer":
        return Transfer(nonce, fee, parse_account(args.to, "TO"), amount)
    if args.kind == "stake":
        return Stake(nonce, fee, amount, args.commission)
    if args.kind == "unbond":
        return Unbond(nonce, fee, amount)
    operator = parse_account(args.operator, "OPERATOR")
    kind = Delegate if args.kind == "delegate" else Undelegate
    return kind(nonce, fee, operator, amount)


def cmd_tx(args: argparse.Namespace) -> int:
    from consensus.ledger.tx import tx_id
    from p2p.keyfile import load_key_file
    from p2p.wire import sign

    identity = load_key_file(Path(args.key))
    client = NodeClient.resolve(args.node, args.swarm)
    chain = client.chain_status()
    account = client.account(identity.public_key)
    nonce = args.nonce if args.nonce is not None else int(account["nonce"]) if account else 0
    fee = args.fee if args.fee is not None else int(chain["min_fee"])
    record = _record(args, nonce, fee)
    signed = sign(record, identity, str(chain["chain_id"]).encode())
    signed_id = tx_id(signed)
    verdict = client.submit(signed.encode())
    doc: dict[str, Any] = {
        "kind": args.kind,
        "sender": identity.public_key.hex(),
        "nonce": nonce,
        "fee": fee,
        "tx_id": signed_id.hex(),
        **verdict,
    }
    what = f"{args.kind} from {identity.public_key.hex()[:16]}... (nonce {nonce}, fee {fee})"
    if not verdict["accepted"]:
        doc["committed"] = False
        _out(args, doc, f"[red]refused[/] {what}: {verdict['code']}: {verdict['reason']}")
        return EXIT_REFUSED
    if not args.wait:
        _out(args, doc, f"[green]accepted[/] {what}, tx {doc['tx_id'][:16]}...")
        return 0
    waited = client.wait_committed(identity.public_key, nonce + 1, signed_id, args.timeout)
    doc["committed"], doc["height"] = waited.outcome == "committed", waited.height
    if waited.outcome == "refused":
        doc["code"] = "refused_when_applied"
        _out(
            args,
            doc,
            f"[red]refused when applied[/]: {what} left the mempool by height {waited.height} "
            "but the nonce did not move: the ledger refused it in its block (insufficient "
            "funds or stake, below a minimum...; see `gpumesh ledger show`)",
        )
        return EXIT_REFUSED
    if waited.outcome == "timeout":
        _out(
            args, doc, f"[yellow]accepted, not yet committed[/] after {args.timeout:.0f} s: {what}"
        )
        return EXIT_REFUSED
    _out(
        args,
        doc,
        f"[green]committed[/] {what} at height {waited.height}, tx {doc['tx_id'][:16]}...",
    )
    return 0


# -- gpumesh ledger show ------------------------------------------------------------------------


def cmd_ledger_show(args: argparse.Namespace) -> int:
    client = NodeClient.resolve(args.node, args.swarm)
    if args.account:
        key = parse_account(args.account, "ACCOUNT")
        view = client.account(key)
        if view is None:
            raise ChainCliError(f"unknown account {key.hex()}: the ledger holds nothing for it")
        if args.json:
            print(json.dumps(view, indent=2, sort_keys=True))
            return 0
        console.print(_accounts_table([view], f"account at height {view['height']}"))
        if view["stakes"] or view["unbonding"]:
            console.print(_stakes_table(view))
        return 0
    ledger = client.ledger()
    if args.json:
        print(json.dumps(ledger, indent=2, sort_keys=True))
        return 0
    title = f"ledger at height {ledger['height']} (epoch {ledger['epoch']})"
    console.print(_accounts_table(ledger["accounts"], title))
    console.print(_operators_table(ledger["operators"]))
    s = ledger["supply"]
    console.print(
        f"supply {s['total']}: balances {s['balances']}, bonded {s['bonded']}, unbonding "
        f"{s['unbonding']}, escrowed {s['escrowed']}; minted {s['minted']}, burned "
        f"{s['burned']}, fees {s['fees_collected']}",
        highlight=False,
    )
    return 0


def _accounts_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("account", "balance", "nonce", "staked", "unbonding", "operator"):
        table.add_column(col, justify="left" if col == "account" else "right")
    for r in rows:
        unbonding = sum(e["amount"] for e in r["unbonding"])
        table.add_row(
            r["account"],
            str(r["balance"]),
            str(r["nonce"]),
            str(r["staked"]),
            str(unbonding),
            "yes" if r["operator"] else "",
        )
    return table


def _stakes_table(view: dict[str, Any]) -> Table:
    table = Table(title="stakes and unbonding")
    for col in ("operator", "what", "shares", "value", "release epoch"):
        table.add_column(col)
    for s in view["stakes"]:
        what = "self-stake" if s["self"] else "delegation"
        table.add_row(s["operator"][:16], what, str(s["shares"]), str(s["value"]), "")
    for e in view["unbonding"]:
        table.add_row(
            e["operator"][:16], "unbonding", "", str(e["amount"]), str(e["release_epoch"])
        )
    return table


def _operators_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="operators")
    for col in ("operator", "pool", "self-stake", "commission", "state", "slashed"):
        table.add_column(col, justify="left" if col in ("operator", "state") else "right")
    for o in rows:
        state = "jailed" if o["jailed"] else "active" if o["active"] else "inactive"
        table.add_row(
            o["operator"][:16],
            str(o["pool"]),
            str(o["self_stake"]),
            f"{o['commission_bps'] / 100:.2f}%",
            state,
            str(o["slashed_total"]),
        )
    return table


# -- gpumesh chain ------------------------------------------------------------------------------


def cmd_chain_status(args: argparse.Namespace) -> int:
    client = NodeClient.resolve(args.node, args.swarm)
    chain = client.chain_status()
    if args.json:
        print(json.dumps(chain, indent=2, sort_keys=True))
        return 0
    table = Table(title=f"chain {chain['chain_id']} at {client.base}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    age_s = chain["last_commit_age_ms"] / 1000
    rows = [
        ("height", str(chain["height"])),
        ("head hash", chain["head_hash"]),
        ("epoch", f"{chain['epoch']} ({chain['epoch_blocks']} blocks each)"),
        ("round / step", f"{chain['round']} / {chain['step']}"),
        ("last commit", f"{age_s:.1f} s ago"),
        ("mempool", str(chain["mempool"])),
        ("this node", "committee member" if chain["member"] else "follower"),
        ("proposer", (chain["proposer"] or "-")[:16]),
    ]
    if chain.get("may_vote_from"):
        rows.append(("votes from height", str(chain["may_vote_from"])))
    rows += [(f"committee[{i}]", m) for i, m in enumerate(chain["committee"])]
    for field, value in rows:
        table.add_row(field, value)
    console.print(table)
    return 0


def cmd_chain_init(args: argparse.Namespace) -> int:
    from node.chain_restore import init_chain_store, load_chain_settings, store_path
    from node.config import load_config

    cfg = load_config(Path(args.config))
    settings = load_chain_settings(cfg)
    if settings is None:
        raise ChainCliError(f"{args.config}: chain.genesis is not set")
    made = init_chain_store(settings.data_dir, settings.genesis, time.time_ns() // 1_000_000)
    path = store_path(settings.data_dir)
    text = (
        f"provisioned {path}: this node may vote from genesis"
        if made
        else f"{path} already exists; left unchanged"
    )
    _out(args, {"store": str(path), "created": made}, text)
    return 0


# -- parsers ------------------------------------------------------------------------------------


def node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node", default="node-0", help="status URL, HOST:PORT or a swarm node name (node-0)"
    )
    p.add_argument("--swarm", default="swarm", help="swarm folder for node names")
    p.add_argument("--json", action="store_true")


def add_chain_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tx = sub.add_parser("tx", help="sign and submit a ledger transaction").add_subparsers(
        dest="kind", required=True
    )
    shapes = {
        "transfer": ("move AMOUNT base units to TO", ("to", "amount")),
        "stake": ("self-bond AMOUNT as an operator", ("amount",)),
        "unbond": ("withdraw AMOUNT of your self-bond", ("amount",)),
        "delegate": ("bond AMOUNT to OPERATOR's pool", ("operator", "amount")),
        "undelegate": ("withdraw AMOUNT from OPERATOR's pool", ("operator", "amount")),
    }
    for kind, (text, positional) in shapes.items():
        t = tx.add_parser(kind, help=text, description=text)
        for name in positional:
            hint = "base units" if name == "amount" else "hex account, peer id or key file"
            t.add_argument(name, metavar=name.upper(), help=hint)
        if kind == "stake":
            t.add_argument("--commission", type=int, default=500, help="basis points")
        t.add_argument("--key", required=True, help="the sender's key file")
        t.add_argument("--fee", type=int, default=None, help="default: the chain's min_fee")
        t.add_argument("--nonce", type=int, default=None, help="default: the account's next")
        t.add_argument("--wait", action="store_true", help="wait until committed")
        t.add_argument("--timeout", type=float, default=30.0)
        node_args(t)
        t.set_defaults(func=cmd_tx)

    ledger = sub.add_parser("ledger", help="balances and stakes").add_subparsers(
        dest="action", required=True
    )
    s = ledger.add_parser("show", help="one account, or every account and operator")
    s.add_argument("account", nargs="?", metavar="ACCOUNT")
    node_args(s)
    s.set_defaults(func=cmd_ledger_show)

    chain = sub.add_parser("chain", help="the chain's head and committee").add_subparsers(
        dest="action", required=True
    )
    c = chain.add_parser("status", help="height, head, committee, round, last commit")
    node_args(c)
    c.set_defaults(func=cmd_chain_status)
    c = chain.add_parser(
        "init", help="provision a new node's chain store so it may vote from genesis"
    )
    c.add_argument("--config", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_chain_init)
