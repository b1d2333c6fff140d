"""Every benchmark runs in --quick mode and prints one JSON object last (figures, not timed
assertions: the numbers themselves are judged in `make bench`, never here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted((ROOT / "bench").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES, ids=[b.stem for b in BENCHES])
def test_benchmark_quick_run_prints_its_figures(bench: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(bench), "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == bench.stem
    if bench.stem == "sim_speed":  # the book table and a core step per delivery agree
        (size,) = figures["sizes"]
        assert size["completed"] and size["checkers_ok"] and size["deliveries"] > 0
        assert figures["baseline"]["same_final_state"] is True
    if bench.stem == "gossip":
        (size,) = figures["sizes"]
        assert size["nodes"] == 3
        assert size["announcements_issued"] > 0
        assert 0 < size["delivery_ratio"] <= 1
        assert size["to_all_p99_ms"] is not None and size["rss_mib_mean"] > 0
