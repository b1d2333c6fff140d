"""The mempool: transactions admitted but not yet committed, and the batches blocks take.

Admission checks what can be checked before ordering (signature, chain, size, fee, a nonce
in the sender's window, no second transaction for one (sender, nonce), room left) and tells
the sender why not. Checks that depend on order (balances, stakes) are the ledger's, at
commit: a refused transaction is then skipped and reported, never a reason to stall.

Each admitted transaction's verified form is remembered (`decoder`), so a node checks each
signature once, not again when it validates a proposal and again when it applies the block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.state import LedgerState
from consensus.ledger.tx import LedgerTx, Tx, decode_tx

VERIFIED_CACHE_MAX = 100_000


class Mempool:
    def __init__(self, chain_id: bytes, *, capacity: int = 50_000, nonce_window: int = 256) -> None:
        self.chain_id, self.capacity, self.nonce_window = chain_id, capacity, nonce_window
        self._pending: dict[bytes, tuple[bytes, Tx]] = {}
        """tx hash -> (bytes, verified tx), in arrival order."""
        self._slots: dict[tuple[bytes, int], bytes] = {}
        """(sender, nonce) -> tx hash."""
        self._verified: dict[bytes, Tx] = {}
        """tx bytes -> verified tx (bounded, oldest dropped first)."""
        self.admitted = 0
        self.refused: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    # -- verification, shared with block validation and the ledger ---------------------------

    def decoder(self, state: LedgerState) -> _Decoder:
        return _Decoder(self, state)

    def verify(self, data: bytes, state: LedgerState) -> Tx:
        """`decode_tx`, remembered: the same bytes always give the same answer."""
        tx = self._verified.get(data)
        if tx is None:
            tx = decode_tx(data, chain_id=self.chain_id, tx_bytes_max=state.params.tx_bytes_max)
            if len(self._verified) >= VERIFIED_CACHE_MAX:
                del self._verified[next(iter(self._verified))]
            self._verified[data] = tx
        return tx

    # -- admission ---------------------------------------------------------------------------

    def admit(self, data: bytes, state: LedgerState) -> Tx:
        """Add a transaction, or raise InvalidTransaction saying why not."""
        try:
            return self._admit(data, state)
        except InvalidTransaction as exc:
            self.refused[exc.code.value] = self.refused.get(exc.code.value, 0) + 1
            raise

    def _admit(self, data: bytes, state: LedgerState) -> Tx:
        key = hashlib.sha256(data).digest()
        if key in self._pending:
            raise InvalidTransaction(TxCode.ALREADY_PENDING, "this transaction is pending")
        tx = self.verify(data, state)
        record: LedgerTx = tx.record
        sender, nonce = tx.signer, record.nonce
        expected = state.nonce(sender)
        if nonce < expected:
            raise InvalidTransaction(
                TxCode.BAD_NONCE, f"nonce {nonce} was used; the next is {expected}"
            )
        if nonce >= expected + self.nonce_window:
            raise InvalidTransaction(
                TxCode.BAD_NONCE,
                f"nonce {nonce} is too far ahead of {expected} (window {self.nonce_window})",
            )
        if record.fee < state.params.min_fee:
            raise InvalidTransaction(
                TxCode.FEE_TOO_LOW, f"fee {record.fee} < {state.params.min_fee}"
            )
        if (sender, nonce) in self._slots:
            raise InvalidTransaction(
                TxCode.ALREADY_PENDING, f"another transaction with nonce {nonce} is pending"
            )
        if len(self._pending) >= self.capacity:
            raise InvalidTransaction(TxCode.MEMPOOL_FULL, f"{self.capacity} pending")
        self._pending[key] = (data, tx)
        self._slots[(sender, nonce)] = key
        self.admitted += 1
        return tx

    # -- batching ----------------------------------------------------------------------------

    def batch(self, state: LedgerState, txs_max: int, bytes_max: int) -> tuple[bytes, ...]:
        """Transactions for a block: arrival order, each sender's nonces consecutive from its
        next one, at most `txs_per_account_per_block_max` per sender."""
        per_sender_max = state.params.txs_per_account_per_block_max
        nexts: dict[bytes, int] = {}
        taken: dict[bytes, int] = {}
        out: list[bytes] = []
        size = 0
        waiting = list(self._pending.values())
        while waiting and len(out) < txs_max:
            later: list[tuple[bytes, Tx]] = []
            for data, tx in waiting:
                sender, nonce = tx.signer, tx.record.nonce
                expected = nexts.get(sender)
                if expected is None:
                    expected = nexts[sender] = state.nonce(sender)
                if nonce != expected:
                    if nonce > expected:
                        later.append((data, tx))  # its predecessor may come up this pass
                    continue
                if taken.get(sender, 0) >= per_sender_max or size + len(data) + 8 > bytes_max:
                    continue
                out.append(data)
                size += len(data) + 8
                nexts[sender] = nonce + 1
                taken[sender] = taken.get(sender, 0) + 1
                if len(out) >= txs_max:
                    break
            if len(later) == len(waiting):
                break
            waiting = later
        return tuple(out)

    def remove_committed(self, txs: Iterable[bytes], state: LedgerState) -> None:
        """Drop what a block committed, and whatever its nonces made stale. A committed
        transaction's verified form goes too: it is applied, and keeping it would only make
        the collector walk it (100,000 of them, some five objects each, at the cap) until
        the cap pushed it out; bytes that come again are verified again (and refused)."""
        for data in txs:
            self._verified.pop(data, None)
            entry = self._pending.pop(hashlib.sha256(data).digest(), None)
            if entry is not None:
                self._slots.pop((entry[1].signer, entry[1].record.nonce), None)
        stale = [
            (key, tx)
            for key, (_, tx) in self._pending.items()
            if tx.record.nonce < state.nonce(tx.signer)
        ]
        for key, tx in stale:
            del self._pending[key]
            self._slots.pop((tx.signer, tx.record.nonce), None)

    def next_nonce(self, sender: bytes, state: LedgerState) -> int:
        """The nonce `sender`'s next transaction needs: after the committed ones and those
        pending in an unbroken run (a refused one leaves a gap that is reused)."""
        nonce = state.nonce(sender)
        while (sender, nonce) in self._slots:
            nonce += 1
        return nonce

    def holds(self, data: bytes) -> bool:
        """Whether `data` is still waiting here (neither committed nor dropped)."""
        return hashlib.sha256(data).digest() in self._pending

    def pending(self) -> list[bytes]:
        return [data for data, _ in self._pending.values()]


class _Decoder:
    """`decode_tx` for the ledger, via the mempool's memory of verified transactions."""

    def __init__(self, pool: Mempool, state: LedgerState) -> None:
        self._pool, self._state = pool, state

    def __call__(self, data: bytes) -> Tx:
        return self._pool.verify(data, self._state)
