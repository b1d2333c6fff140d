"""GPU class prices on chain: listed by the first offer of a class, moved one bounded step
per block by the utilisation the ledger sees, and the floor at which nodes are scheduled
and paid; the market simulator's demand surge raises them and idle capacity lowers them."""

from __future__ import annotations

from consensus.ledger import decode_state
from consensus.ledger.job_records import JobStatus
from consensus.ledger.prices import effective_price, gpu_class, supply_and_demand
from consensus.market.pricing import PricingParams
from sim_harness.market_sim import MarketScenario, MarketSim
from tests.market.test_job_lifecycle import NODES, PRICE, offered_market


def test_class_names_are_canonical() -> None:
    assert gpu_class("RTX 4090") == "rtx-4090"
    assert gpu_class("A100-SXM4-80GB") == "a100-sxm4-80gb"
    assert gpu_class("  H100  (SXM) ") == "h100-sxm"
    assert gpu_class("***") == "unnamed"


def test_the_first_offer_lists_its_class_and_idle_capacity_lowers_the_price() -> None:
    m = offered_market()
    assert dict(m.state.prices) == {"a100": PRICE - PRICE * 1_250 // 10_000}  # listed, then idle
    step = PricingParams().max_step_bps
    before = m.state.prices["a100"]
    m.ok()
    assert m.state.prices["a100"] == before - before * step // 10_000  # one full step down
    copy = decode_state(m.state.encode())
    assert copy.prices == m.state.prices and copy.state_root() == m.state.state_root()


def test_demand_above_target_raises_the_price_and_nodes_bill_at_it() -> None:
    m = offered_market(nodes=1)  # one node, 2 A100s
    for _ in range(12):  # idle: the class price falls below the node's own ask
        m.ok()
    assert m.state.prices["a100"] < PRICE
    job = m.submit(redundancy=1, gpus=2, gpu_model="A100")
    m.ok()  # placed: both GPUs held, utilisation 100%
    supply, demand = supply_and_demand(m.state)
    assert supply["a100"] == 2 and demand["a100"] == 2
    low = m.state.prices["a100"]
    m.ok()
    m.ok()
    assert m.state.prices["a100"] > low  # full use: up a step each block
    assert m.job(job).replicas[0].price_per_gpu_hour == PRICE  # its own ask was higher
    offer = m.state.offers[NODES[0].public_key]
    assert effective_price(m.state, offer) == max(PRICE, m.state.prices["a100"])


def test_a_surge_in_the_simulator_raises_prices_and_idle_time_brings_them_down() -> None:
    scenario = MarketScenario(seed=3, nodes=20, jobs=400, jobs_per_block=1, surge=(20, 40, 25))
    sim = MarketSim(scenario)
    result = sim.run()
    assert result.problems == []
    series = sim.price_series
    for name in series[-1]:
        before = series[18][name]
        peak = max(s[name] for s in series[20:45])
        end = series[-1][name]
        assert peak > before, (name, before, peak)
        assert end < peak, (name, peak, end)
    # every user job settled (the protocol's own challenge jobs are not counted)
    assert all(sim.state.jobs[j].status == JobStatus.SETTLED for j in sim.submitted)
