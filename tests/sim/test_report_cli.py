"""`gpumesh sim run|sweep` and the run report, as a user drives them.

Unit tests cover the seed-range parser and the report writer on a hand-built result (empty
series too, as a live swarm run may have). The CLI tests run the real simulator through
`python -m node.cli` in a subprocess, on small scenarios, and check the one promise that
matters most: the replay command a failure prints reproduces that failure, trace and all.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.cli import main as cli_main
from sim_harness.checkers import Verdict
from sim_harness.report import (
    CONVERGENCE_PNG,
    FAULTS_PNG,
    LATENCY_PNG,
    convergence_after_heal_ms,
    partition_intervals,
    write_report,
)
from sim_harness.simulator import SimMetrics, SimResult
from sim_harness.sweep import SEEDS_MAX, SeedRangeError, parse_seed_range, run_sweep

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# seed ranges


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("5", [5]),
        ("1-4", [1, 2, 3, 4]),
        ("1,2,7", [1, 2, 7]),
        ("7, 2,2 ,1-3", [1, 2, 3, 7]),
        ("0-0", [0]),
    ],
)
def test_parse_seed_range_accepts(text: str, seeds: list[int]) -> None:
    assert parse_seed_range(text) == seeds


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("5-1", "backwards"),
        ("a-3", "not a seed"),
        ("-3", "not a seed"),
        ("1,,2", "not a seed"),
        ("1.5", "not a seed"),
        ("1_000", "not a seed"),
        (f"1-{SEEDS_MAX + 1}", "more than"),
        (str(2**64), "too large"),
    ],
)
def test_parse_seed_range_rejects_with_reason(text: str, why: str) -> None:
    with pytest.raises(SeedRangeError, match=why):
        parse_seed_range(text)


# ---------------------------------------------------------------------------------------------
# the report, from a hand-built result (real SimResult, SimMetrics and Verdict instances)


def hand_built(
    latencies: list[int], *, name: str = "hand <b>built</b>", ok: bool = False
) -> SimResult:
    metrics = SimMetrics(
        delivery_latency_ms=latencies,
        convergence=[(t * 1000, 1.0 if t < 5 or t >= 14 else 0.5) for t in range(30)],
        faults=[(5_000, "partition a* | b*"), (9_000, "crash a001"), (12_000, "heal"),
                (12_000, "restart a001"), (20_000, "heal")],
        messages={"published": 40, "delivered": 400},
        crashes=[],
        phase_end_ms=12_000,
    )  # fmt: skip
    return SimResult(
        seed=42,
        scenario_name=name,
        scenario_path="tests/sim/scenarios/x.toml",
        nodes=12,
        sim_ms=30_000,
        wall_s=0.25,
        events=5_000,
        trace_sha256="ab" * 32,
        state_sha256="cd" * 32,
        checkers={
            "book_convergence": Verdict(False, "a000 lacks <b001>"),
            "no_crash_on_bad_input": Verdict(True, "no core raised"),
        },
        ok=ok,
        replay_command="gpumesh sim run tests/sim/scenarios/x.toml --seed 42",
        metrics=metrics,
    )


def check_report_files(out: Path, index: Path) -> str:
    assert index == out / "index.html"
    for png in (LATENCY_PNG, CONVERGENCE_PNG, FAULTS_PNG):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1_000, png
    page = index.read_text()
    for ref in (LATENCY_PNG, CONVERGENCE_PNG, FAULTS_PNG, "metrics.json"):
        assert ref in page
    return page


def test_write_report_on_a_hand_built_result(tmp_path: Path) -> None:
    result = hand_built([5, 10, 10, 20, 40, 80, 300])
    page = check_report_files(tmp_path, write_report(result, tmp_path))
    assert 'seed <b class="mono">42</b>' in page
    assert "gpumesh sim run tests/sim/scenarios/x.toml --seed 42" in page
    assert "hand &lt;b&gt;built&lt;/b&gt;" in page and "<b>built</b>" not in page
    assert "a000 lacks &lt;b001&gt;" in page
    assert "class='fail'" in page and "class='ok'" in page
    assert "class='nodata'" not in page
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["seed"] == 42 and doc["metrics"]["delivery_latency_ms"][-1] == 300
    derived = doc["derived"]
    assert derived["delivery"] == {
        "count": 7, "p50_ms": 20.0, "p90_ms": 168.0, "p99_ms": 286.8, "max_ms": 300
    }  # fmt: skip
    assert derived["convergence_after_heal_ms"] == 2_000
    assert derived["counts"]["faults_by_kind"] == {
        "crash": 1, "heal": 2, "partition": 1, "restart": 1
    }  # fmt: skip
    assert derived["counts"]["checkers_failed"] == 1


def test_write_report_copes_with_empty_series(tmp_path: Path) -> None:
    """A live swarm run may have no latencies; a quiet run no faults. Every plot is still
    written, and the page says which ones have no data."""
    base = hand_built([], ok=True)
    empty = SimMetrics([], [], [], {}, [], 0)
    result = dataclasses.replace(base, metrics=empty, checkers={})
    page = check_report_files(tmp_path, write_report(result, tmp_path))
    assert "No delivery latencies were recorded" in page
    assert "No convergence samples were recorded" in page
    assert "No faults were injected" in page
    derived = json.loads((tmp_path / "metrics.json").read_text())["derived"]
    assert derived["delivery"]["count"] == 0 and derived["delivery"]["p99_ms"] is None
    assert derived["convergence_after_heal_ms"] is None


@pytest.mark.parametrize(
    ("samples", "phase_end", "expected"),
    [
        ([(0, 0.5), (1000, 1.0), (2000, 1.0)], 1000, 0),
        ([(0, 1.0), (1000, 0.5), (2000, 1.0), (3000, 0.9), (4000, 1.0)], 1000, 3000),
        ([(0, 1.0), (1000, 1.0), (2000, 0.5)], 0, None),
        ([(0, 1.0)], 5000, None),
    ],
)
def test_convergence_after_heal_needs_it_to_stay_converged(
    samples: list[tuple[int, float]], phase_end: int, expected: int | None
) -> None:
    assert convergence_after_heal_ms(samples, phase_end) == expected


def test_partition_intervals_pair_splits_with_heals() -> None:
    faults = [(1, "partition a | b"), (2, "partition a | c"), (5, "heal"), (7, "cut a <-> b")]
    assert partition_intervals(faults, 10) == [(1, 5), (7, 10)]


# ---------------------------------------------------------------------------------------------
# the CLI, through a subprocess, on the real simulator

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SMALL = (SCENARIOS / "small.toml").relative_to(ROOT).as_posix()
FAILING = (SCENARIOS / "too_short.toml").relative_to(ROOT).as_posix()
RUN_KEYS = {"seed", "scenario", "nodes", "sim_seconds", "wall_seconds", "events",
            "trace_sha256", "checkers", "ok", "replay"}  # fmt: skip
TRACE_RE = re.compile(r"trace ([0-9a-f]{64})")


def gpumesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=120,
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(doc, dict)
    return doc


def replay_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("replay: ")]
    assert len(lines) == 1, text
    return lines[0].removeprefix("replay: ")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    report = tmp_path_factory.mktemp("report")
    proc = gpumesh("sim", "run", SMALL, "--seed", "7", "--report", str(report), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "seed 7" in proc.stderr  # the seed is printed before the run starts
    return last_json(proc), report


def test_sim_run_json_has_every_key(small_run: tuple[dict[str, Any], Path]) -> None:
    doc, report = small_run
    assert doc.keys() >= RUN_KEYS
    assert doc["ok"] is True and doc["seed"] == 7 and doc["nodes"] == 12
    assert doc["sim_seconds"] == 50.0 and doc["events"] > 0
    assert re.fullmatch(r"[0-9a-f]{64}", doc["trace_sha256"])
    assert set(doc["checkers"]) == {"book_convergence", "no_crash_on_bad_input"}
    assert all(v["ok"] and v["detail"] for v in doc["checkers"].values())
    assert doc["replay"] == f"gpumesh sim run {SMALL} --seed 7"
    assert doc["report"] == str(report / "index.html")


def test_sim_run_writes_the_report(small_run: tuple[dict[str, Any], Path]) -> None:
    doc, report = small_run
    page = check_report_files(report, report / "index.html")
    assert 'seed <b class="mono">7</b>' in page and doc["replay"] in page
    assert "class='nodata'" not in page  # the small scenario populates every plot
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["trace_sha256"] == doc["trace_sha256"]
    assert metrics["derived"]["delivery"]["count"] > 0


def test_same_seed_same_trace(small_run: tuple[dict[str, Any], Path]) -> None:
    doc, _ = small_run
    again = gpumesh("sim", "run", SMALL, "--seed", "7", "--json")
    other = gpumesh("sim", "run", SMALL, "--seed", "8", "--json")
    assert last_json(again)["trace_sha256"] == doc["trace_sha256"]
    assert last_json(other)["trace_sha256"] != doc["trace_sha256"]


def test_a_failure_prints_a_replay_command_that_reproduces_it() -> None:
    first = gpumesh("sim", "run", FAILING, "--seed", "11", "--json")
    assert first.returncode == 1, first.stderr
    doc = last_json(first)
    assert doc["ok"] is False and not doc["checkers"]["book_convergence"]["ok"]
    command = replay_line(first.stderr)  # with --json, human lines go to stderr
    assert command == doc["replay"]
    argv = shlex.split(command)
    assert argv[:3] == ["gpumesh", "sim", "run"]
    replay = gpumesh(*argv[1:])  # exactly the printed command, as `python -m node.cli`
    assert replay.returncode == 1
    assert "FAILED: book_convergence" in replay.stdout
    assert doc["checkers"]["book_convergence"]["detail"][:40] in " ".join(replay.stdout.split())
    match = TRACE_RE.search(replay.stdout)
    assert match is not None and match.group(1) == doc["trace_sha256"]
    assert replay_line(replay.stdout) == command


def test_per_delivery_runs_end_in_the_same_state_and_replay_with_the_flag(
    small_run: tuple[dict[str, Any], Path],
) -> None:
    doc, _ = small_run
    proc = gpumesh("sim", "run", SMALL, "--seed", "7", "--per-delivery", "--json")
    assert proc.returncode == 0, proc.stderr
    step = last_json(proc)
    assert step["state_sha256"] == doc["state_sha256"]  # the same books at the end
    assert step["trace_sha256"] != doc["trace_sha256"]  # one trace record per delivery
    assert step["events"] > doc["events"]
    assert step["replay"] == f"gpumesh sim run {SMALL} --seed 7 --per-delivery"
    again = gpumesh(*shlex.split(step["replay"])[1:], "--json")
    assert last_json(again)["trace_sha256"] == step["trace_sha256"]


def test_without_seed_the_scenario_seed_is_used_and_printed() -> None:
    proc = gpumesh("sim", "run", FAILING, "--json", "--no-progress")
    doc = last_json(proc)
    assert doc["seed"] == 1 and doc["replay"].endswith("--seed 1")
    assert "seed 1" in proc.stderr


def test_sweep_of_a_passing_scenario() -> None:
    proc = gpumesh("sim", "sweep", SMALL, "--seeds", "1-4", "--jobs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = last_json(proc)
    assert doc["ok"] is True and doc["seeds"] == 4 and doc["failed"] == []
    assert doc["scenario"] == "test-small-partition-heal"
    assert "4 seeds, 0 failed" in proc.stderr


def test_sweep_lists_every_failure_with_its_replay() -> None:
    proc = gpumesh("sim", "sweep", FAILING, "--seeds", "1-4", "--jobs", "2", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = last_json(proc)
    assert doc["ok"] is False
    assert [f["seed"] for f in doc["failed"]] == [1, 2, 3, 4]
    for f in doc["failed"]:
        assert f["replay"] == f"gpumesh sim run {FAILING} --seed {f['seed']}"
        assert "book_convergence" in f["checkers"] and f["error"] is None
        assert f["replay"] in proc.stderr
    assert "4 seeds, 4 failed" in proc.stderr


# ---------------------------------------------------------------------------------------------
# errors the user can fix, and a sweep worker that raises


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["sim", "run", "tests/sim/scenarios/nope.toml"], "no such scenario file"),
        (["sim", "run", SMALL, "--seed", "-1"], "not a seed"),
        (["sim", "sweep", SMALL, "--seeds", "9-3"], "runs backwards"),
        (["sim", "sweep", SMALL, "--seeds", "1-2", "--jobs", "0"], "--jobs"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpumesh: error:") and why in err and "\n" not in err


def test_a_bad_scenario_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nduration = "5s"\n[[nodes]]\nprefix = "a"\ncount = 2\nbogus = 1\n')
    assert cli_main(["sim", "run", str(bad), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "nodes[0].bogus" in err and "\n" not in err


def test_a_worker_that_raises_becomes_a_failure_not_a_hang(tmp_path: Path) -> None:
    gone = tmp_path / "gone.toml"  # vanished after the parent checked it: workers raise
    result = run_sweep(gone, [3, 1], jobs=1)
    assert [o.seed for o in result.outcomes] == [1, 3]
    assert not result.ok and len(result.failed) == 2
    for o in result.failed:
        assert o.error is not None and "ScenarioError" in o.error
        assert o.replay == f"gpumesh sim run {gone} --seed {o.seed}"
