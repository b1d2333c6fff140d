"""Faults on a live local swarm: process signals, and traffic policies set through each node's
token-protected /admin endpoint.

Process faults are signals to PIDs the swarm started, each sent only after `Swarm.alive`
checked that the PID still runs our node (kill: SIGKILL; pause: SIGSTOP; resume: SIGCONT).
Network faults are `TrafficPolicy`s the node enforces at its transport edge: a partition sets,
on every node of each group, `blocked_in` and `blocked_out` to every node of the other groups,
so both sides refuse the links and drop each other's gossip. Nodes a partition does not name
keep their policy (they may still bridge the groups: name every node to cut the swarm).
`delay NODE MS` makes every *other* node hold what NODE originates for MS before delivering it
(and delay its requests to NODE): NODE looks slow to everyone. Every policy is recorded in
swarm.json first, so a paused node gets it on resume and a restarted node on restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from node.config import ConfigError, load_config
from p2p.transport import PolicyError, TrafficPolicy
from sim_harness.swarm import (
    ADMIN_TOKEN_FILE,
    LOOPBACK,
    Swarm,
    SwarmError,
    SwarmNode,
    wait_exit,
)

ADMIN_TIMEOUT_S = 5.0
PARTITION_HELP = (
    'groups of node names (or peer-id suffixes) split by "/", e.g. "node-0,node-1 / node-2"'
)


def parse_groups(spec: str) -> list[list[str]]:
    """'A,B / C,D' -> [['A', 'B'], ['C', 'D']]; raises SwarmError naming what is wrong."""
    groups = [[n.strip() for n in part.split(",") if n.strip()] for part in spec.split("/")]
    if len(groups) < 2:
        raise SwarmError(f"a partition needs at least two groups: {PARTITION_HELP}; got {spec!r}")
    for i, group in enumerate(groups):
        if not group:
            raise SwarmError(f"group {i + 1} of the partition {spec!r} is empty")
    return groups


class SwarmFaults:
    """Fault operations on one swarm; every change is saved to swarm.json before it is applied."""

    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm

    # -- processes -----------------------------------------------------------------------------

    def _running(self, name: str) -> SwarmNode:
        node = self.swarm.node(name)
        if not self.swarm.alive(node) or node.pid is None:
            raise SwarmError(f"{node.name} is not running (start it with `gpumesh swarm restart`)")
        return node

    def kill(self, name: str) -> SwarmNode:
        """SIGKILL: no clean shutdown, as a crash or a power cut."""
        node = self._running(name)
        assert node.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGKILL)
        wait_exit(node.pid, 5)
        node.pid, node.paused = None, False
        self.swarm.save()
        return node

    def restart(self, name: str, *, timeout_s: float = 30.0) -> SwarmNode:
        """Stop the node if it runs (SIGTERM), start it on the same ports with the same key,
        wait until it is ready, and give it back its recorded traffic policy."""
        node = self.swarm.node(name)
        self.swarm.stop([node.name])
        self.swarm.start([node.name], timeout_s=timeout_s)
        self._apply(node)
        return node

    def pause(self, name: str) -> SwarmNode:
        """SIGSTOP: the process hangs with its sockets open, as an overloaded or stuck node."""
        node = self._running(name)
        if node.paused:
            raise SwarmError(f"{node.name} is already paused")
        assert node.pid is not None
        os.kill(node.pid, signal.SIGSTOP)
        node.paused = True
        self.swarm.save()
        return node

    def resume(self, name: str) -> SwarmNode:
        node = self._running(name)
        if not node.paused:
            raise SwarmError(f"{node.name} is not paused")
        assert node.pid is not None
        os.kill(node.pid, signal.SIGCONT)
        node.paused = False
        self.swarm.save()
        self._apply(node)  # the policy may have changed while it slept
        return node

    def wipe_data(self, name: str) -> Path:
        """Delete a stopped node's data folder (disk loss); its key and config stay."""
        node = self.swarm.node(name)
        if self.swarm.alive(node):
            raise SwarmError(f"{node.name} is running; kill it before wiping its data")
        try:
            data = load_config(node.config_path).node.data_dir
        except ConfigError as exc:
            raise SwarmError(f"cannot read {node.name}'s config: {exc}") from None
        home = Path(node.home).resolve()
        if not data.resolve().is_relative_to(home) or data.resolve() == home:
            raise SwarmError(f"{node.name}'s data folder {data} is not inside {home}; not wiping")
        shutil.rmtree(data, ignore_errors=True)
        return data

    # -- traffic policies ----------------------------------------------------------------------

    def policy(self, node: SwarmNode) -> TrafficPolicy:
        """The policy recorded for `node` in swarm.json."""
        try:
            return TrafficPolicy.from_json(node.policy or {})
        except PolicyError as exc:
            raise SwarmError(f"swarm.json: {node.name}.policy: {exc}") from None

    def set_policy(self, name: str, policy: TrafficPolicy) -> bool:
        """Record `policy` for the node and apply it if the node can answer; True if applied."""
        node = self.swarm.node(name)
        node.policy = None if policy.is_none else policy.as_json()
        self.swarm.save()
        return self._apply(node)

    def partition(self, groups: Sequence[Sequence[str]]) -> dict[str, TrafficPolicy]:
        """Cut the groups from each other; each named node's blocks are replaced (its delays
        are kept). Returns the new policy of every named node."""
        resolved = [[self.swarm.node(n) for n in group] for group in groups]
        seen: dict[str, int] = {}
        for gi, group in enumerate(resolved):
            for node in group:
                if seen.setdefault(node.name, gi) != gi or group.count(node) > 1:
                    raise SwarmError(f"{node.name} is named more than once in the partition")
        changed: dict[str, TrafficPolicy] = {}
        for gi, group in enumerate(resolved):
            others = frozenset(n.peer_id for gj, g in enumerate(resolved) if gj != gi for n in g)
            for node in group:
                old = self.policy(node)
                new = dataclasses.replace(old, blocked_in=others, blocked_out=others)
                self.set_policy(node.name, new)
                changed[node.name] = new
        return changed

    def heal(self) -> list[str]:
        """Lift every traffic fault (blocks and delays) on every node; returns the nodes that
        took it now (paused or stopped ones take it when they come back)."""
        return [n.name for n in self.swarm.nodes if self.set_policy(n.name, TrafficPolicy.none())]

    def delay(self, name: str, delay_ms: int) -> list[str]:
        """Every other node holds what `name` originates for `delay_ms` (0 removes it)."""
        target = self.swarm.node(name)
        changed = []
        for node in self.swarm.nodes:
            if node is target:
                continue
            old = self.policy(node)
            delays = {p: ms for p, ms in old.delay_ms.items() if p != target.peer_id}
            if delay_ms:
                delays[target.peer_id] = delay_ms
            try:
                new = dataclasses.replace(old, delay_ms=delays)
            except PolicyError as exc:
                raise SwarmError(f"delay {delay_ms} ms: {exc.problem}") from None
            self.set_policy(node.name, new)
            changed.append(node.name)
        return changed

    def live_policy(self, name: str) -> TrafficPolicy:
        """The policy the running node reports it enforces (GET /admin/policy)."""
        node = self.swarm.node(name)
        return TrafficPolicy.from_json(self._admin(node, "GET", None))

    def describe(self, node: SwarmNode) -> str:
        """One line for `swarm status`: paused, and what the node's policy blocks or delays."""
        names = {n.peer_id: n.name for n in self.swarm.nodes}

        def named(peers: frozenset[str]) -> str:
            return ",".join(sorted(names.get(p, p[-8:]) for p in peers))

        policy = self.policy(node)
        parts = ["paused"] if node.paused else []
        if policy.cut_off:
            parts.append(f"cut off from {named(policy.cut_off)}")
        if policy.blocked_in - policy.cut_off:
            parts.append(f"drops gossip from {named(policy.blocked_in - policy.cut_off)}")
        if policy.blocked_out - policy.cut_off:
            parts.append(f"no requests to {named(policy.blocked_out - policy.cut_off)}")
        for peer, ms in policy.delay_ms.items():
            parts.append(f"+{ms}ms from {names.get(peer, peer[-8:])}")
        if policy.default_delay_ms:
            parts.append(f"+{policy.default_delay_ms}ms from others")
        return "; ".join(parts)

    # -- the admin endpoint --------------------------------------------------------------------

    def _apply(self, node: SwarmNode) -> bool:
        if not self.swarm.responsive(node):
            return False
        self._admin(node, "POST", self.policy(node).as_json())
        return True

    def _token(self) -> str:
        path = self.swarm.root / ADMIN_TOKEN_FILE
        try:
            return path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise SwarmError(
                f"{path} is missing: this swarm predates fault injection; recreate it with "
                "`gpumesh swarm down` then `gpumesh swarm up`"
            ) from None

    def _admin(self, node: SwarmNode, method: str, body: object) -> dict[str, object]:
        url = f"http://{LOOPBACK}:{node.status_port}/admin/policy"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._token()}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_S) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", errors="replace").strip()
            raise SwarmError(
                f"{node.name}'s admin endpoint answered {exc.code}: {detail}"
            ) from None
        except (OSError, ValueError) as exc:
            raise SwarmError(f"cannot reach {node.name}'s admin endpoint at {url}: {exc}") from None
        if not isinstance(answer, dict):
            raise SwarmError(f"{node.name}'s admin endpoint answered {answer!r:.80}")
        return answer
