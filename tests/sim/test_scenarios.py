"""Scenario files, and simulated stories told with them: a partition and its heal, churn,
Byzantine nodes, a failure that replays exactly; plus the fault vocabulary and the errors a
scenario author sees."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from node.core import NodeCore
from sim_harness.checkers import CHECKERS, Checker, SimView, Verdict, register_checker
from sim_harness.faults import (
    ClockSkew,
    Crash,
    FaultError,
    Heal,
    Nodes,
    Partition,
    Restart,
    parse_duration_ms,
    parse_fault,
    plan_faults,
)
from sim_harness.scenario import ScenarioError, load_scenario, scenario_from_toml
from sim_harness.simulator import EPOCH_MS, Simulator

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "examples" / "scenarios"


def example(name: str) -> Path:
    return SCENARIOS / f"{name}.toml"


def test_every_example_scenario_loads() -> None:
    names = sorted(p.stem for p in SCENARIOS.glob("*.toml"))
    assert {"partition-heal", "churn", "byzantine", "swarm", "large"} <= set(names)
    for name in names:
        sc = load_scenario(example(name))
        assert sc.name and sc.nodes and sc.duration_ms > 0
    assert len(load_scenario(example("large")).node_names) == 1_000


# ---------------------------------------------------------------------------------------------
# partition and heal


def test_partition_hides_fresh_announcements_and_the_heal_brings_them_back() -> None:
    sc = load_scenario(example("partition-heal"))
    (partition,) = [f for f in sc.faults if isinstance(f, Partition)]
    start = partition.at_ms
    sim = Simulator(sc, sc.seed)
    a_side = [i for i, x in enumerate(sim.names) if x.startswith("a")]
    b_keys = {sim.public_key(i) for i, x in enumerate(sim.names) if x.startswith("b")}
    views: dict[int, list[list[int]]] = {}

    def look(at: int) -> None:
        def record(s: Simulator) -> None:
            views[at] = []
            for i in a_side:
                core = s.core(i)
                assert core is not None
                live = core.book.live(s.local_now(i))
                views[at].append([a.issued_ms for a in live if a.node_id in b_keys])

        sim.observe_at(at, record)

    for at in (start - 1_000, start + 10_000, start + 40_000):
        look(at)
    result = sim.run()
    before, during, later = (views[t] for t in sorted(views))
    assert all(len(v) == 50 for v in before)  # everyone saw everyone before
    # in the partition: only announcements issued before it began, then none at all
    fresh_limit = EPOCH_MS + start + 1_000  # in flight when the partition began
    assert all(issued <= fresh_limit for v in during for issued in v)
    assert all(v == [] for v in later)  # ttl 30 s: the old ones expired
    assert result.ok, result.checkers
    assert result.metrics.messages["blocked"] > 0
    conv = dict(result.metrics.convergence)
    assert conv[start + 40_000] == 0.0 and conv[result.sim_ms] == 1.0


def test_churn_scenario_passes_its_checkers() -> None:
    sc = load_scenario(example("churn"))
    result = Simulator(sc, sc.seed).run()
    assert result.ok, result.checkers
    kinds = {d.split()[0] for _, d in result.metrics.faults}
    assert {"crash", "restart", "pause", "resume", "disk_loss", "clock_skew"} <= kinds
    assert result.metrics.messages["duplicated"] > 0 and result.metrics.messages["lost"] > 0


def test_byzantine_scenario_passes_and_each_behaviour_shows() -> None:
    sc = load_scenario(example("byzantine"))
    sim = Simulator(sc, sc.seed)
    result = sim.run()
    assert result.ok, result.checkers
    m = result.metrics.messages
    assert m["rejected_by_validator"] > 0  # garbage and forgeries die at the first hop
    assert m["verdict_malformed"] > 0 and m["verdict_bad_signature"] > 0
    assert m["disconnects"] > 0  # ... and their direct copies get the sender dropped
    assert m["verdict_stale"] > 0  # replays
    liar = sim.public_key(sim.names.index("x004"))
    honest = sim.core(0)
    assert isinstance(honest, NodeCore)
    lie = honest.book.get(liar)
    assert lie is not None and lie.gpus[0].model == "H100"  # accepted: undetectable by gossip
    silent = sim.public_key(sim.names.index("x000"))
    assert honest.book.get(silent) is None  # never published


# ---------------------------------------------------------------------------------------------
# failures and their replay

TOO_SHORT = """
name = "too-short"
duration = "40s"
liveness = "1s"
[gossip]
announce_interval = "4s"
ttl = "12s"
[[nodes]]
prefix = "a"
count = 10
[[nodes]]
prefix = "b"
count = 10
regions = ["us-west"]
[[faults]]
at = "5s"
partition = [["a*"], ["b*"]]
"""


def test_a_failing_run_prints_its_replay_and_replays_exactly(tmp_path: Path) -> None:
    path = tmp_path / "too-short.toml"
    path.write_text(TOO_SHORT)
    sc = load_scenario(path)
    first = Simulator(sc, 99).run()
    assert not first.ok
    verdict = first.checkers["book_convergence"]
    assert not verdict.ok and "incomplete books" in verdict.detail
    assert first.replay_command == f"gpumesh sim run {path} --seed 99"
    again = Simulator(load_scenario(path), 99).run()
    assert again.trace_sha256 == first.trace_sha256
    assert again.checkers == first.checkers


@pytest.fixture
def failing_checker() -> Iterator[str]:
    @register_checker
    class AlwaysFails(Checker):
        name = "test_always_fails"

        def __init__(self) -> None:
            self.samples = 0

        def on_sample(self, sim: SimView) -> None:
            self.samples += 1

        def verdict(self, sim: SimView) -> Verdict:
            return Verdict(False, f"failed on purpose after {self.samples} samples")

    yield AlwaysFails.name
    del CHECKERS[AlwaysFails.name]


def test_a_pluggable_checker_fails_the_run(failing_checker: str) -> None:
    sc = replace(scenario_from_toml(TOO_SHORT), liveness_ms=20_000, checkers=(failing_checker,))
    result = Simulator(sc, 1).run()
    assert not result.ok
    assert result.checkers[failing_checker].detail == "failed on purpose after 61 samples"


def test_a_core_that_raises_is_recorded_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    real = NodeCore.step
    victim = Simulator(scenario_from_toml(TOO_SHORT), 1).identities[3].public_key

    def flaky(self: NodeCore, now_ms: int, inp: object) -> object:
        if self.identity.public_key == victim and now_ms > EPOCH_MS + 10_000:
            raise RuntimeError("boom")
        return real(self, now_ms, inp)  # type: ignore[arg-type]

    monkeypatch.setattr(NodeCore, "step", flaky)
    sc = replace(scenario_from_toml(TOO_SHORT), liveness_ms=20_000)
    result = Simulator(sc, 1).run()
    verdict = result.checkers["no_crash_on_bad_input"]
    assert not verdict.ok and "boom" in verdict.detail and "node=a003" in verdict.detail
    assert result.metrics.crashes and not result.ok


# ---------------------------------------------------------------------------------------------
# the fault vocabulary


@pytest.mark.parametrize(
    ("text", "ms"),
    [("30s", 30_000), ("250ms", 250), ("1.5s", 1_500), ("2m", 120_000), ("1h", 3_600_000), (7, 7)],
)
def test_durations(text: str | int, ms: int) -> None:
    assert parse_duration_ms(text, "x") == ms


@pytest.mark.parametrize("text", ["30", "1.5ms", "-1s", "s", True, 1.5, "3 days"])
def test_bad_durations_name_the_field(text: object) -> None:
    with pytest.raises(FaultError, match=r"^faults\[0\]\.at: "):
        parse_duration_ms(text, "faults[0].at")


def test_selectors_resolve_names_patterns_and_seeded_shares() -> None:
    names = [f"a{i:03d}" for i in range(20)] + [f"b{i:03d}" for i in range(20)]
    assert Nodes(("a00*", "b019")).resolve(names, random.Random(1)) == (
        *(f"a{i:03d}" for i in range(10)),
        "b019",
    )
    share = Nodes(permille=100)
    picks = share.resolve(names, random.Random(5))
    assert len(picks) == 4 and picks == share.resolve(names, random.Random(5))
    assert picks != share.resolve(names, random.Random(6))


def test_for_expands_into_the_fault_and_its_undoing() -> None:
    crash = parse_fault({"at": "10s", "crash": "10%", "for": "5s"}, "f")
    part = parse_fault({"at": "1s", "partition": [["a*"], ["b*"]], "for": "20s"}, "f")
    names = ["a1", "a2", "b1", "b2"]
    plan = plan_faults([crash, part], names, random.Random(2))
    assert [type(f) for f in plan] == [Partition, Crash, Restart, Heal]
    assert [f.at_ms for f in plan] == [1_000, 10_000, 15_000, 21_000]
    assert plan[1].selectors() == plan[2].selectors()  # the same drawn nodes come back
    assert plan[0].describe() == "partition a1,a2 | b1,b2"
    skew = parse_fault({"at": 0, "clock_skew": {"nodes": "a*", "by": "-2s"}}, "f")
    assert isinstance(skew, ClockSkew) and skew.by_ms == -2_000


# ---------------------------------------------------------------------------------------------
# what a scenario author sees when something is wrong

BASE = 'name = "x"\nduration = "10s"\n'
NODES = '[[nodes]]\nprefix = "a"\ncount = 3\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "durration = 1\n" + NODES, "durration: unknown key; did you mean 'duration'?"),
        ('name = "x"\n' + NODES, "duration: required"),
        (BASE, "nodes: required"),
        (BASE + "[[nodes]]\ncount = 3\n", "nodes[0].prefix: required"),
        (BASE + '[[nodes]]\nprefix = "a"\n', "nodes[0].count: required"),
        (BASE + '[[nodes]]\nprefix = "a"\ncount = 3\nregions = []\n', "at least one region"),
        (BASE + "[network]\nmesh_degre = 4\n" + NODES, "network.mesh_degre: unknown key; did"),
        (BASE + "[network]\nloss = 2\n" + NODES, "network.loss: expected a probability"),
        (BASE + '[[nodes]]\nprefix = "a"\ncount = 3\nregions = ["mars"]\n', "nodes[0].regions[0]"),
        (BASE + NODES + '[[nodes]]\nprefix = "a"\ncount = 2\n', "nodes[1].prefix: node name"),
        (BASE + NODES + '[[faults]]\nat = "1s"\ncrash = "z*"\n', "faults[0].crash: 'z*' matches"),
        (BASE + NODES + '[[faults]]\nat = "1s"\ncrsh = "a*"\n', "did you mean 'crash'"),
        (BASE + NODES + '[[faults]]\nat = "20s"\ncrash = "a*"\n', "faults[0].at: 20000 ms"),
        (
            BASE
            + NODES
            + '[[faults]]\nat = "1s"\nbyzantine = {nodes = "a*", behaviour = "evil"}\n',
            "faults[0].byzantine.behaviour: unknown behaviour 'evil'",
        ),
        (
            BASE + NODES + '[[faults]]\nat = "1s"\nheal = true\nchecker = ["x"]\n',
            "faults[0].checker",
        ),
        (BASE + 'checkers = ["book_convergance"]\n' + NODES, "did you mean 'book_convergence'"),
        (BASE + '[gossip]\nannounce_interval = "10s"\nttl = "5s"\n' + NODES, "gossip.ttl: must"),
        (BASE + '[swarm]\nkinds = ["meteor"]\n' + NODES, "swarm.kinds[0]: unknown 'meteor'"),
    ],
)
def test_scenario_errors_name_the_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        scenario_from_toml(text, "s.toml")
    assert str(err.value).startswith("s.toml: ")
    assert message in str(err.value)


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="file not found"):
        load_scenario(tmp_path / "nope.toml")
