"""Local swarms: N real node processes on 127.0.0.1, started, watched and stopped as a unit.

A swarm lives in one folder: `swarm.json` (the nodes, their ports and PIDs) and one
sub-folder per node (config, key, data, logs). Ports are fixed when the swarm is created, so
a restarted node comes back at the same address. A node reports readiness by writing its
RuntimeInfo to a pipe it inherits (`--ready-fd`), and convergence is awaited through the
node's long-polling /status endpoint: nothing here polls in a sleep loop.

Only processes this swarm started are ever signalled, and only after checking that the PID
still runs our node with our config (PIDs are recycled).

Faults (kill, restart, pause, partition, delay: `sim_harness.swarm_faults`, reached through
`Swarm.faults`) are recorded per node in `swarm.json`, so `gpumesh swarm status` shows them and a
restarted node gets its traffic policy back. Each node's /admin endpoint takes the bearer token
in `admin.token` (mode 0600), created with the swarm.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from node.config import default_config, write_config
from p2p.announcements import GpuSpec
from p2p.identity import Identity
from p2p.keyfile import write_key_file

if TYPE_CHECKING:
    from sim_harness.swarm_faults import SwarmFaults

SWARM_FILE = "swarm.json"
GENESIS_FILE = "genesis.toml"
ADMIN_TOKEN_FILE = "admin.token"
LOOPBACK = "127.0.0.1"
REGIONS = ("eu-west", "us-east", "ap-south", "eu-central", "us-west")
GPU_MIX = (
    (GpuSpec("RTX 4090", 2, 24_564),),
    (GpuSpec("A100-SXM4-80GB", 4, 81_920),),
    (GpuSpec("H100-SXM5-80GB", 8, 81_559),),
    (GpuSpec("RTX 3090", 1, 24_576), GpuSpec("RTX 4090", 1, 24_564)),
    (GpuSpec("L40S", 2, 46_068),),
)


class SwarmError(Exception):
    """A swarm that cannot be created, started or reached; the message says which node and why."""


@dataclass
class SwarmNode:
    name: str
    home: str
    peer_id: str
    listen_port: int
    status_port: int
    pid: int | None = None
    paused: bool = False
    """SIGSTOPped by `gpumesh swarm pause`; its /status would not answer."""
    policy: dict[str, object] | None = None
    """The traffic policy it should run with (TrafficPolicy.as_json); None: no fault."""

    @property
    def config_path(self) -> Path:
        return Path(self.home) / "node.toml"

    @property
    def log_path(self) -> Path:
        return Path(self.home) / "node.log"

    @property
    def stderr_path(self) -> Path:
        return Path(self.home) / "stderr.log"

    @property
    def listen_addr(self) -> str:
        return f"/ip4/{LOOPBACK}/tcp/{self.listen_port}/p2p/{self.peer_id}"

    @property
    def status_url(self) -> str:
        return f"http://{LOOPBACK}:{self.status_port}/status"


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: hold every socket open until all are chosen."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def bootstrap_indexes(i: int) -> list[int]:
    """Node i dials the first node, its predecessor and the node halfway back: a connected
    graph of small diameter, without a single hub the swarm depends on after startup."""
    return sorted({j for j in (0, i - 1, i // 2) if 0 <= j < i})


class Swarm:
    def __init__(self, root: Path, nodes: list[SwarmNode]) -> None:
        self.root = root
        self.nodes = nodes

    # -- creation and persistence --------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        count: int,
        *,
        announce_interval_ms: int = 1_000,
        announcement_ttl_ms: int = 15_000,
        chain_id: str = "gpumesh-swarm",
        log_level: str = "info",
        chain: bool = False,
        empty_block_ms: int = 1_000,
        users: int | None = None,
        committee_size: int | None = None,
        epoch_blocks: int | None = None,
    ) -> Swarm:
        """`chain`: also write a genesis making every node an operator (plus funded user keys,
        see `sim_harness.swarm_genesis`), and run consensus on every node. `users`,
        `committee_size` and `epoch_blocks` go to that genesis; None keeps its defaults."""
        if count < 1:
            raise SwarmError(f"a swarm needs at least 1 node, got {count}")
        root = Path(root).resolve()
        if (root / SWARM_FILE).exists():
            existing = cls.load(root)
            if existing.running():
                raise SwarmError(
                    f"{root} already holds a running swarm; `gpumesh swarm down` first"
                )
        root.mkdir(parents=True, exist_ok=True)
        token_file = _write_admin_token(root)
        ports = free_ports(2 * count)
        nodes: list[SwarmNode] = []
        identities = [Identity.generate() for _ in range(count)]
        genesis = root / GENESIS_FILE if chain else None
        for i, identity in enumerate(identities):
            name = f"node-{i}"
            home = root / name
            home.mkdir(parents=True, exist_ok=True)
            write_key_file(home / "node.key", identity, overwrite=True)
            node = SwarmNode(name, str(home), identity.peer_id, ports[2 * i], ports[2 * i + 1])
            cfg = default_config(
                name,
                listen_port=node.listen_port,
                status_port=node.status_port,
                bootstrap=[nodes[j].listen_addr for j in bootstrap_indexes(i)],
                gpus=GPU_MIX[i % len(GPU_MIX)],
                region=REGIONS[i % len(REGIONS)],
                price_per_gpu_hour=1_000_000 + 50_000 * (i % 7),
                chain_id=chain_id,
                announce_interval_ms=announce_interval_ms,
                announcement_ttl_ms=announcement_ttl_ms,
                log_file="node.log",
                log_level=log_level,
                admin_token_file=token_file,
                genesis=genesis or "",
                empty_block_ms=empty_block_ms,
                base_dir=home,
            )
            write_config(node.config_path, cfg)
            nodes.append(node)
        if genesis is not None:
            genesis_args = {"users": users, "committee_size": committee_size,
                            "epoch_blocks": epoch_blocks}  # fmt: skip
            chosen = {k: v for k, v in genesis_args.items() if v is not None}
            _new_chain(root, identities, chain_id, [home_data(n) for n in nodes], **chosen)
        swarm = cls(root, nodes)
        swarm.save()
        return swarm

    @classmethod
    def load(cls, root: Path) -> Swarm:
        root = Path(root).resolve()
        try:
            raw = json.loads((root / SWARM_FILE).read_text())
        except FileNotFoundError:
            raise SwarmError(f"no swarm in {root} (start one with `gpumesh swarm up`)") from None
        return cls(root, [SwarmNode(**n) for n in raw["nodes"]])

    def save(self) -> None:
        tmp = self.root / (SWARM_FILE + ".tmp")
        tmp.write_text(json.dumps({"nodes": [asdict(n) for n in self.nodes]}, indent=2))
        os.replace(tmp, self.root / SWARM_FILE)

    def node(self, name: str) -> SwarmNode:
        """A node by name or by a suffix of its peer id (at least 4 characters, unambiguous)."""
        for n in self.nodes:
            if n.name == name:
                return n
        by_id = [n for n in self.nodes if len(name) >= 4 and n.peer_id.endswith(name)]
        if len(by_id) == 1:
            return by_id[0]
        raise SwarmError(f"no node {name!r} in this swarm: {', '.join(n.name for n in self.nodes)}")

    @property
    def faults(self) -> SwarmFaults:
        """Kill, restart, pause, partition, heal, delay (see sim_harness.swarm_faults)."""
        from sim_harness.swarm_faults import SwarmFaults

        return SwarmFaults(self)

    # -- processes -----------------------------------------------------------------------------

    def alive(self, node: SwarmNode) -> bool:
        """True iff node.pid still runs our node with our config (not a recycled PID)."""
        if node.pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{node.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return state != "Z" and str(node.config_path).encode() in cmdline

    def running(self) -> list[SwarmNode]:
        return [n for n in self.nodes if self.alive(n)]

    def start(
        self,
        names: Iterable[str] | None = None,
        *,
        timeout_s: float = 30.0,
        on_ready: Callable[[SwarmNode, dict[str, object]], None] | None = None,
    ) -> None:
        """Start nodes (all by default) and return once each reported ready."""
        targets = [self.node(n) for n in names] if names is not None else list(self.nodes)
        pending: dict[int, tuple[SwarmNode, subprocess.Popen[bytes]]] = {}
        try:
            for node in targets:
                if self.alive(node):
                    continue
                read_fd, proc = self._spawn(node)
                pending[read_fd] = (node, proc)
            self._await_ready(pending, timeout_s, on_ready)
        except BaseException:
            for node, proc in pending.values():
                _terminate(proc.pid)
                node.pid = None
            self.save()
            raise
        finally:
            for fd in pending:
                os.close(fd)

    def _spawn(self, node: SwarmNode) -> tuple[int, subprocess.Popen[bytes]]:
        read_fd, write_fd = os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "node.cli",
            "node",
            "run",
            "--config",
            str(node.config_path),
            "--ready-fd",
            str(write_fd),
        ]
        with open(node.stderr_path, "ab") as err:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=(write_fd,),
                start_new_session=True,
                cwd=node.home,
                env=_child_env(),
            )
        os.close(write_fd)
        node.pid = proc.pid
        self.save()
        return read_fd, proc

    def _await_ready(
        self,
        pending: dict[int, tuple[SwarmNode, subprocess.Popen[bytes]]],
        timeout_s: float,
        on_ready: Callable[[SwarmNode, dict[str, object]], None] | None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        buffers = {fd: b"" for fd in pending}
        while buffers:
            left = deadline - time.monotonic()
            if left <= 0:
                late = ", ".join(pending[fd][0].name for fd in buffers)
                raise SwarmError(f"not ready within {timeout_s:.0f}s: {late}")
            readable, _, _ = select.select(list(buffers), [], [], left)
            for fd in readable:
                chunk = os.read(fd, 65536)
                node, proc = pending[fd]
                if chunk:
                    buffers[fd] += chunk
                    if not buffers[fd].endswith(b"\n"):
                        continue
                    info = json.loads(buffers.pop(fd))
                    if on_ready is not None:
                        on_ready(node, info)
                    continue
                buffers.pop(fd)
                proc.wait(timeout=5)
                raise SwarmError(
                    f"{node.name} exited with code {proc.returncode} before it was "
                    f"ready; last lines of {node.stderr_path}:\n{_tail(node)}"
                )

    def stop(self, names: Sequence[str] | None = None, *, timeout_s: float = 10.0) -> list[str]:
        """SIGTERM our live nodes, SIGKILL any that outlive `timeout_s`; returns those stopped."""
        targets = [self.node(n) for n in names] if names is not None else list(self.nodes)
        stopped = []
        live = [n for n in targets if self.alive(n)]
        for pid in [n.pid for n in live if n.pid is not None]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)  # a paused node cannot handle SIGTERM
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in live:
            assert node.pid is not None
            if not wait_exit(node.pid, deadline - time.monotonic()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
                wait_exit(node.pid, 5)
            stopped.append(node.name)
        for node in targets:
            node.pid, node.paused = None, False
        self.save()
        return stopped

    # -- observing -----------------------------------------------------------------------------

    def status(
        self,
        node: SwarmNode,
        *,
        wait_nodes: int = 0,
        wait_peers: int = 0,
        wait_nodes_max: int | None = None,
        timeout_ms: int = 0,
    ) -> dict[str, object] | None:
        """The node's /status, long-polled until it sees at least `wait_nodes` nodes (and at
        most `wait_nodes_max`) and has `wait_peers` peers; None if unreachable."""
        query = f"?wait_nodes={wait_nodes}&wait_peers={wait_peers}&timeout_ms={timeout_ms}"
        if wait_nodes_max is not None:
            query += f"&wait_nodes_max={wait_nodes_max}"
        try:
            with urllib.request.urlopen(
                node.status_url + query, timeout=timeout_ms / 1000 + 5
            ) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 408: condition not met in time; body is status
            return json.loads(exc.read()) if exc.code == 408 else None
        except (OSError, ValueError):
            return None

    def statuses(self, **wait: int) -> dict[str, dict[str, object] | None]:
        """Every running node's /status (None for nodes down or paused, which cannot answer)."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
            results = pool.map(
                lambda n: self.status(n, **wait) if self.responsive(n) else None, self.nodes
            )
            return dict(zip((n.name for n in self.nodes), results, strict=True))

    def responsive(self, node: SwarmNode) -> bool:
        """Running and not paused: a node that can answer its endpoint."""
        return not node.paused and self.alive(node)

    def wait_converged(self, *, timeout_s: float = 30.0) -> dict[str, dict[str, object] | None]:
        """Every answering node connected and seeing every answering node's announcement
        (a paused node's announcement expires, so it is not waited for)."""
        want = len([n for n in self.nodes if self.responsive(n)])
        return self.statuses(
            wait_nodes=want, wait_peers=1 if want > 1 else 0, timeout_ms=int(timeout_s * 1000)
        )


