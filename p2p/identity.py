"""Ed25519 identities: one key is both a node's libp2p peer identity and its signing key.

Pure (no I/O): the simulator builds identities from seeds; `p2p.keyfile` reads and writes
them on disk. The secret never appears in repr() or logs.
"""

from __future__ import annotations

import hashlib

import nacl.signing

PeerId = str
"""A libp2p peer id string ("12D3KooW..."), derived from the node's ed25519 public key."""

_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# libp2p PublicKey protobuf header for an Ed25519 key (field 1 = KeyType 1, field 2 = 32 bytes),
# and the identity multihash header (code 0x00, length 36) that inlines it into the peer id.
_PROTOBUF_ED25519_HEADER = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH_HEADER = b"\x00\x24"


class Identity:
    """An ed25519 signing key together with the public forms others know it by."""

    __slots__ = ("_key", "peer_id", "public_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.peer_id: str = peer_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh key from the system's entropy (the only place gpumesh uses it)."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A key from a 32-byte seed: key files store this; simulations derive it."""
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def derive(cls, *labels: bytes | str | int) -> Identity:
        """A deterministic identity for simulations and tests, e.g. derive("sim", seed, i)."""
        material = b"\x00".join(str(x).encode() if not isinstance(x, bytes) else x for x in labels)
        return cls.from_seed(hashlib.sha256(b"gpumesh/identity/" + material).digest())

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed. Only key files and the libp2p adapter may read it."""
        return bytes(self._key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    @property
    def short(self) -> str:
        """A short, stable label for tables and logs (the tail of the peer id)."""
        return self.peer_id[-8:]

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.public_key == self.public_key

    def __hash__(self) -> int:
        return hash(self.public_key)


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id ("12D3KooW...") of an ed25519 public key.

    Computed here so pure code can name peers without importing libp2p; a test checks that it
    equals libp2p's own `ID.from_pubkey`.
    """
    if len(public_key) != 32:
        raise ValueError(f"ed25519 public key must be 32 bytes, got {len(public_key)}")
    return _b58encode(_IDENTITY_MULTIHASH_HEADER + _PROTOBUF_ED25519_HEADER + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of `peer_id_from_public_key`; raises ValueError for other peer id forms."""
    raw = _b58decode(peer_id)
    header = _IDENTITY_MULTIHASH_HEADER + _PROTOBUF_ED25519_HEADER
    if len(raw) != len(header) + 32 or not raw.startswith(header):
        raise ValueError(f"not an ed25519 libp2p peer id: {peer_id!r}")
    return raw[len(header) :]


def short_peer(peer_id: str) -> str:
    return peer_id[-8:]


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return (b"1" * pad + bytes(reversed(out))).decode()


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text.encode():
        idx = _B58_ALPHABET.find(ch)
        if idx < 0:
            raise ValueError(f"not base58: {text!r}")
        n = n * 58 + idx
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * pad + body
