"""The market simulator: the real ledger under churn and the market's Byzantine behaviours,
replayable from its seed, with its checkers (no job lost or paid twice, conservation every
block, no honest node slashed) and the catch rates the design claims."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.ledger.params import MarketParams
from sim_harness.market_sim import BEHAVIOURS, MarketScenario, run_market

CHEATERS = {b: 0.06 for b in BEHAVIOURS[1:]}


def test_the_same_seed_replays_bit_for_bit_and_another_seed_differs() -> None:
    scenario = MarketScenario(seed=5, nodes=20, jobs=60, churn=0.2, behaviours=CHEATERS)
    first, again = run_market(scenario), run_market(scenario)
    assert first.trace_hash == again.trace_hash
    assert first.to_json() == again.to_json()
    other = run_market(MarketScenario(seed=6, nodes=20, jobs=60, churn=0.2, behaviours=CHEATERS))
    assert other.trace_hash != first.trace_hash


def test_churn_loses_no_job_and_reroutes_within_five_seconds() -> None:
    result = run_market(MarketScenario(seed=7, nodes=60, jobs=600, jobs_per_block=10, churn=0.2))
    assert result.problems == []
    assert result.completion_rate == 1.0
    assert result.reroute_ms, "with 20% churn some replica must have been rerouted"
    assert result.percentile_ms(99) is not None and result.percentile_ms(99) <= 5_000
    assert result.uptime_percent < 100.0  # the crashes show in the measured uptime


def test_cheaters_are_caught_and_no_honest_node_is_slashed() -> None:
    result = run_market(MarketScenario(seed=8, nodes=50, jobs=400, behaviours=CHEATERS))
    assert result.problems == [] and result.honest_slashed == []
    assert set(result.caught) == set(BEHAVIOURS[1:]), result.caught
    for behaviour in ("liar", "flaky", "withhold"):  # a missed step is always seen
        caught, seen = result.caught[behaviour]
        assert seen > 0 and caught == seen, (behaviour, result.caught)
    for behaviour in ("wrong", "lazy"):  # caught when outvoted by a strict majority
        caught, seen = result.caught[behaviour]
        assert 0 < caught <= seen, (behaviour, result.caught)
    assert result.completion_rate > 0.9


@pytest.mark.parametrize("seed", range(20, 32))
def test_seed_sweep_with_churn_and_cheaters_keeps_every_invariant(seed: int) -> None:
    result = run_market(
        MarketScenario(seed=seed, nodes=24, jobs=80, churn=0.2, behaviours=CHEATERS)
    )
    assert result.problems == [], f"seed {seed}: {result.problems}"


def test_soak_mode_fails_nodes_repeatedly_and_measures_availability() -> None:
    result = run_market(
        MarketScenario(
            seed=9,
            nodes=10,
            jobs=150,
            jobs_per_block=1,
            mtbf_blocks=60,
            outage_blocks=(1, 6),
            drain_blocks=30,
            market=MarketParams(
                commit_window_blocks=6,
                reveal_window_blocks=2,
                heartbeat_blocks=1,
                down_after_blocks=1,
            ),
        )
    )
    assert result.problems == []
    assert 50.0 < result.uptime_percent < 100.0
    assert result.available_percent == 100.0  # ten nodes: never fewer than two up at once


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (dict(behaviours={"evil": 0.1}), "unknown behaviours"),
        (dict(behaviours={"wrong": 0.7, "lazy": 0.5}), "at most 1"),
        (dict(nodes=3), "redundancy"),
        (dict(market=MarketParams(commit_window_blocks=3)), "no time"),
    ],
)
def test_bad_scenarios_are_refused_with_a_reason(bad: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        MarketScenario(**bad)  # type: ignore[arg-type]


def test_the_cli_runs_a_seed_and_prints_its_figures() -> None:
    import json

    from tests.integration.cli import gpumesh

    done = gpumesh("sim", "market", "--nodes", "20", "--jobs", "40", "--cheaters", "0.2",
                   "--seed", "4", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["seed"] == 4 and doc["jobs"] == 40 and doc["problems"] == []
    again = gpumesh("sim", "market", "--nodes", "20", "--jobs", "40", "--cheaters", "0.2",
                    "--seed", "4", "--json")  # fmt: skip
    assert json.loads(again.stdout)["trace_sha256"] == doc["trace_sha256"]
    bad = gpumesh("sim", "market", "--nodes", "2")
    assert bad.returncode == 2 and "redundancy" in bad.stderr


def test_the_cli_plots_prices_through_a_surge(tmp_path: Path) -> None:
    import json

    from tests.integration.cli import gpumesh

    plot = tmp_path / "prices.png"
    args = ["--nodes", "12", "--jobs", "150", "--jobs-per-block", "1", "--surge", "10,20,15"]
    done = gpumesh("sim", "market", *args, "--churn", "0", "--plot", str(plot), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert plot.read_bytes().startswith(b"\x89PNG")
    for name, peak in doc["prices"]["peak"].items():
        assert doc["prices"]["final"][name] < peak
    bad = gpumesh("sim", "market", "--surge", "5,2,1")
    assert bad.returncode == 2 and "FIRST <= LAST" in bad.stderr
