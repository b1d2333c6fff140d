"""The ledger's invariants under random use: a hypothesis state machine in which six accounts
transfer, stake, unbond, delegate and undelegate (valid and invalid alike), the market locks,
releases and refunds escrow, evidence slashes operators, and epochs end. After every step:

- supply is conserved exactly and no amount is negative (`check_conservation`);
- every account's nonce only ever grows, by exactly one per applied transaction;
- a refused transaction or hook call leaves the state root unchanged;
- no pool's holders are together worth more than the pool, nor any holder more than its share;
- minted equals the sum of the epochs' emissions;
and at the end, replaying the same sequence from genesis gives the same root after every step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from consensus.ledger import (
    BlockContext,
    Delegate,
    EmissionParams,
    Genesis,
    GenesisOperator,
    InvalidTransaction,
    LedgerParams,
    LedgerState,
    Stake,
    Transfer,
    TxCode,
    Unbond,
    Undelegate,
    apply_block,
    apply_tx,
    escrow_lock,
    escrow_refund,
    escrow_release,
    slash,
)
from p2p.identity import Identity
from p2p.wire import Record, Signed, sign

CHAIN = "gpumesh-sm"
ACCOUNTS = [Identity.derive("ledger-machine", i) for i in range(6)]
KEYS = [a.public_key for a in ACCOUNTS]
JOBS = [hashlib.sha256(b"job/%d" % i).digest() for i in range(3)]
EVIDENCE = [hashlib.sha256(b"evidence/%d" % i).digest() for i in range(5)]
PARAMS = LedgerParams(
    epoch_blocks=3,
    unbonding_epochs=1,
    unbonding_entries_max=3,
    min_stake=100,
    min_delegation=1,
    min_fee=1,
    commission_step_max_bps=500,
    jail_epochs=1,
    committee_size=3,
    txs_per_account_per_block_max=3,
    tx_bytes_max=512,
    emission=EmissionParams(initial_per_epoch=1_000, halving_epochs=3),
)
GENESIS = Genesis(
    CHAIN,
    tuple(sorted((k, 5_000) for k in KEYS)),
    tuple(
        sorted(
            (GenesisOperator(KEYS[0], 1_000, 1_000), GenesisOperator(KEYS[1], 500, 0)),
            key=lambda o: o.account,
        )
    ),
    PARAMS,
)
KINDS = ("transfer", "stake", "unbond", "delegate", "undelegate")
ALL = -1
"""An amount meaning 'everything available' (balance less fee, or the holding's value)."""

Op = Callable[[LedgerState], Any]


def tx_specs() -> st.SearchStrategy[tuple[int, str, int, int, int, int, int]]:
    return st.tuples(
        st.integers(0, 5),  # sender
        st.sampled_from(KINDS),
        st.sampled_from([0, 0, 1, 1, 2, 3, 4, 5]),  # target: operators 0 and 1 at genesis
        st.one_of(st.integers(0, 60), st.integers(0, 6_000), st.just(ALL)),
        st.sampled_from([1, 1, 1, 2, 0]),  # fee
        st.sampled_from([0] * 8 + [-1, 1]),  # nonce offset
        st.sampled_from([0, 100, 600, 1_000, 10_000]),  # commission
    )


def build_tx(
    state: LedgerState, spec: tuple[int, str, int, int, int, int, int], nonces: dict[int, int]
) -> Signed[Any]:
    """A signed transaction from a spec; `nonces` carries the next nonce within a block."""
    sender, kind, target, amount, fee, offset, commission = spec
    if kind == "undelegate" and target % 2 == 0:
        sender, target = _aim_undelegate(state, sender, target)
    key, other = KEYS[sender], KEYS[target]
    nonce = max(0, nonces.get(sender, state.nonce(key)) + offset)
    nonces[sender] = nonce + 1
    spendable = max(0, state.balance(key) - fee)
    record: Record
    if kind == "transfer":
        record = Transfer(
            nonce=nonce, fee=fee, to=other, amount=spendable if amount == ALL else amount
        )
    elif kind == "stake":
        record = Stake(
            nonce=nonce,
            fee=fee,
            amount=spendable if amount == ALL else amount,
            commission_bps=commission,
        )
    elif kind == "unbond":
        record = Unbond(
            nonce=nonce, fee=fee, amount=state.self_stake(key) if amount == ALL else amount
        )
    elif kind == "delegate":
        record = Delegate(
            nonce=nonce, fee=fee, operator=other, amount=spendable if amount == ALL else amount
        )
    else:
        value = state.stake_value(key, other)
        record = Undelegate(
            nonce=nonce, fee=fee, operator=other, amount=value if amount == ALL else amount
        )
    return sign(record, ACCOUNTS[sender], CHAIN.encode())


def _aim_undelegate(state: LedgerState, sender: int, target: int) -> tuple[int, int]:
    """Mostly undelegate from a pool someone really holds shares in (a delegation is rare
    enough that random aims would almost always miss)."""
    held = [(KEYS.index(h), KEYS.index(o)) for h, o in sorted(state.delegations) if h != o]
    return held[(sender + target) % len(held)] if held else (sender, target)


def outcome_of(op: Op, state: LedgerState) -> Any:
    """What an operation did, comparable across runs: its result, or the refusal's code."""
    try:
        return op(state)
    except InvalidTransaction as exc:
        return exc.code


class LedgerMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.state = GENESIS.initial_state()
        self.log: list[tuple[Op, Any, bytes]] = []
        self.nonces_seen = {k: 0 for k in KEYS}
        self.emitted = 0

    def _hook(self, name: str, op: Op) -> None:
        result = self._run(op)
        event(f"{name}: {result.name if _refused(result) else 'applied'}")

    def _run(self, op: Op) -> Any:
        """Run one operation; a refusal must leave the root as it was."""
        before = self.state.state_root()
        result = outcome_of(op, self.state)
        after = self.state.state_root()
        if _refused(result):
            assert after == before, f"refused with {result} yet the state changed"
        self.log.append((op, result, after))
        return result

    # -----------------------------------------------------------------------------------------
    # Rules

    @rule(spec=tx_specs())
    def submit(self, spec: tuple[int, str, int, int, int, int, int]) -> None:
        """One transaction through apply_tx, as a block applier would."""
        tx = build_tx(self.state, spec, {})
        nonce = self.state.nonce(tx.signer)
        result = self._run(lambda s: apply_tx(s, tx, BlockContext(height=s.height + 1)))
        event(f"{type(tx.record).__name__}: {result.name if _refused(result) else 'applied'}")
        assert self.state.nonce(tx.signer) == nonce + (0 if _refused(result) else 1)

    @rule(
        specs=st.lists(tx_specs(), max_size=5),
        uptime=st.lists(st.integers(0, 1000), min_size=6, max_size=6),
    )
    def commit_block(self, specs: list[Any], uptime: list[int]) -> None:
        nonces: dict[int, int] = {}
        txs = [build_tx(self.state, spec, nonces).encode() for spec in specs]
        ctx_uptime = {k: u for k, u in zip(KEYS, uptime, strict=True) if u != 1000}
        self._block(txs, ctx_uptime)

    def _block(self, txs: list[bytes], uptime: dict[bytes, int]) -> None:
        parent = hashlib.sha256(self.state.state_root()).digest()

        def op(s: LedgerState) -> Any:
            return apply_block(s, txs, BlockContext(s.height + 1, parent, uptime))

        outcome = self._run(op)
        for rejection in outcome.rejected:
            event(f"in a block: {rejection.code.name}")
        for receipt in outcome.receipts:
            event(f"in a block: {receipt.kind} applied")
        assert len(outcome.receipts) + len(outcome.rejected) == len(txs)
        assert outcome.state_root == self.state.state_root()
        if outcome.epoch is not None:
            self.emitted += outcome.epoch.rewards.minted

    @rule()
    def end_epoch(self) -> None:
        epoch = self.state.epoch
        while self.state.epoch == epoch:
            self._block([], {})

    @rule(
        payer=st.integers(0, 5),
        job=st.integers(0, 2),
        amount=st.one_of(st.integers(0, 100), st.integers(0, 10_000)),
    )
    def lock(self, payer: int, job: int, amount: int) -> None:
        self._hook("lock", lambda s: escrow_lock(s, JOBS[job], KEYS[payer], amount))

    @rule(
        job=st.integers(0, 2),
        fee=st.integers(0, 50),
        payouts=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 400)), max_size=3),
    )
    def release(self, job: int, fee: int, payouts: list[tuple[int, int]]) -> None:
        pairs = [(KEYS[i], amount) for i, amount in payouts]
        self._hook("release", lambda s: escrow_release(s, JOBS[job], pairs, fee))

    @rule(job=st.integers(0, 2))
    def refund(self, job: int) -> None:
        self._hook("refund", lambda s: escrow_refund(s, JOBS[job]))

    @rule(
        operator=st.integers(0, 5),
        bps=st.sampled_from([0, 1, 500, 3_333, 10_000]),
        evidence=st.integers(0, 4),
        jail=st.booleans(),
    )
    def punish(self, operator: int, bps: int, evidence: int, jail: bool) -> None:
        self._hook(
            "slash", lambda s: slash(s, KEYS[operator], bps, "t", EVIDENCE[evidence], jail=jail)
        )

    # -----------------------------------------------------------------------------------------
    # Invariants

    @invariant()
    def supply_is_conserved(self) -> None:
        self.state.check_conservation()
        assert self.state.minted == self.emitted

    @invariant()
    def nothing_is_negative(self) -> None:
        s = self.state
        assert all(a.balance >= 0 and a.nonce >= 0 for a in s.accounts.values())
        assert all(o.pool >= 0 and o.shares >= 0 for o in s.operators.values())
        assert all(e.amount >= 0 for e in s.unbonding)
        assert all(e.amount > 0 for e in s.escrows.values())
        assert all(v > 0 for v in s.delegations.values())

    @invariant()
    def nonces_only_grow(self) -> None:
        for key in KEYS:
            assert self.state.nonce(key) >= self.nonces_seen[key]
            self.nonces_seen[key] = self.state.nonce(key)

    @invariant()
    def holders_never_exceed_the_pool(self) -> None:
        for key, op in self.state.operators.items():
            values = 0
            for holder, shares in self.state.holders(key):
                value = self.state.stake_value(holder, key)
                assert value * op.shares <= shares * op.pool
                values += value
            assert values <= op.pool

    def teardown(self) -> None:
        """The same sequence from genesis: the same outcome and root after every step."""
        if not hasattr(self, "log"):
            return
        state = GENESIS.initial_state()
        for op, result, root in self.log:
            again = outcome_of(op, state)
            assert _refused(again) == _refused(result)
            assert state.state_root() == root


def _refused(result: Any) -> bool:
    return isinstance(result, TxCode)


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
