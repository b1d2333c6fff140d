"""The genesis file: the chain's id, initial allocations, initial operators and parameters.

`load_genesis_toml` takes the file's text (the node reads the file; this module stays pure)
and returns a frozen, validated `Genesis`, or raises `GenesisError` naming the exact field,
as node/config.py does for the node's config: `params.min_fee: expected a non-negative
integer, got -1`, and a mistyped key is refused with the nearest known one. Every node that
loads the same text computes the same `digest()` and the same initial state root.

Initial operators' self-stakes are minted at genesis on top of the allocations: genesis supply
is the sum of both.
"""

from __future__ import annotations

import difflib
import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consensus.committee import COMMITTEE_SIZE_MAX
from consensus.ledger.errors import GenesisError
from consensus.ledger.params import BPS, TX_BYTES_MIN, EmissionParams, LedgerParams, MarketParams
from consensus.ledger.state import PROTOCOL_ACCOUNT, LedgerState, Operator
from consensus.market.pricing import STEP_BPS_MAX, PricingParams
from p2p import codec
from p2p.errors import InvalidRecord
from p2p.wire import CHAIN_ID_BYTES_MAX, U64_MAX

ACCOUNT_HEX_CHARS = 64
OPERATORS_MAX = 10_000
ALLOCATIONS_MAX = 1_000_000

PARAM_RANGES: dict[str, tuple[int, int]] = {
    "epoch_blocks": (1, 1_000_000_000),
    "unbonding_epochs": (0, 10_000),
    "unbonding_entries_max": (1, 1_000),
    "min_stake": (1, U64_MAX),
    "min_delegation": (1, U64_MAX),
    "min_fee": (0, U64_MAX),
    "commission_step_max_bps": (0, BPS),
    "jail_epochs": (0, 1_000_000),
    "committee_size": (1, COMMITTEE_SIZE_MAX),
    "txs_per_account_per_block_max": (1, 10_000),
    "tx_bytes_max": (TX_BYTES_MIN, 1024 * 1024),
}
EMISSION_RANGES: dict[str, tuple[int, int]] = {
    "initial_per_epoch": (0, U64_MAX),
    "halving_epochs": (1, 1_000_000_000),
    "max_supply": (0, U64_MAX),
}
MARKET_RANGES: dict[str, tuple[int, int]] = {
    "commit_window_blocks": (1, 1_000_000),
    "reveal_window_blocks": (1, 1_000_000),
    "job_fee_bps": (0, BPS),
    "no_show_slash_bps": (0, BPS),
    "wrong_result_slash_bps": (0, BPS),
    "tie_breakers_max": (0, 3),
    "heartbeat_blocks": (1, 1_000_000),
    "down_after_blocks": (1, 1_000_000),
    "work_reward_bps": (0, BPS),
    "spot_check_permille": (0, 1000),
    "strikes_to_jail": (1, 1_000),
    "deadline_blocks_max": (1, U64_MAX),
    "watch_epochs": (0, 1_000),
    "challenge_every_blocks": (0, 1_000_000),
    "flags_per_epoch_max": (0, 1_000),
}
PRICING_RANGES: dict[str, tuple[int, int]] = {
    "target_utilisation_permille": (1, 999),
    "max_step_bps": (1, STEP_BPS_MAX),
    "floor_per_gpu_hour": (1, U64_MAX),
    "ceiling_per_gpu_hour": (1, U64_MAX),
}
OPERATOR_KEYS = ("account", "self_stake", "commission_bps")
TOP_KEYS = ("chain_id", "params", "allocations", "operators")


@dataclass(frozen=True)
class GenesisOperator:
    account: bytes
    self_stake: int
    commission_bps: int


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    allocations: tuple[tuple[bytes, int], ...]
    """(account, amount), sorted by account."""
    operators: tuple[GenesisOperator, ...]
    """Sorted by account."""
    params: LedgerParams

    @property
    def supply(self) -> int:
        return sum(a for _, a in self.allocations) + sum(o.self_stake for o in self.operators)

    def digest(self) -> bytes:
        """SHA-256 of the genesis' canonical encoding: the chain's birth certificate."""
        body: list[codec.Value] = [
            self.chain_id.encode("ascii"),
            self.params.to_wire(),
            [[a, amount] for a, amount in self.allocations],
            [[o.account, o.self_stake, o.commission_bps] for o in self.operators],
        ]
        return hashlib.sha256(b"gpumesh/genesis/v1" + codec.pack(body)).digest()

    def initial_state(self) -> LedgerState:
        """Height 0, epoch 0: allocations credited, operators bonded, first seed from the
        genesis digest (which no single node chose)."""
        state = LedgerState(
            chain_id=self.chain_id.encode("ascii"),
            params=self.params,
            committee_seed=hashlib.sha256(b"gpumesh/genesis-seed/v1" + self.digest()).digest(),
            genesis_supply=self.supply,
        )
        for account, amount in self.allocations:
            state.credit(account, amount)
        for op in self.operators:
            state.operators[op.account] = Operator(
                pool=op.self_stake, shares=op.self_stake, commission_bps=op.commission_bps
            )
            state.delegations[(op.account, op.account)] = op.self_stake
        state.check_conservation()
        return state


