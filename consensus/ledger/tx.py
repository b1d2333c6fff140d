"""Ledger transactions: typed wire records, signed by the account that sends them.

The envelope's signer is the account (its 32-byte ed25519 public key), so no record carries a
`sender` field that could disagree with it; the envelope also scopes the signature to the
chain. Every transaction carries `nonce` (the sender's next nonce: replays and reorderings
are refused) and `fee` (at least the chain's `min_fee`, paid to the protocol account).

Record kinds 10..29 belong to the ledger; 1 is the capacity announcement.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.params import BPS
from p2p.errors import BadSignature, DecodeError
from p2p.wire import Blob, Record, Signed, UInt, decode_signed, register, wire_field

ACCOUNT_BYTES = 32


@dataclass(frozen=True)
class LedgerTx(Record):
    """Fields every transaction starts with. Subclasses add their own after these."""

    nonce: int = wire_field(UInt())
    fee: int = wire_field(UInt())


@register
@dataclass(frozen=True)
class Transfer(LedgerTx):
    """Move `amount` from the signer's balance to `to`."""

    KIND = 10
    VERSION = 1

    to: bytes = wire_field(Blob(ACCOUNT_BYTES, ACCOUNT_BYTES))
    amount: int = wire_field(UInt())


@register
@dataclass(frozen=True)
class Stake(LedgerTx):
    """Self-bond `amount` as an operator. The first Stake registers the operator with its
    commission; later ones may top up (amount may then be 0) and move the commission by at
    most `commission_step_max_bps`, once per epoch."""

    KIND = 11
    VERSION = 1

    amount: int = wire_field(UInt())
    commission_bps: int = wire_field(UInt(BPS))


@register
@dataclass(frozen=True)
class Unbond(LedgerTx):
    """Withdraw `amount` of the operator's own bonded value into the unbonding queue."""

    KIND = 12
    VERSION = 1

    amount: int = wire_field(UInt())


@register
@dataclass(frozen=True)
class Delegate(LedgerTx):
    """Bond `amount` of the signer's balance to `operator`'s pool, for shares of it."""

    KIND = 13
    VERSION = 1

    operator: bytes = wire_field(Blob(ACCOUNT_BYTES, ACCOUNT_BYTES))
    amount: int = wire_field(UInt())


@register
@dataclass(frozen=True)
class Undelegate(LedgerTx):
    """Withdraw `amount` (in tokens, not shares) of the signer's value in `operator`'s pool
    into the unbonding queue. Asking for one's whole current value closes the delegation."""

    KIND = 14
    VERSION = 1

    operator: bytes = wire_field(Blob(ACCOUNT_BYTES, ACCOUNT_BYTES))
    amount: int = wire_field(UInt())


TX_TYPES: tuple[type[LedgerTx], ...] = (Transfer, Stake, Unbond, Delegate, Undelegate)
Tx = Signed[Any]
"""A signed transaction as `decode_tx` returns it: `record` is one of the ledger records."""


def tx_id(tx: Tx) -> bytes:
    """SHA-256 of the envelope's canonical bytes: how receipts and rejections name a tx."""
    return hashlib.sha256(tx.encode()).digest()


def decode_tx(data: bytes, *, chain_id: bytes, tx_bytes_max: int) -> Tx:
    """Bytes from a peer to a verified transaction, or `InvalidTransaction` saying why not
    (TOO_LARGE before any parsing; BAD_SIGNATURE; MALFORMED for everything else)."""
    if len(data) > tx_bytes_max:
        raise InvalidTransaction(
            TxCode.TOO_LARGE, f"{len(data)} bytes exceeds the limit of {tx_bytes_max}"
        )
    try:
        signed = decode_signed(data, chain_id=chain_id, max_bytes=tx_bytes_max)
    except BadSignature as exc:
        raise InvalidTransaction(TxCode.BAD_SIGNATURE, str(exc)) from None
    except DecodeError as exc:
        raise InvalidTransaction(TxCode.MALFORMED, str(exc)) from None
    if not isinstance(signed.record, LedgerTx):
        kind = type(signed.record).__name__
        raise InvalidTransaction(TxCode.MALFORMED, f"{kind} is not a ledger transaction")
    return signed
