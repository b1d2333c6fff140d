"""The chain CLI's side of a node's loopback status endpoint: find the node, read its chain
status and accounts, submit a transaction, follow the head. Plain urllib: no libp2p here."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HTTP_TIMEOUT_S = 10.0
_HOST_PORT = re.compile(r"\[?[A-Za-z0-9.:-]+\]?:\d{1,5}")


class ChainCliError(Exception):
    """A problem the user can fix (unreachable node, bad hex, unknown account): one line,
    exit code 2."""


def parse_account(text: str, what: str) -> bytes:
    """64 hex digits, a libp2p peer id (12D3KooW...), or a key file whose public key to use."""
    from p2p.identity import public_key_from_peer_id

    try:
        raw = bytes.fromhex(text)
        if len(raw) == 32:
            return raw
    except ValueError:
        pass
    if text.startswith("12D3Koo"):
        try:
            return public_key_from_peer_id(text)
        except ValueError:
            pass
    path = Path(text)
    if path.is_file():
        from p2p.keyfile import load_key_file

        return load_key_file(path).public_key
    raise ChainCliError(
        f"{what}: {text[:80]!r} is not an account: expected 64 hex digits, a peer id or a key file"
    )


def parse_amount(text: str) -> int:
    try:
        amount = int(text.replace("_", ""))
    except ValueError:
        amount = -1
    if amount < 0:
        raise ChainCliError(f"AMOUNT: {text[:40]!r} is not a non-negative integer of base units")
    return amount


class NodeClient:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    @classmethod
    def resolve(cls, node: str, swarm_dir: str) -> NodeClient:
        """A URL, HOST:PORT, or the name of a node in the swarm folder."""
        if node.startswith(("http://", "https://")):
            return cls(node.removesuffix("/status"))
        if _HOST_PORT.fullmatch(node):
            return cls(f"http://{node}")
        from sim_harness.swarm import LOOPBACK, Swarm, SwarmError

        try:
            swarm = Swarm.load(Path(swarm_dir))
            return cls(f"http://{LOOPBACK}:{swarm.node(node).status_port}")
        except SwarmError as exc:
            raise ChainCliError(
                f"--node {node!r} is neither a URL, HOST:PORT nor a node of the swarm in "
                f"{swarm_dir}: {exc}"
            ) from None

    def _call(self, path: str, body: bytes | None = None, timeout_s: float = HTTP_TIMEOUT_S) -> Any:
        """(status code, JSON document) of one request; 404 and 408 are answers, not errors."""
        request = urllib.request.Request(
            self.base + path, data=body, method="POST" if body is not None else "GET"
        )
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                doc = json.loads(text)
            except ValueError:
                doc = {"error": text.decode("utf-8", "replace").strip()}
            if exc.code in (404, 408):
                return exc.code, doc
            raise ChainCliError(
                f"node at {self.base} answered {exc.code} to {path}: {doc}"
            ) from None
        except (OSError, ValueError) as exc:
            raise ChainCliError(f"cannot reach the node at {self.base}: {exc}") from None

    def chain_status(self, wait_height: int = 0, timeout_s: float = 0) -> dict[str, Any]:
        query = (
            f"?wait_height={wait_height}&timeout_ms={int(timeout_s * 1000)}" if wait_height else ""
        )
        _, snap = self._call("/status" + query, timeout_s=timeout_s + HTTP_TIMEOUT_S)
        chain = snap.get("chain")
        if not isinstance(chain, dict):
            raise ChainCliError(f"the node at {self.base} runs no chain (no [chain] genesis)")
        if chain.get("state") != "running":
            raise ChainCliError(f"the node at {self.base} is still opening its chain; try again")
        return chain

    def account(self, key: bytes) -> dict[str, Any] | None:
        code, doc = self._call(f"/account/{key.hex()}")
        if code == 404:
            if "unknown account" not in str(doc.get("error", "")):
                raise ChainCliError(f"the node at {self.base} runs no chain (no [chain] genesis)")
            return None
        return doc  # type: ignore[no-any-return]

    def ledger(self) -> dict[str, Any]:
        code, doc = self._call("/ledger")
        if code == 404:
            raise ChainCliError(f"the node at {self.base} runs no chain (no [chain] genesis)")
        return doc  # type: ignore[no-any-return]

    def submit(self, tx: bytes) -> dict[str, Any]:
        code, doc = self._call("/tx", body=tx)
        if code == 404:
            raise ChainCliError(f"the node at {self.base} runs no chain (no [chain] genesis)")
        return doc  # type: ignore[no-any-return]

    def tx_pending(self, tx_id: bytes) -> bool:
        code, doc = self._call(f"/tx/{tx_id.hex()}")
        return code == 200 and bool(doc.get("pending"))

    def wait_committed(self, key: bytes, nonce: int, tx_id: bytes, timeout_s: float) -> Waited:
        """Follow the head (long-polling /status) until `key`'s nonce reaches `nonce`
        (committed), or the transaction left the node's mempool while the nonce stayed below
        (refused when its block was applied), or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        height = 0
        while True:
            view = self.account(key)
            seen = int(view["height"]) if view else height
            if view is not None and int(view["nonce"]) >= nonce:
                return Waited("committed", seen)
            if height and not self.tx_pending(tx_id):
                view = self.account(key)  # it may have committed since the first look
                if view is not None and int(view["nonce"]) >= nonce:
                    return Waited("committed", int(view["height"]))
                return Waited("refused", seen)
            left = deadline - time.monotonic()
            if left <= 0:
                return Waited("timeout", seen)
            height = max(height, seen) + 1
            self.chain_status(wait_height=height, timeout_s=min(left, 10.0))


@dataclass(frozen=True)
class Waited:
    outcome: str
    """committed | refused (left the mempool, nonce unchanged) | timeout"""
    height: int
