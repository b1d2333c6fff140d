"""The chain on a live swarm of real processes: four committee members commit the same
blocks, a transfer made with the CLI lands on every node, a bad nonce is refused with its
code, and a member killed with SIGKILL while transactions flow loses no block it reported
committed, catches up, and the chain goes on.

One 4-node swarm (blocks every ~300 ms when idle) serves the module; the kill test runs last
and stops the swarm to read every node's store file. Every wait is a long-poll on a node's
own /status (`wait_height`), under a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus.ledger.tx import Transfer
from node.store import NodeStore
from p2p.codec import pack
from p2p.keyfile import load_key_file
from p2p.wire import sign
from sim_harness.swarm import Swarm, SwarmNode, wait_exit
from sim_harness.swarm_genesis import user_key_path
from tests.integration.cli import gpumesh as run_gpumesh

ROOT = Path(__file__).resolve().parents[2]
NODES = 4
WAIT_S = 30.0
CHAIN_ID = "gpumesh-swarm"
pytestmark = pytest.mark.slow


def gpumesh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_gpumesh(*args, timeout=timeout)


def http(node: SwarmNode, path: str, body: bytes | None = None, timeout_s: float = 10) -> Any:
    url = f"http://127.0.0.1:{node.status_port}{path}"
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"http_error": exc.code, **json.loads(exc.read())}


def chain(node: SwarmNode, *, at_least: int = 0, timeout_s: float = WAIT_S) -> dict[str, Any]:
    """The node's chain status, long-polled until its committed height reaches `at_least`."""
    query = f"?wait_height={at_least}&timeout_ms={int(timeout_s * 1000)}" if at_least else ""
    snap = http(node, "/status" + query, timeout_s=timeout_s + 5)
    height = snap["chain"]["height"]
    assert height >= at_least, f"{node.name} stuck at height {height}, wanted {at_least}"
    return snap["chain"]  # type: ignore[no-any-return]


def account(node: SwarmNode, key: bytes) -> dict[str, Any]:
    view = http(node, f"/account/{key.hex()}")
    assert "http_error" not in view, view
    return view  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("chain") / "swarm"
    created = Swarm.create(root, NODES, chain=True, empty_block_ms=300, chain_id=CHAIN_ID)
    try:
        created.start(timeout_s=60)
        for node in created.nodes:
            chain(node, at_least=2)
        yield created
    finally:
        final = Swarm.load(root)
        pids = [n.pid for n in final.nodes if n.pid]
        final.stop()
        assert not [p for p in pids if Path(f"/proc/{p}").exists()], "orphan node processes"


