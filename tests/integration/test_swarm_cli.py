"""The CLI and local swarms as a user drives them: real processes, real sockets on 127.0.0.1,
clean shutdown on signals, and no orphan process left behind."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim_harness.swarm import Swarm
from tests.integration.cli import gpumesh, pid_alive

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def swarm_dir(tmp_path: Path) -> Iterator[Path]:
    """A swarm folder that is always torn down, whatever the test did."""
    path = tmp_path / "swarm"
    yield path
    if (path / "swarm.json").exists():
        swarm = Swarm.load(path)
        pids = [n.pid for n in swarm.nodes if n.pid]
        swarm.stop()
        assert not [p for p in pids if pid_alive(p)], "orphan node processes"


def read_line(stream: object, timeout_s: float) -> str:
    fd = stream.fileno()  # type: ignore[attr-defined]
    ready, _, _ = select.select([fd], [], [], timeout_s)
    assert ready, f"no output within {timeout_s}s"
    return stream.readline()  # type: ignore[attr-defined,no-any-return]


def test_swarm_up_status_down(swarm_dir: Path) -> None:
    up = gpumesh("swarm", "up", "-n", "3", "--dir", str(swarm_dir), "--json", "--timeout", "60")
    assert up.returncode == 0, up.stderr
    report = json.loads(up.stdout)
    assert len(report["nodes"]) == 3
    for node in report["nodes"]:
        assert node["status"]["supply"]["nodes"] == 3
        assert node["status"]["supply"]["gpus"] == 2 + 4 + 8
    pids = [n["pid"] for n in report["nodes"]]
    assert all(pid_alive(p) for p in pids)

    status = gpumesh("swarm", "status", "--dir", str(swarm_dir), "--json")
    assert status.returncode == 0, status.stderr
    assert all(n["status"] is not None for n in json.loads(status.stdout)["nodes"])
    table = gpumesh("swarm", "status", "--dir", str(swarm_dir))
    assert "node-2" in table.stdout and "up" in table.stdout

    one = Swarm.load(swarm_dir).nodes[1]
    node_status = gpumesh("node", "status", "--config", str(one.config_path), "--json")
    assert json.loads(node_status.stdout)["peer_id"] == one.peer_id
    # a real node process froze what it built at start-up (libp2p and the rest: tens of
    # thousands of objects) and reports its collector's pauses per generation
    collector = json.loads(node_status.stdout)["gc"]
    assert collector["frozen_objects"] > 20_000, collector
    assert [sorted(g) for g in collector["generations"]] == [
        ["collections", "pause_ms_max", "pause_ms_total"]] * 3  # fmt: skip

    down = gpumesh("swarm", "down", "--dir", str(swarm_dir), "--json")
    assert down.returncode == 0, down.stderr
    assert sorted(json.loads(down.stdout)["stopped"]) == ["node-0", "node-1", "node-2"]
    assert not [p for p in pids if pid_alive(p)]
    for n in Swarm.load(swarm_dir).nodes:
        log = n.log_path.read_text()
        assert '"node_stopped"' in log, f"{n.name} did not shut down cleanly"


def test_ctrl_c_during_swarm_up_leaves_no_orphans(swarm_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "swarm", "up", "-n", "3", "--dir", str(swarm_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(proc.stdout, 60)
        assert line.startswith("up node-"), line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    swarm = Swarm.load(swarm_dir)
    assert swarm.running() == []


def test_node_run_stops_cleanly_on_sigint_and_sigterm(tmp_path: Path) -> None:
    init = gpumesh(
        "node",
        "init",
        "--dir",
        str(tmp_path / "n"),
        "--listen-port",
        "0",
        "--status-port",
        "0",
        "--gpu",
        "RTX 4090:1:24564",
        "--json",
    )
    assert init.returncode == 0, init.stderr
    config = json.loads(init.stdout)["config"]
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "run", "--config", config],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            info = json.loads(read_line(proc.stdout, 60))
            assert info["pid"] == proc.pid and info["peer_id"].startswith("12D3KooW")
            assert info["status_addr"].startswith("127.0.0.1:")
            status = gpumesh("node", "status", "--config", config, "--json")
            assert json.loads(status.stdout)["supply"]["gpus"] == 1
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == 0
            _, err = proc.communicate()
            assert '"node_stopped"' in err
            assert "Traceback" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_cli_errors_name_the_problem(tmp_path: Path) -> None:
    missing = gpumesh("node", "run", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    assert "Traceback" not in missing.stderr

    key = tmp_path / "k.key"
    assert gpumesh("keys", "new", "--out", str(key)).returncode == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    again = gpumesh("keys", "new", "--out", str(key))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    os.chmod(key, 0o644)
    loose = gpumesh("keys", "show", "--key", str(key))
    assert loose.returncode == 2 and "chmod 600" in loose.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nname = "x"\n[network]\nlisten = ["/ip4/1.2.3"]\n')
    result = gpumesh("node", "run", "--config", str(bad))
    assert result.returncode == 2 and "network.listen[0]" in result.stderr

    down = gpumesh("swarm", "down", "--dir", str(tmp_path / "no-swarm"))
    assert down.returncode == 2 and "no swarm" in down.stderr

    gpu = gpumesh("node", "init", "--dir", str(tmp_path / "g"), "--gpu", "RTX")
    assert gpu.returncode == 2 and "MODEL:COUNT:MEMORY_MIB" in gpu.stderr
