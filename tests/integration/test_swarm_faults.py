"""Faults on a live swarm of real processes: partition and heal cut and restore gossip, kill
and restart, pause and resume, the admin endpoint's authentication, and `gpumesh swarm run`
playing a scenario's timeline (or refusing faults that only the simulator has).

One 4-node swarm (announcements every 300 ms, live 2 s) serves the module, so a node that
stops hearing from another forgets it within seconds; each test leaves the swarm healed.
Every wait is a long-poll on a node's own /status (`wait_nodes`, `wait_nodes_max`), which
answers as soon as the node's view satisfies the condition; nothing sleeps and hopes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim_harness.swarm import ADMIN_TOKEN_FILE, Swarm
from tests.integration.cli import gpumesh, pid_alive

ROOT = Path(__file__).resolve().parents[2]
NODES = 4
WAIT_S = 20.0
pytestmark = pytest.mark.slow


# -- gpumesh swarm run (first: its own swarm, before the module's swarm starts) ---------


SCENARIO = """
name = "live-partition-and-crash"
duration = "5s"
liveness = "30s"

[gossip]
announce_interval = "300ms"
ttl = "2s"

[[nodes]]
prefix = "n"
count = 3

[[faults]]
at = "300ms"
for = "3500ms"
partition = [["n000"], ["n001", "n002"]]