def test_members_commit_the_same_blocks_and_a_cli_transfer_lands_everywhere(swarm: Swarm) -> None:
    heads = [chain(n) for n in swarm.nodes]
    assert all(h["member"] for h in heads) and len(heads[0]["committee"]) == NODES
    common = min(h["height"] for h in heads)
    hashes = {http(n, f"/block/{common}")["hash"] for n in swarm.nodes}
    assert len(hashes) == 1, f"nodes disagree on block {common}: {hashes}"

    sender, receiver = (load_key_file(user_key_path(swarm.root, i)) for i in (0, 1))
    before = [account(n, receiver.public_key)["balance"] for n in swarm.nodes]
    run = gpumesh(
        "tx", "transfer", receiver.public_key.hex(), "777", "--key",
        str(user_key_path(swarm.root, 0)), "--node", "node-2", "--swarm", str(swarm.root),
        "--wait", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert doc["accepted"] and doc["committed"] and doc["code"] == "accepted"
    for node, was in zip(swarm.nodes, before, strict=True):
        chain(node, at_least=doc["height"])
        assert account(node, receiver.public_key)["balance"] == was + 777
        assert account(node, sender.public_key)["nonce"] == doc["nonce"] + 1

    # the same nonce again: refused by the node, and the user is told why
    again = gpumesh(
        "tx", "transfer", receiver.public_key.hex(), "1", "--key",
        str(user_key_path(swarm.root, 0)), "--node", "node-0", "--swarm", str(swarm.root),
        "--nonce", str(doc["nonce"]),
    )  # fmt: skip
    assert again.returncode == 1, again.stdout + again.stderr
    assert "refused" in again.stdout and "bad_nonce" in again.stdout

    # more than the balance: the mempool takes it, the ledger refuses it in its block
    broke = gpumesh(
        "tx", "transfer", receiver.public_key.hex(), str(10**15), "--key",
        str(user_key_path(swarm.root, 0)), "--node", "node-1", "--swarm", str(swarm.root),
        "--wait", "--json",
    )  # fmt: skip
    assert broke.returncode == 1, broke.stdout + broke.stderr
    refused = json.loads(broke.stdout)
    assert refused["accepted"] and refused["code"] == "refused_when_applied"
    assert not refused["committed"]

    # the ledger and the chain as the CLI shows them
    ledger = gpumesh("ledger", "show", "--json", "--node", "node-3", "--swarm", str(swarm.root))
    assert ledger.returncode == 0, ledger.stderr
    rows = {r["account"]: r for r in json.loads(ledger.stdout)["accounts"]}
    assert rows[receiver.public_key.hex()]["balance"] >= before[3] + 777
    assert len(json.loads(ledger.stdout)["operators"]) == NODES
    status = gpumesh("chain", "status", "--node", "node-1", "--swarm", str(swarm.root))
    assert status.returncode == 0 and "committee member" in status.stdout, status.stderr

    # mistakes the user can fix are one line and exit code 2
    bad = gpumesh("ledger", "show", "zz", "--node", "node-0", "--swarm", str(swarm.root))
    assert bad.returncode == 2 and "not an account" in bad.stderr
    unknown = gpumesh("ledger", "show", "ab" * 32, "--node", "node-0", "--swarm", str(swarm.root))
    assert unknown.returncode == 2 and "unknown account" in unknown.stderr
    assert http(swarm.nodes[0], "/account/xyz")["http_error"] == 400


def test_a_batch_of_transfers_posted_to_txs_gets_verdicts_in_order_and_lands(
    swarm: Swarm,
) -> None:
    sender = load_key_file(user_key_path(swarm.root, 0))
    receiver = load_key_file(user_key_path(swarm.root, 1)).public_key
    node = swarm.nodes[2]
    nonce = account(node, sender.public_key)["nonce"]
    before = account(node, receiver)["balance"]
    txs = [sign(Transfer(nonce + i, 1_000, receiver, 10 + i), sender, CHAIN_ID.encode()).encode()
           for i in range(20)]  # fmt: skip
    doc = http(node, "/txs", pack(txs))
    verdicts = doc["verdicts"]
    assert [v["accepted"] for v in verdicts] == [True] * 20, verdicts
    again = http(node, "/txs", pack(txs[:1]))["verdicts"]  # the same bytes again
    assert again[0]["accepted"] is False and again[0]["code"] in ("already_pending", "bad_nonce")
    height = chain(node)["height"]
    for other in swarm.nodes:
        chain(other, at_least=height + 2)
    deadline = time.monotonic() + WAIT_S
    while account(node, sender.public_key)["nonce"] < nonce + 20:
        assert time.monotonic() < deadline, "the batch did not commit"
        chain(node, at_least=chain(node)["height"] + 1)
    for other in swarm.nodes:
        chain(other, at_least=chain(node)["height"])
        assert account(other, receiver)["balance"] == before + sum(10 + i for i in range(20))

    assert http(node, "/txs", b"\xc1 not msgpack")["http_error"] == 400
    assert http(node, "/txs", pack([1, 2]))["http_error"] == 400
    assert http(node, "/txs", pack([b"x"] * 1_001))["http_error"] == 413


class TxFlow:
    """Transfers from user2 to user1 in the background, signed here, posted to node-0."""

    def __init__(self, swarm: Swarm) -> None:
        self.node = swarm.nodes[0]
        self.key = load_key_file(user_key_path(swarm.root, 2))
        self.to = load_key_file(user_key_path(swarm.root, 1)).public_key
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        nonce = account(self.node, self.key.public_key)["nonce"]
        while not self.stop.wait(0.05):  # a steady trickle, not a condition we wait for
            tx = sign(Transfer(nonce, 1_000, self.to, 1), self.key, CHAIN_ID.encode())
            verdict = http(self.node, "/tx", tx.encode())
            if verdict.get("accepted"):
                self.accepted, nonce = self.accepted + 1, nonce + 1


def test_a_member_killed_mid_run_keeps_its_blocks_catches_up_and_the_chain_goes_on(
    swarm: Swarm,
) -> None:
    victim, witness = swarm.nodes[1], swarm.nodes[0]
    flow = TxFlow(swarm)
    flow.thread.start()
    try:
        start = chain(victim)["height"]
        chain(victim, at_least=start + 4)  # transactions flowing
        # Not a wait for a condition: it moves the kill off the commit we just saw, into
        # the middle of the next height, where the victim has votes logged and in flight.
        time.sleep(0.15)
        reported = chain(victim)["height"]
        pid = Swarm.load(swarm.root).node(victim.name).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid, 10)
        # the three others still hold a quorum: the chain goes on without it
        down_head = chain(witness, at_least=reported + 3)["height"]
        Swarm.load(swarm.root).faults.restart(victim.name, timeout_s=30)
        restarted = chain(victim)
        assert restarted["height"] >= reported, "a reported block was lost"
        head = chain(witness)["height"]
        chain(victim, at_least=max(head, down_head))  # caught up
        chain(victim, at_least=max(head, down_head) + 3)  # and commits with the others
    finally:
        flow.stop.set()
        flow.thread.join(timeout=15)
    assert flow.accepted > 0
    for node in swarm.nodes:
        assert account(node, flow.key.public_key)["nonce"] > 0

    # the stores on disk, read after a clean stop: the victim holds every block it reported
    # committed before the kill, each identical to the other nodes' block at that height
    Swarm.load(swarm.root).stop()
    stores = [NodeStore.open(Path(n.home) / "data" / "chain.sqlite", chain_id=CHAIN_ID.encode())
              for n in swarm.nodes]  # fmt: skip
    try:
        heads = [s.head_height() for s in stores]
        assert heads[1] >= reported
        for h in range(1, min(heads) + 1):
            hashes = {s.block(h).block_hash for s in stores}  # type: ignore[union-attr]
            assert len(hashes) == 1, f"stores disagree on block {h}"
    finally:
        for s in stores:
            s.close()