class _Problem(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def load_genesis_toml(text: str) -> Genesis:
    """Parse and validate a genesis file's text; GenesisError names what is wrong."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GenesisError(None, f"not valid TOML: {exc}") from None
    try:
        return _parse(raw)
    except _Problem as problem:
        raise GenesisError(problem.field, problem.problem) from None


def _parse(raw: dict[str, Any]) -> Genesis:
    _check_keys(raw, "", TOP_KEYS)
    if "chain_id" not in raw:
        raise _Problem("chain_id", 'required (for example "gpumesh-local")')
    chain_id = _chain_id(raw["chain_id"], "chain_id")
    params = _params(raw.get("params", {}))
    allocations = _allocations(raw.get("allocations", {}))
    operators = _operators(raw.get("operators", []), params)
    genesis = Genesis(chain_id, allocations, operators, params)
    _check_supply(genesis)
    return genesis


def _params(raw: object) -> LedgerParams:
    table = _table(raw, "params")
    _check_keys(table, "params", (*PARAM_RANGES, "emission", "market", "pricing"))
    emission_values = _sub_params(table, "emission", EMISSION_RANGES)
    market_values = _sub_params(table, "market", MARKET_RANGES)
    pricing_values = _sub_params(table, "pricing", PRICING_RANGES)
    values = {
        key: _int(table[key], f"params.{key}", *PARAM_RANGES[key])
        for key in PARAM_RANGES
        if key in table
    }
    try:
        return LedgerParams(
            **values,
            emission=EmissionParams(**emission_values),
            market=MarketParams(**market_values),
            pricing=PricingParams(**pricing_values),
        )
    except InvalidRecord as exc:  # the ranges above should make this unreachable
        raise _Problem("params", str(exc)) from None


def _sub_params(
    table: dict[str, Any], name: str, ranges: dict[str, tuple[int, int]]
) -> dict[str, int]:
    """The integers of the `params.<name>` table, each checked against its range."""
    raw = _table(table.get(name, {}), f"params.{name}")
    _check_keys(raw, f"params.{name}", tuple(ranges))
    return {
        key: _int(raw[key], f"params.{name}.{key}", *ranges[key]) for key in ranges if key in raw
    }


def _allocations(raw: object) -> tuple[tuple[bytes, int], ...]:
    table = _table(raw, "allocations")
    if len(table) > ALLOCATIONS_MAX:
        raise _Problem("allocations", f"{len(table)} entries exceeds {ALLOCATIONS_MAX}")
    found: dict[bytes, int] = {}
    for key, value in table.items():
        where = f"allocations.{key}"
        account = _account(key, where)
        if account in found:
            raise _Problem(where, "the same account appears twice (hex case differs)")
        found[account] = _int(value, where, 1, U64_MAX)
    return tuple(sorted(found.items()))


def _operators(raw: object, params: LedgerParams) -> tuple[GenesisOperator, ...]:
    if not isinstance(raw, list):
        raise _Problem("operators", f"expected an array of tables ([[operators]]), got {_got(raw)}")
    if not 1 <= len(raw) <= OPERATORS_MAX:
        raise _Problem("operators", f"1..{OPERATORS_MAX} needed to form the first committee")
    found: dict[bytes, GenesisOperator] = {}
    for i, item in enumerate(raw):
        where = f"operators[{i}]"
        table = _table(item, where)
        _check_keys(table, where, OPERATOR_KEYS)
        for key in OPERATOR_KEYS:
            if key not in table:
                raise _Problem(f"{where}.{key}", "required")
        account = _account(table["account"], f"{where}.account")
        if account in found:
            raise _Problem(f"{where}.account", "the same operator appears twice")
        stake = _int(table["self_stake"], f"{where}.self_stake", params.min_stake, U64_MAX)
        commission = _int(table["commission_bps"], f"{where}.commission_bps", 0, BPS)
        found[account] = GenesisOperator(account, stake, commission)
    return tuple(found[a] for a in sorted(found))


def _check_supply(genesis: Genesis) -> None:
    """Every amount the chain can ever hold must fit the wire's 64-bit integers."""
    supply, emission = genesis.supply, genesis.params.emission
    if supply > U64_MAX:
        raise _Problem("allocations", f"genesis supply {supply} exceeds {U64_MAX}")
    if emission.max_supply and emission.max_supply < supply:
        raise _Problem("params.emission.max_supply", f"below the genesis supply {supply}")
    if not emission.max_supply and supply + emission.emission_bound() > U64_MAX:
        raise _Problem(
            "params.emission.initial_per_epoch",
            "the schedule could mint past 2^64-1 base units: lower it or set max_supply",
        )


def _check_keys(table: dict[str, Any], name: str, known: Sequence[str]) -> None:
    for key in table:
        if key not in known:
            where = f"{name}.{key}" if name else key
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
            raise _Problem(where, f"unknown key{hint}")


def _table(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Problem(where, f"expected a table, got {_got(raw)}")
    return raw


def _got(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    kinds = {str: "string", float: "float", list: "array", dict: "table", int: "integer"}
    shown = "" if isinstance(value, dict | list) else f" {value!r}"
    return f"{kinds.get(type(value), type(value).__name__)}{shown[:80]}"


def _int(value: object, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
        raise _Problem(where, f"expected {kind}, got {_got(value)}")
    if value > hi:
        raise _Problem(where, f"must be at most {hi}, got {value}")
    return value


def _chain_id(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Problem(where, f"expected a string, got {_got(value)}")
    if not 1 <= len(value) <= CHAIN_ID_BYTES_MAX or not all(" " <= c <= "~" for c in value):
        raise _Problem(where, f"expected 1..{CHAIN_ID_BYTES_MAX} printable ASCII characters")
    return value


def _account(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise _Problem(where, f"expected a hex public key, got {_got(value)}")
    try:
        account = bytes.fromhex(value)
    except ValueError:
        account = b""
    if len(value) != ACCOUNT_HEX_CHARS or len(account) != ACCOUNT_HEX_CHARS // 2:
        raise _Problem(where, f"expected {ACCOUNT_HEX_CHARS} hex digits (an ed25519 public key)")
    if account == PROTOCOL_ACCOUNT:
        raise _Problem(where, "the protocol account cannot be allocated to")
    return account