def converged(statuses: dict[str, dict[str, object] | None], count: int) -> bool:
    return all(s is not None and _nodes_seen(s) >= count for s in statuses.values())


def _nodes_seen(status: dict[str, object]) -> int:
    supply = status.get("supply")
    return int(supply.get("nodes", 0)) if isinstance(supply, dict) else 0


def home_data(node: SwarmNode) -> Path:
    """The node's data folder as `Swarm.create` configures it."""
    return Path(node.home) / "data"


def _new_chain(
    root: Path, identities: list[Identity], chain_id: str, data: list[Path], **genesis: int
) -> None:
    """A fresh genesis for fresh keys: stores left by an earlier swarm in this folder belong
    to other keys and another genesis, so they go before the new ones are provisioned.
    `genesis`: keyword arguments of `write_swarm_genesis` (users, committee_size, ...)."""
    from node.chain_restore import STORE_FILE
    from sim_harness.swarm_genesis import provision_stores, write_swarm_genesis

    genesis_path = write_swarm_genesis(root, identities, chain_id, **genesis)
    for folder in data:
        for suffix in ("", "-wal", "-shm"):
            (folder / (STORE_FILE + suffix)).unlink(missing_ok=True)
    provision_stores(genesis_path, data)


def _write_admin_token(root: Path) -> Path:
    """A fresh bearer token for the nodes' /admin endpoints, readable by this user only."""
    path = root / ADMIN_TOKEN_FILE
    tmp = root / (ADMIN_TOKEN_FILE + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
    os.replace(tmp, path)
    return path


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_exit(pid, 5)


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Reap (if our child) or wait for `pid` to vanish; True if it exited in time."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    delay = 0.01
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
        except ChildProcessError:  # not our child (another CLI call started it)
            if not Path(f"/proc/{pid}").exists():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)  # process exit has no portable event to wait on for a non-child
        delay = min(delay * 2, 0.2)


def _tail(node: SwarmNode, lines: int = 15) -> str:
    try:
        return "\n".join(node.stderr_path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"
