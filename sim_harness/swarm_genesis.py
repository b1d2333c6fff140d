"""The chain of a local swarm: its genesis file, funded user keys, and provisioned stores.

Every swarm node is an initial operator with the same self-stake and balance, so the first
committee is drawn from all of them (`committee_size` = min(nodes, 4) unless asked), and a few
"user" accounts are funded for transactions, their keys written to `users/userN.key` (mode
0600) for `gpumesh tx ... --key`. Epochs are short (20 blocks) so a swarm run sees epochs
turn, rewards paid and committees redrawn within a minute.

Each node's store is provisioned with its brand-new key (`node.chain_restore.init_chain_store`):
a key born with its store has voted nowhere, so the nodes may vote from genesis at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import tomli_w

from consensus.ledger.genesis import load_genesis_toml
from node.chain_restore import init_chain_store
from p2p.identity import Identity
from p2p.keyfile import write_key_file
from sim_harness.swarm import GENESIS_FILE

USERS_DIR = "users"
USERS = 3
TOKEN = 1_000_000
"""Base units per token."""
NODE_BALANCE = 1_000_000 * TOKEN
USER_BALANCE = 1_000_000 * TOKEN
SELF_STAKE = 10_000 * TOKEN
COMMITTEE_SIZE_MAX = 4
EPOCH_BLOCKS = 20


def user_key_path(root: Path, i: int) -> Path:
    return Path(root) / USERS_DIR / f"user{i}.key"


def write_swarm_genesis(
    root: Path,
    nodes: Sequence[Identity],
    chain_id: str,
    *,
    users: int = USERS,
    committee_size: int | None = None,
    epoch_blocks: int = EPOCH_BLOCKS,
) -> Path:
    """Write `root/genesis.toml` and `root/users/user*.key`; returns the genesis path."""
    root = Path(root)
    user_ids = [Identity.generate() for _ in range(users)]
    for i, user in enumerate(user_ids):
        write_key_file(user_key_path(root, i), user, overwrite=True)
    size = committee_size or min(len(nodes), COMMITTEE_SIZE_MAX)
    doc = {
        "chain_id": chain_id,
        "params": {
            "epoch_blocks": epoch_blocks,
            "committee_size": size,
            "min_stake": 1_000 * TOKEN,
            "min_delegation": TOKEN,
            "min_fee": 1_000,
            "unbonding_epochs": 2,
        },
        "allocations": {
            **{n.public_key.hex(): NODE_BALANCE for n in nodes},
            **{u.public_key.hex(): USER_BALANCE for u in user_ids},
        },
        "operators": [
            {"account": n.public_key.hex(), "self_stake": SELF_STAKE, "commission_bps": 500}
            for n in nodes
        ],
    }
    header = (
        "# The genesis of a local gpumesh swarm, written by `gpumesh swarm up`: every node is an\n"
        "# operator with equal self-stake; users/user*.key hold funded accounts for\n"
        "# `gpumesh tx`. Amounts in base units (1 token = 1_000_000).\n\n"
    )
    text = header + tomli_w.dumps(doc)
    load_genesis_toml(text)  # what we write must load: fail here, not in every node
    path = root / GENESIS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def provision_stores(genesis_path: Path, data_dirs: Sequence[Path]) -> None:
    """Create each new node's chain store, marked as born with its key (may vote at once)."""
    genesis = load_genesis_toml(Path(genesis_path).read_text(encoding="utf-8"))
    now_ms = time.time_ns() // 1_000_000
    for data_dir in data_dirs:
        init_chain_store(data_dir, genesis, now_ms)
