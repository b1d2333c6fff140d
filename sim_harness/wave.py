"""One gossip message's spread over the mesh in a single vectorised shortest-path pass.

`network.Network.spread` is the model's definition: a Dijkstra pass in Python that asks, hop
by hop, whether the next node is up, accepts the message, forwards it, and which link state
is in force. At a thousand nodes that pass costs about a millisecond per message, which alone
holds the simulator near real time. Between two planned changes (a fault starting or ending,
a node booting, crashing or turning silent, a clock jump) every one of those answers is the
same at every instant, so the pass is a plain shortest-path problem: links that do not land
and nodes that do not forward are removed, and scipy's Dijkstra (C) computes every first
arrival at once.

`WaveSpreader.spread` gives the exact answer of the Python pass or None. It gives None when
the message would still be travelling (or knocking at a node) at the next planned change, or
when a node's validator would judge it differently on arrival than at the publish instant;
the caller then runs the Python pass. tests/sim/test_wave.py holds the two passes equal on
random meshes, faults, skews and validator windows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from sim_harness.network import (
    NEVER_MS,
    BoolArray,
    FloatArray,
    IntArray,
    LinkSchedule,
    Mesh,
    NodeSchedule,
    Spread,
)

UP, SKEW, SILENT = 0, 1, 2


class _NodeStates:
    """Every node's planned state (up, clock skew, silent) at one instant, moved forward
    through the schedule's changes as publishing time advances, and each node's next change.

    Events of one node keep the schedule's order, so a down span that ends where the next
    begins leaves the node down, as `NodeSchedule.up` says."""

    def __init__(self, nodes: NodeSchedule, n: int) -> None:
        events: list[tuple[int, int, int, int]] = []
        for v in range(n):
            for start, end in nodes.down[v]:
                events.append((start, v, UP, 0))
                if end < NEVER_MS:
                    events.append((end, v, UP, 1))
            events += [(t, v, SKEW, skew) for t, skew in nodes.skews[v]]
            if nodes.silent_from[v] < NEVER_MS:
                events.append((nodes.silent_from[v], v, SILENT, 1))
        events.sort(key=lambda e: e[0])  # stable: a node's own order stays
        self.events = events
        self.times = [e[0] for e in events]
        later: dict[int, int] = {}
        self.then = [NEVER_MS] * len(events)
        """Per event: the time of its node's next event."""
        for k in range(len(events) - 1, -1, -1):
            v = events[k][1]
            self.then[k] = later.get(v, NEVER_MS)
            later[v] = events[k][0]
        self.first = np.array([later.get(v, NEVER_MS) for v in range(n)], np.int64)
        self.n = n
        self._reset()

    def _reset(self) -> None:
        n = self.n
        self.up = np.ones(n, np.bool_)
        self.skew = np.zeros(n, np.int64)
        self.silent = np.zeros(n, np.bool_)
        self.next_change = self.first.copy()
        self.k = 0
        self.at = -NEVER_MS

    def advance(self, t0: int) -> None:
        if t0 < self.at:
            self._reset()
        self.at = t0
        end = bisect.bisect_right(self.times, t0)
        for k in range(self.k, end):
            _, v, kind, value = self.events[k]
            if kind == UP:
                self.up[v] = bool(value)
            elif kind == SKEW:
                self.skew[v] = value
            else:
                self.silent[v] = True
            self.next_change[v] = self.then[k]
        self.k = max(self.k, end)


@dataclass(frozen=True)
class _Frame:
    """What holds for every message sent while the node states, the link epoch and the
    severed links stay as they are: the per-edge masks that would otherwise be gathered
    again for each message."""

    blocked: BoolArray
    lost_possible: bool
    up_dst: BoolArray
    sends: BoolArray
    """Per edge: the link is not blocked, its target is up and its source forwards (up and
    not silent; the validator aside)."""
    all_up: bool
    no_skew: bool
    hop_extra: IntArray | None
    first_change: int


