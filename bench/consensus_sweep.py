"""The consensus VOPR at scale: 10,000 seeds of examples/scenarios/consensus-swarm.toml.

Each seed draws its own story (crashes, disk losses, pauses, clock skews, partitions, cut
and one-way links, delays, loss, up to f Byzantine members of every consensus behaviour),
then everything heals; the checkers demand no fork, equal state roots, conservation, and a
chain that commits again. `make test` runs 100 seeds (tests/sim/test_consensus_sim.py);
this runs the 10,000 the issue asks of `make bench`, on every core, with a progress line,
and lists any failing seed with the command that replays it.

    python bench/consensus_sweep.py                 # seeds 1-10000
    python bench/consensus_sweep.py --quick --json  # 4 seeds: a smoke run (make test
                                                    # sweeps seeds 1-100 in its own test)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim_harness.sweep import SeedOutcome, default_jobs, run_sweep

SCENARIO = (
    Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "consensus-swarm.toml"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=default_jobs())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seeds = list(range(1, (4 if args.quick else args.seeds) + 1))
    started = time.monotonic()
    last = [0.0]

    def progress(done: int, total: int, outcome: SeedOutcome) -> None:
        now = time.monotonic()
        if not outcome.ok or done == total or now - last[0] > 10:
            last[0] = now
            state = "ok" if outcome.ok else f"FAILED {outcome.failures or outcome.error}"
            print(f"  {done}/{total} seeds ({now - started:.0f} s); seed {outcome.seed} {state}",
                  flush=True)  # fmt: skip

    result = run_sweep(SCENARIO, seeds, args.jobs, progress)
    failed = result.failed
    print(f"{len(seeds)} seeds, {len(failed)} failed, {result.wall_s:.0f} s on {result.jobs} "
          f"processes ({len(seeds) / result.wall_s:.1f} seeds/s)")  # fmt: skip
    for o in failed:
        print(f"  seed {o.seed}: {dict(o.failures) or o.error}\n    replay: {o.replay}")
    if args.json:
        print(json.dumps({
            "benchmark": "consensus_sweep", "scenario": str(SCENARIO), "seeds": len(seeds),
            "failed": [o.to_json() for o in failed], "wall_s": round(result.wall_s, 1),
            "jobs": result.jobs, "seeds_per_s": round(len(seeds) / result.wall_s, 2),
        }))  # fmt: skip
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