[[faults]]
at = "500ms"
for = "1s"
crash = "n002"
"""


def test_swarm_run_plays_a_scenario_and_writes_the_report(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    root, report = tmp_path / "live", tmp_path / "report"
    run = gpumesh("swarm", "run", str(scenario), "--dir", str(root), "--report", str(report))
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        assert "partition n000 | n001,n002" in run.stdout and "crash n002" in run.stdout
        doc = json.loads((report / "metrics.json").read_text())
        assert doc["ok"] and doc["mode"] == "live" and doc["nodes"] == 3
        assert doc["checkers"]["book_convergence"]["ok"]
        kinds = [desc.split()[0] for _, desc in doc["metrics"]["faults"]]
        assert kinds == ["partition", "crash", "restart", "heal", "heal"]
        phase_end = doc["metrics"]["phase_end_ms"]
        safety = [f for t, f in doc["metrics"]["convergence"] if t < phase_end]
        assert min(safety) < 1.0  # the partition really cut the views apart
        assert doc["metrics"]["convergence"][-1][1] == 1.0
        assert (report / "index.html").exists()
    finally:
        if (root / "swarm.json").exists():
            left = Swarm.load(root)
            assert not left.running(), "swarm run left node processes behind"


def test_swarm_run_refuses_faults_it_cannot_play_live(tmp_path: Path) -> None:
    scenario = tmp_path / "skew.toml"
    scenario.write_text(
        SCENARIO + '\n[[faults]]\nat = "1s"\nclock_skew = { nodes = "n001", by = "2s" }\n'
    )
    run = gpumesh("swarm", "run", str(scenario), "--dir", str(tmp_path / "live"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "clock_skew cannot be played on a live swarm" in run.stderr
    assert "live runs support: crash, restart, pause" in run.stderr
    assert not (tmp_path / "live").exists()  # refused before anything started


# -- one swarm for the rest of the module -------------------------------------------------


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("faults") / "swarm"
    created = Swarm.create(root, NODES, announce_interval_ms=300, announcement_ttl_ms=2_000)
    try:
        created.start(timeout_s=60)
        wait_views(created, all_names(created), at_least=NODES)
        yield created
    finally:
        final = Swarm.load(root)
        pids = [n.pid for n in final.nodes if n.pid]
        final.stop()
        assert not [p for p in pids if pid_alive(p)], "orphan node processes"


def all_names(swarm: Swarm) -> list[str]:
    return [n.name for n in swarm.nodes]


def wait_views(
    swarm: Swarm, names: list[str], *, at_least: int = 0, at_most: int | None = None
) -> dict[str, dict[str, object]]:
    """Long-poll each node until it sees between at_least and at_most nodes (shared deadline)."""
    deadline = time.monotonic() + WAIT_S
    views = {}
    for name in names:
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        snap = Swarm.load(swarm.root).status(
            swarm.node(name), wait_nodes=at_least, wait_nodes_max=at_most, timeout_ms=left_ms
        )
        assert snap is not None, f"{name} did not answer"
        seen = snap["supply"]["nodes"]  # type: ignore[index]
        assert seen >= at_least and (at_most is None or seen <= at_most), (
            f"{name} sees {seen} nodes, wanted {at_least}..{at_most}"
        )
        views[name] = snap
    return views


def seen_peers(snap: dict[str, object]) -> set[str]:
    return {row["peer_id"] for row in snap["announcements"]}  # type: ignore[attr-defined]


def run_ok(*args: str) -> dict[str, object]:
    result = gpumesh(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_partition_cuts_gossip_and_heal_restores_it(swarm: Swarm) -> None:
    d = str(swarm.root)
    ids = {n.name: n.peer_id for n in swarm.nodes}
    out = run_ok("swarm", "partition", "node-0,node-1 / node-2,node-3", "--dir", d)
    assert out["cut_off"] == {
        "node-0": ["node-2", "node-3"],
        "node-1": ["node-2", "node-3"],
        "node-2": ["node-0", "node-1"],
        "node-3": ["node-0", "node-1"],
    }
    views = wait_views(swarm, all_names(swarm), at_least=2, at_most=2)
    for side in (("node-0", "node-1"), ("node-2", "node-3")):
        for name in side:
            assert seen_peers(views[name]) == {ids[n] for n in side}
            assert not set(views[name]["peers"]) - {ids[n] for n in side}  # type: ignore[call-overload]
    status = run_ok("swarm", "status", "--dir", d)
    faults = {row["name"]: row["faults"] for row in status["nodes"]}  # type: ignore[attr-defined]
    assert faults["node-0"] == "cut off from node-2,node-3"

    healed = run_ok("swarm", "heal", "--dir", d)
    assert sorted(healed["healed"]) == all_names(swarm)  # type: ignore[call-overload]
    views = wait_views(swarm, all_names(swarm), at_least=NODES)
    assert all(seen_peers(v) == set(ids.values()) for v in views.values())
    assert Swarm.load(swarm.root).faults.live_policy("node-2").is_none


def test_pause_expires_the_node_and_resume_brings_it_back(swarm: Swarm) -> None:
    d = str(swarm.root)
    run_ok("swarm", "pause", "node-3", "--dir", d)
    table = gpumesh("swarm", "status", "--dir", d)
    assert "paused" in table.stdout
    wait_views(swarm, ["node-0", "node-1", "node-2"], at_most=NODES - 1)
    run_ok("swarm", "resume", "node-3", "--dir", d)
    wait_views(swarm, all_names(swarm), at_least=NODES)


def test_kill_and_restart(swarm: Swarm) -> None:
    d = str(swarm.root)
    old_pid = swarm.node("node-2").pid
    assert old_pid is not None
    killed = run_ok("swarm", "kill", "node-2", "--dir", d)
    assert killed["pid"] is None and not pid_alive(old_pid)
    wait_views(swarm, ["node-0", "node-1", "node-3"], at_most=NODES - 1)
    again = gpumesh("swarm", "kill", "node-2", "--dir", d)
    assert again.returncode == 2 and "node-2 is not running" in again.stderr

    restarted = run_ok("swarm", "restart", "node-2", "--dir", d)
    assert isinstance(restarted["pid"], int) and restarted["pid"] != old_pid
    wait_views(swarm, all_names(swarm), at_least=NODES)


def test_fault_commands_name_what_is_wrong(swarm: Swarm) -> None:
    d = str(swarm.root)
    unknown = gpumesh("swarm", "pause", "node-9", "--dir", d)
    assert unknown.returncode == 2 and "no node 'node-9'" in unknown.stderr
    one_group = gpumesh("swarm", "partition", "node-0,node-1", "--dir", d)
    assert one_group.returncode == 2 and "at least two groups" in one_group.stderr
    twice = gpumesh("swarm", "partition", "node-0 / node-0,node-1", "--dir", d)
    assert twice.returncode == 2 and "more than once" in twice.stderr
    assert "Traceback" not in unknown.stderr + one_group.stderr + twice.stderr


def admin(
    swarm: Swarm, method: str, token: str | None, body: bytes | None = None
) -> tuple[int, bytes]:
    node = swarm.node("node-1")
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.status_port}/admin/policy",
        data=body,
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_admin_endpoint_requires_the_swarm_token(swarm: Swarm) -> None:
    token_file = swarm.root / ADMIN_TOKEN_FILE
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert admin(swarm, "GET", None) == (401, b"unauthorised\n")
    assert admin(swarm, "GET", "0" * 64) == (401, b"unauthorised\n")
    assert admin(swarm, "GET", token[:-1]) == (401, b"unauthorised\n")
    code, body = admin(swarm, "GET", token)
    assert code == 200 and json.loads(body)["blocked_in"] == []
    assert admin(swarm, "POST", None, b"{}")[0] == 401

    code, body = admin(swarm, "POST", token, b"{not json")
    assert code == 400 and b"not a JSON policy" in body
    code, body = admin(swarm, "POST", token, b'{"blocked_in": ["12D3KooWnope"]}')
    assert code == 400 and b"blocked_in[0]" in body
    code, body = admin(swarm, "POST", token, b"x" * (300 * 1024))
    assert code == 413
    peer = swarm.node("node-0").peer_id
    code, body = admin(swarm, "POST", token, json.dumps({"delay_ms": {peer: 5}}).encode())
    assert code == 200 and json.loads(body)["delay_ms"] == {peer: 5}
    code, body = admin(swarm, "POST", token, b"{}")
    assert code == 200 and json.loads(body)["delay_ms"] == {}