class WaveSpreader:
    """The vectorised pass for one run's network: the mesh in array form, and every node's
    planned state as of the last message spread."""

    def __init__(self, mesh: Mesh, links: LinkSchedule, nodes: NodeSchedule) -> None:
        self.n = mesh.n
        self.links = links
        self.offsets: IntArray = np.asarray(mesh.offsets, np.int32)
        self.targets: IntArray = np.asarray(mesh.targets, np.int32)
        self.sources: IntArray = np.asarray(mesh.sources, np.int64)
        self.states = _NodeStates(nodes, mesh.n)
        self.severed_version = 0
        """Bumped by the network whenever a link is severed."""
        self._frame: tuple[tuple[int, int, int], _Frame] | None = None

    def _frame_for(self, epoch: int, severed: BoolArray) -> _Frame:
        nodes = self.states
        key = (nodes.k, epoch, self.severed_version)
        if self._frame is not None and self._frame[0] == key:
            return self._frame[1]
        state = self.links.states[epoch]
        blocked = state.blocked | severed
        up_dst = nodes.up[self.targets]
        frame = _Frame(
            blocked=blocked,
            lost_possible=bool((state.loss[~blocked] > 0).any()),
            up_dst=up_dst,
            sends=~blocked & up_dst & (nodes.up & ~nodes.silent)[self.sources],
            all_up=bool(nodes.up.all()),
            no_skew=not nodes.skew.any(),
            hop_extra=state.extra_ms if state.extra_ms.any() else None,
            first_change=int(nodes.next_change.min()),
        )
        self._frame = (key, frame)
        return frame

    def spread(
        self,
        src: int,
        t0: int,
        delay: IntArray,
        coin: FloatArray,
        severed: BoolArray,
        accept: tuple[int, int] | None,
    ) -> Spread | None:
        """The Python pass's answer for these draws (duplicates not yet added), or None."""
        nodes = self.states
        nodes.advance(t0)
        links = self.links
        epoch = links.at(t0)
        epoch_end = links.starts[epoch + 1] if epoch + 1 < len(links.starts) else NEVER_MS
        frame = self._frame_for(epoch, severed)
        state = links.states[epoch]
        up, skew = nodes.up, nodes.skew
        lo, hi = accept if accept is not None else (NEVER_MS, -NEVER_MS)
        src_e, dst_e = self.sources, self.targets
        n = self.n
        if frame.no_skew:
            everyone = lo <= t0 < hi
            accepts = np.full(n, everyone)
            live = frame.sends.copy() if everyone else np.zeros(len(dst_e), np.bool_)
        else:
            local = t0 + skew
            accepts = (lo <= local) & (local < hi)
            live = frame.sends & accepts[src_e]
        out_edges = slice(int(self.offsets[src]), int(self.offsets[src + 1]))
        live[out_edges] = ~frame.blocked[out_edges] & frame.up_dst[out_edges]  # src forwards
        lost = None
        if frame.lost_possible:
            lost = ~frame.blocked & (coin < state.loss)
            live &= ~lost
        hop_ms = delay if frame.hop_extra is None else delay + frame.hop_extra
        weight = np.where(live, hop_ms, np.inf)
        graph = csr_matrix((weight, self.targets, self.offsets), shape=(n, n))
        far = dijkstra(graph, indices=src)
        reached = np.isfinite(far)
        reached[src] = False
        at = t0 + np.where(reached, far, 0).astype(np.int64)
        latest = int(at.max())
        if latest >= epoch_end:  # the links change before the last forwarding node sends
            return None
        if latest + int(hop_ms.max()) >= frame.first_change or not frame.all_up:
            # some node's state may change before the message reaches it or knocks there in
            # vain: every such time must come before the node's next change
            fwd = reached & (up & ~nodes.silent) & accepts
            fwd[src] = True
            knocks = fwd[src_e] & ~frame.blocked & (dst_e != src)
            if lost is not None:
                knocks &= ~lost
            change = nodes.next_change
            if (at[reached] >= change[reached]).any():
                return None
            knock_at = at[src_e] + hop_ms
            if (knock_at[knocks] >= change[dst_e[knocks]]).any():
                return None
        if frame.no_skew and lo <= t0 and latest < hi:
            delivered, rejected = reached, 0  # every node's validator passes it throughout
        else:
            judged = at[reached] + skew[reached]
            accepted = accepts[reached]
            if not np.array_equal((lo <= judged) & (judged < hi), accepted):
                return None
            delivered, rejected = reached & accepts, int(np.count_nonzero(~accepted))
        who = np.flatnonzero(delivered)
        key = np.sort(at[who] * n + who)  # (time, node) order
        out = Spread([], [])
        out.times, out.nodes = key // n, key % n
        out.rejected = rejected
        if lost is not None or not frame.all_up or frame.blocked.any():
            # the popped nodes that forward: the publisher and every reached node that does
            fwd = delivered & ~nodes.silent
            fwd[src] = True
            from_fwd = fwd[src_e]
            if lost is not None:
                out.lost = int(np.count_nonzero(from_fwd & lost))
            out.blocked = int(np.count_nonzero(from_fwd & frame.blocked))
            tried = from_fwd & ~frame.blocked & (dst_e != src)
            if lost is not None:
                tried &= ~lost
            out.down = int(np.count_nonzero(tried & ~frame.up_dst))
        return out
