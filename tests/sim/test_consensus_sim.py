"""The consensus simulator: real ConsensusEngines under every fault the issue names.

Each scenario file in examples/scenarios/consensus-*.toml must pass its checkers (agreement,
equal state roots, conservation, liveness after the heal, no engine raising, and for the
Byzantine ones, the equivocators slashed); the same seed must replay bit for bit; and 100
seeds of the VOPR-style consensus swarm, each drawing its own crashes, disk losses,
partitions and up to f Byzantine members, must find no fork, no conservation breach and no
stuck chain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim_harness.consensus_sim import ConsensusSimulator
from sim_harness.scenario import ScenarioError, load_scenario, scenario_from_toml
from sim_harness.sweep import run_sweep

SCENARIOS = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
NAMED = [
    "consensus-basic", "consensus-leader-crash", "consensus-partition",
    "consensus-equivocation", "consensus-byzantine-voters", "consensus-lossy",
    "consensus-wiped-disk", "consensus-hub-byzantine",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMED)
def test_scenario_passes_its_checkers(name: str) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    result = ConsensusSimulator(sc, sc.seed).run()
    bad = {k: v.detail for k, v in result.checkers.items() if not v.ok}
    assert result.ok, f"{bad}\nreplay: {result.replay_command}"
    assert result.metrics.messages["blocks"] > 10
    assert result.metrics.crashes == []


def test_partition_of_a_third_stops_the_chain_then_it_resumes() -> None:
    """3 of 9 members cut away leave exactly 2/3 of the stake: no side may commit during the
    partition (8 s .. 28 s), and the chain moves again after the heal."""
    sc = load_scenario(SCENARIOS / "consensus-partition.toml")
    sim = ConsensusSimulator(sc, 1)
    heights: dict[int, int] = {}

    def top(s: ConsensusSimulator) -> int:
        return max(e.chain.height for i in s.honest if (e := s.engine(i)) is not None)

    for t in (9_000, 27_000, 59_000):
        sim.observe_at(t, lambda s, t=t: heights.__setitem__(t, top(s)))  # type: ignore[misc]
    result = sim.run()
    assert result.ok
    assert heights[27_000] - heights[9_000] <= 1  # at most a block already decided at the cut
    assert heights[59_000] > heights[27_000] + 2


def test_equivocation_is_slashed_from_evidence() -> None:
    sc = load_scenario(SCENARIOS / "consensus-equivocation.toml")
    sim = ConsensusSimulator(sc, sc.seed)
    result = sim.run()
    assert result.checkers["equivocators_slashed"].ok
    cheat = sim.public_key(sim.names.index("m000"))
    for i in sim.honest:
        eng = sim.engine(i)
        assert eng is not None
        op = eng.chain.state.operators[cheat]
        assert op.slashed_total > 0
        assert eng.chain.state.is_jailed(cheat)


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    sc = load_scenario(SCENARIOS / "consensus-swarm.toml")
    a = ConsensusSimulator(sc, 11).run()
    b = ConsensusSimulator(sc, 11).run()
    c = ConsensusSimulator(sc, 12).run()
    assert (a.trace_sha256, a.state_sha256, a.events) == (b.trace_sha256, b.state_sha256, b.events)
    assert a.trace_sha256 != c.trace_sha256


def test_hundred_seeds_of_consensus_swarm_find_no_fork_and_no_stuck_chain() -> None:
    """Through `run_sweep`, as `gpumesh sim sweep` runs them: one process per core."""
    path = str(SCENARIOS / "consensus-swarm.toml")
    sweep = run_sweep(path, range(1, 101))
    assert [o.seed for o in sweep.outcomes] == list(range(1, 101))
    failures = [f"seed {o.seed}: {o.failures} {o.error or ''}" for o in sweep.failed]
    assert failures == [], "\n".join(failures)


def test_consensus_section_is_validated() -> None:
    base = 'name = "x"\nduration = "5s"\n[[nodes]]\nprefix = "a"\ncount = 4\n'
    with pytest.raises(ScenarioError, match=r"consensus\.committe"):
        scenario_from_toml(base + "[consensus]\ncommittee = 4\n")
    with pytest.raises(ScenarioError, match=r"consensus\.empty_block"):
        scenario_from_toml(base + '[consensus]\nempty_block = "5s"\ntimeout_propose = "1s"\n')
    sc = scenario_from_toml(base + "[consensus]\ncommittee_size = 4\n")
    assert sc.consensus is not None and "agreement" in sc.checkers


def test_sim_run_cli_prints_consensus_json(capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    code = main(["sim", "run", str(SCENARIOS / "consensus-equivocation.toml"), "--json"])
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and doc["ok"] is True
    assert set(doc["checkers"]) >= {"agreement", "equal_state_roots", "conservation"}
