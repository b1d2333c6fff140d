"""The replicated ledger: a pure, deterministic state machine over committed blocks.

Modules: `tx` (signed transaction records), `state` (the state, its root and the supply
check), `apply` (transactions and blocks), `staking` (pools, unbonding, slashing), `escrow`
(job escrow hooks for the market), `rewards` (the emission schedule and its split),
`genesis` (the genesis file), `snapshot` (state from its canonical bytes), `errors`; the
market's part: `job_records`/`market_records` (records), `jobs` (submit, cancel), `offers`
(capacity on chain), `job_flow` (the per-block step: deadlines, timeouts, assignment),
`job_results` (commit, reveal, verdict, settlement).
"""

from consensus.ledger import job_results as _job_results  # noqa: F401 - kinds 19, 20
from consensus.ledger import jobs as _jobs  # noqa: F401 - kinds 16, 17, the jobs block step
from consensus.ledger import liveness as _liveness  # noqa: F401 - kind 21
from consensus.ledger import offers as _offers  # noqa: F401 - kind 18
from consensus.ledger.apply import (
    BlockContext,
    BlockOutcome,
    BlockTally,
    EpochOutcome,
    Receipt,
    Rejection,
    apply_block,
    apply_tx,
    check_tx,
    end_epoch,
    ends_epoch,
    register_tx_handler,
)
from consensus.ledger.errors import ConservationError, GenesisError, InvalidTransaction, TxCode
from consensus.ledger.escrow import EscrowSettlement, escrow_lock, escrow_refund, escrow_release
from consensus.ledger.evidence import EQUIVOCATION_SLASH_BPS, Equivocation, evidence_digest
from consensus.ledger.genesis import Genesis, GenesisOperator, load_genesis_toml
from consensus.ledger.params import BPS, PERMILLE, EmissionParams, LedgerParams
from consensus.ledger.rewards import EpochRewards, RewardShare, emission_for_epoch
from consensus.ledger.snapshot import decode_state
from consensus.ledger.staking import SlashEvent, slash
from consensus.ledger.state import PROTOCOL_ACCOUNT, LedgerState
from consensus.ledger.tx import (
    TX_TYPES,
    Delegate,
    LedgerTx,
    Stake,
    Transfer,
    Tx,
    Unbond,
    Undelegate,
    decode_tx,
    tx_id,
)

__all__ = [
    "BPS",
    "EQUIVOCATION_SLASH_BPS",
    "PERMILLE",
    "PROTOCOL_ACCOUNT",
    "TX_TYPES",
    "BlockContext",
    "BlockOutcome",
    "BlockTally",
    "ConservationError",
    "Delegate",
    "EmissionParams",
    "EpochOutcome",
    "EpochRewards",
    "Equivocation",
    "EscrowSettlement",
    "Genesis",
    "GenesisError",
    "GenesisOperator",
    "InvalidTransaction",
    "LedgerParams",
    "LedgerState",
    "LedgerTx",
    "Receipt",
    "Rejection",
    "RewardShare",
    "SlashEvent",
    "Stake",
    "Transfer",
    "Tx",
    "TxCode",
    "Unbond",
    "Undelegate",
    "apply_block",
    "apply_tx",
    "check_tx",
    "decode_state",
    "decode_tx",
    "emission_for_epoch",
    "end_epoch",
    "ends_epoch",
    "escrow_lock",
    "escrow_refund",
    "escrow_release",
    "evidence_digest",
    "load_genesis_toml",
    "register_tx_handler",
    "slash",
    "tx_id",
]
