"""Checkers for consensus runs (sim_harness.consensus_sim): the properties BFT promises.

- agreement: no two honest nodes ever commit different blocks at one height (safety);
- equal_state_roots: honest nodes that committed a height hold the same state root there;
- conservation: every honest ledger balances (genesis + minted - burned = everything held),
  checked at every sample, besides the ledger's own assertion after each block;
- chain_liveness: after the heal, the chain commits again and every honest node catches up.
"""

from __future__ import annotations

from typing import Any

from consensus.ledger.errors import ConservationError
from sim_harness.checkers import Checker, Verdict, register_checker

LIVENESS_BLOCKS_MIN = 2
"""Blocks the chain must commit after the heal, beyond the highest height at the heal."""


@register_checker
class Agreement(Checker):
    name = "agreement"

    def verdict(self, sim: Any) -> Verdict:
        forks = getattr(sim, "forks", None)
        if forks is None:
            return Verdict(True, "no consensus in this run")
        if forks:
            return Verdict(False, f"{len(forks)} forks; first: {forks[0]}")
        return Verdict(True, f"{len(sim.committed)} heights, one block each")


@register_checker
class EqualStateRoots(Checker):
    name = "equal_state_roots"

    def verdict(self, sim: Any) -> Verdict:
        conflicts = getattr(sim, "root_conflicts", None)
        if conflicts is None:
            return Verdict(True, "no consensus in this run")
        if conflicts:
            return Verdict(False, f"{len(conflicts)} state root conflicts; first: {conflicts[0]}")
        return Verdict(True, "every honest node computed the same root at every height")


@register_checker
class Conservation(Checker):
    name = "conservation"

    def __init__(self) -> None:
        self.breaches: list[str] = []
        self.checks = 0

    def on_sample(self, sim: Any) -> None:
        if not hasattr(sim, "engine"):
            return
        for i in sim.honest:
            eng = sim.engine(i)
            if eng is None:
                continue
            self.checks += 1
            try:
                eng.chain.state.check_conservation()
            except ConservationError as exc:
                if len(self.breaches) < 20:
                    self.breaches.append(f"t={sim.now_ms} {sim.names[i]}: {exc}")

    def verdict(self, sim: Any) -> Verdict:
        raised = [c for c in getattr(sim, "crashes", ()) if "ConservationError" in c]
        bad = self.breaches + raised
        if bad:
            return Verdict(False, f"{len(bad)} breaches; first: {bad[0]}")
        return Verdict(True, f"{self.checks} ledger checks balanced")


@register_checker
class ChainLiveness(Checker):
    name = "chain_liveness"

    def verdict(self, sim: Any) -> Verdict:
        if not hasattr(sim, "engine"):
            return Verdict(True, "no consensus in this run")
        at_heal = max(sim.heights_at_phase_end.values(), default=0)
        need = at_heal + LIVENESS_BLOCKS_MIN
        heights = {}
        for i in sim.honest:
            eng = sim.engine(i)
            heights[sim.names[i]] = eng.chain.height if eng is not None and sim.is_live(i) else -1
        top = max(heights.values(), default=0)
        if top < need:
            return Verdict(False, f"the chain reached {top} after the heal, needed {need} "
                                  f"(it was at {at_heal} when the faults healed)")  # fmt: skip
        behind = {k: h for k, h in heights.items() if h < need}
        if behind:
            first = sorted(behind.items())[:5]
            return Verdict(False, f"{len(behind)} honest nodes did not catch up to {need}: "
                                  f"{first}")  # fmt: skip
        return Verdict(True, f"all {len(heights)} honest nodes at {min(heights.values())}.."
                             f"{top} (heal at {at_heal})")  # fmt: skip


@register_checker
class EquivocatorsSlashed(Checker):
    """Every member that ran an equivocating behaviour ends up slashed on every honest node
    (the evidence reached a member, became a transaction, and was committed)."""

    name = "equivocators_slashed"

    def verdict(self, sim: Any) -> Verdict:
        if not hasattr(sim, "engine"):
            return Verdict(True, "no consensus in this run")
        cheats = [i for i, b in sim.byzantine.items() if b in ("equivocate", "conflicting_votes")]
        missed = []
        for i in cheats:
            key = sim.public_key(i)
            for j in sim.honest:
                eng = sim.engine(j)
                if eng is None:
                    continue
                op = eng.chain.state.operators.get(key)
                if op is None or op.slashed_total == 0:
                    missed.append(f"{sim.names[j]} has not slashed {sim.names[i]}")
        if missed:
            return Verdict(False, f"{len(missed)} misses; first: {missed[0]}")
        return Verdict(True, f"{len(cheats)} equivocators slashed on every honest node")
