"""The genesis file: the example loads, the same text gives the same state root, and every
mistake is refused with the exact field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.ledger import PROTOCOL_ACCOUNT, GenesisError, LedgerParams, load_genesis_toml
from p2p.identity import Identity

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "genesis.toml"
A = Identity.derive("test-genesis", 0).public_key.hex()
B = Identity.derive("test-genesis", 1).public_key.hex()

MINIMAL = f"""
chain_id = "gpumesh-test"
[allocations]
{A} = 5000
[[operators]]
account = "{B}"
self_stake = 2000
commission_bps = 250
"""


def test_the_example_loads_and_starts_a_chain() -> None:
    genesis = load_genesis_toml(EXAMPLE.read_text(encoding="utf-8"))
    assert genesis.chain_id == "gpumesh-local"
    assert len(genesis.operators) == 4 and len(genesis.allocations) == 4
    state = genesis.initial_state()
    assert state.params.committee_size == 4
    assert state.expected_supply == genesis.supply == 4 * 1_000_000_000_000 + 4 * 10_000_000_000
    assert state.next_committee().size == 4
    state.check_conservation()


def test_minimal_genesis_takes_default_params() -> None:
    genesis = load_genesis_toml(MINIMAL)
    assert genesis.params == LedgerParams(min_stake=1_000)
    state = genesis.initial_state()
    assert state.balance(bytes.fromhex(A)) == 5000
    assert state.self_stake(bytes.fromhex(B)) == 2000
    assert state.operators[bytes.fromhex(B)].commission_bps == 250
    assert state.genesis_supply == 7000 and state.height == 0 and state.epoch == 0


def test_the_same_text_gives_the_same_root_and_any_change_another() -> None:
    a = load_genesis_toml(MINIMAL)
    assert a.initial_state().state_root() == load_genesis_toml(MINIMAL).initial_state().state_root()
    changed = [
        MINIMAL.replace("5000", "5001"),
        MINIMAL.replace("gpumesh-test", "gpumesh-tesT"),
        MINIMAL.replace("250", "251"),
        MINIMAL + "[params]\nmin_fee = 3\n",
    ]
    roots = {load_genesis_toml(t).initial_state().state_root() for t in changed}
    digests = {load_genesis_toml(t).digest() for t in changed}
    assert len(roots) == len(digests) == 4
    assert a.initial_state().state_root() not in roots and a.digest() not in digests


def test_params_and_emission_are_read() -> None:
    text = MINIMAL + (
        "[params]\nepoch_blocks = 7\ncommittee_size = 100\n"
        "[params.emission]\ninitial_per_epoch = 9\nhalving_epochs = 3\nmax_supply = 10000\n"
    )
    params = load_genesis_toml(text).params
    assert (params.epoch_blocks, params.committee_size) == (7, 100)
    assert (
        params.emission.initial_per_epoch,
        params.emission.halving_epochs,
        params.emission.max_supply,
    ) == (9, 3, 10_000)


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("chain_id = ", None, "not valid TOML"),
        (MINIMAL.replace('chain_id = "gpumesh-test"', ""), "chain_id", "required"),
        (MINIMAL.replace('"gpumesh-test"', "7"), "chain_id", "expected a string"),
        (MINIMAL.replace('"gpumesh-test"', '"caf\u00e9"'), "chain_id", "printable ASCII"),
        (MINIMAL + "[param]\n", "param", "did you mean 'params'"),
        (MINIMAL + "[params]\nmin_fees = 1\n", "params.min_fees", "did you mean 'min_fee'"),
        (MINIMAL + "[params]\nmin_fee = -1\n", "params.min_fee", "non-negative integer"),
        (MINIMAL + "[params]\nmin_fee = 1.5\n", "params.min_fee", "float"),
        (MINIMAL + "[params]\nepoch_blocks = true\n", "params.epoch_blocks", "boolean"),
        (MINIMAL + "[params]\ncommittee_size = 1001\n", "params.committee_size", "at most"),
        (MINIMAL + "[params]\ntx_bytes_max = 10\n", "params.tx_bytes_max", ">= 256"),
        (MINIMAL + "[params]\nemission = 3\n", "params.emission", "expected a table"),
        (
            MINIMAL + "[params.emission]\nhalving_epochs = 0\n",
            "params.emission.halving_epochs",
            "positive",
        ),
        (
            MINIMAL + "[params.emission]\nmax_supply = 6999\n",
            "params.emission.max_supply",
            "below the genesis supply",
        ),
        (
            MINIMAL + "[params.emission]\ninitial_per_epoch = 18446744073709551615\n",
            "params.emission.initial_per_epoch",
            "2^64-1",
        ),
        (
            MINIMAL.replace(f"{A} = 5000", f"{A[:-2]} = 5000"),
            f"allocations.{A[:-2]}",
            "64 hex digits",
        ),
        (MINIMAL.replace(f"{A} = 5000", f"{A} = 0"), f"allocations.{A}", "positive"),
        (
            MINIMAL.replace(f"{A} = 5000", f"{A} = 1\n{A.upper()} = 2"),
            f"allocations.{A.upper()}",
            "twice",
        ),
        (
            MINIMAL.replace(f"{A} = 5000", f"{PROTOCOL_ACCOUNT.hex()} = 1"),
            f"allocations.{PROTOCOL_ACCOUNT.hex()}",
            "protocol account",
        ),
        (MINIMAL.replace(f"{A} = 5000", f"{A} = 18446744073709551615"), "allocations", "exceeds"),
        (
            MINIMAL.replace("self_stake = 2000", "self_stake = 999"),
            "operators[0].self_stake",
            ">= 1000",
        ),
        (
            MINIMAL.replace("commission_bps = 250", "commission_bps = 10001"),
            "operators[0].commission_bps",
            "at most 10000",
        ),
        (
            MINIMAL.replace("commission_bps = 250", "commision_bps = 250"),
            "operators[0].commision_bps",
            "did you mean 'commission_bps'",
        ),
        (MINIMAL.replace("commission_bps = 250", ""), "operators[0].commission_bps", "required"),
        (
            MINIMAL + f'[[operators]]\naccount = "{B}"\nself_stake = 2000\ncommission_bps = 0\n',
            "operators[1].account",
            "twice",
        ),
        (MINIMAL.split("[[operators]]")[0], "operators", "first committee"),
        ('chain_id = "x"\noperators = 3\n', "operators", "array of tables"),
    ],
)
def test_mistakes_name_the_field(text: str, field: str | None, problem: str) -> None:
    with pytest.raises(GenesisError) as info:
        load_genesis_toml(text)
    assert info.value.field == field, info.value
    assert problem in info.value.problem, info.value
    assert str(info.value).startswith("genesis: ")
