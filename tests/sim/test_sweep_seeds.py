"""VOPR in CI: the swarm scenario, shrunk, under 50 seeds in a row; every seed must pass.

Each seed draws its own fault timeline (crashes, disk loss, pauses, skew, partitions, cut
and one-way links, delay, loss, Byzantine nodes) and network flakiness, so this sweeps 50
different stories. A failure names the seed and the command that replays it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sim_harness.scenario import Scenario, load_scenario
from sim_harness.simulator import Simulator

SWARM = Path(__file__).resolve().parents[2] / "examples" / "scenarios" / "swarm.toml"
SEEDS = range(1, 51)


def small_swarm() -> Scenario:
    sc = load_scenario(SWARM)
    assert sc.swarm.enabled
    return replace(sc, nodes=tuple(replace(g, count=16) for g in sc.nodes))


def test_fifty_seeds_of_the_swarm_scenario_pass() -> None:
    sc = small_swarm()
    failures, kinds = [], set()
    for seed in SEEDS:
        result = Simulator(sc, seed).run()
        kinds.update(d.split()[0] for _, d in result.metrics.faults)
        if not result.ok:
            bad = {k: v.detail for k, v in result.checkers.items() if not v.ok}
            failures.append(f"seed {seed}: {bad}\n  replay: {result.replay_command}")
    assert failures == [], "\n".join(failures)
    # the seeds between them drew every kind of fault
    assert {"crash", "disk_loss", "pause", "clock_skew", "partition", "cut", "one_way"} <= kinds
    assert {"delay", "loss", "byzantine", "heal", "restart", "resume"} <= kinds


def test_seeds_draw_different_timelines() -> None:
    sc = small_swarm()
    timelines = {tuple(Simulator(sc, seed).plan) for seed in range(1, 6)}
    assert len(timelines) == 5
