"""Typed, versioned wire records and the signed envelope that carries them.

A record is a frozen dataclass whose fields declare their wire type (`wire_field(UInt())`).
Encoding is positional: a record is a msgpack array of its fields in declaration order, so
the format is fixed by the class and documented in docs/PROTOCOL.md. Decoding checks exact
types, lengths and ranges, and every failure is a `DecodeError` naming the field path.

A `Signed` envelope is `[format, kind, version, chain_id, signer, body, signature]`; the
signature covers `pack([DOMAIN_TAG, kind, version, chain_id, signer, body])`, so a signature
can never be replayed onto another kind, version or chain.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, overload

import nacl.exceptions
import nacl.signing

from p2p import codec
from p2p.errors import BadSignature, DecodeError, InvalidRecord

DOMAIN_TAG = b"gpumesh/signed/v1"
ENVELOPE_FORMAT = 1
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
CHAIN_ID_BYTES_MAX = 64
U64_MAX = 2**64 - 1
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))

# ---------------------------------------------------------------------------------------------
# Wire types


class WireType(ABC):
    """How one field travels: its Python form, its wire form, and the checks between them."""

    @abstractmethod
    def to_wire(self, value: Any) -> codec.Value: ...

    @abstractmethod
    def from_wire(self, raw: codec.Value, path: str) -> Any:
        """Convert a decoded value, raising DecodeError(path: reason) if it does not fit."""

    def validate(self, value: Any, path: str) -> None:
        """Check a locally built value; a failure is our bug (InvalidRecord)."""
        try:
            self.from_wire(self.to_wire(value), path)
        except (DecodeError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidRecord(f"{path}: {exc}") from None


@dataclass(frozen=True)
class UInt(WireType):
    """An unsigned integer no larger than `max` (token amounts, counts, milliseconds)."""

    max: int = U64_MAX

    def to_wire(self, value: Any) -> codec.Value:
        return int(value)

    def from_wire(self, raw: codec.Value, path: str) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise DecodeError(f"{path}: expected an integer, got {type(raw).__name__}")
        if not 0 <= raw <= self.max:
            raise DecodeError(f"{path}: {raw} is outside 0..{self.max}")
        return raw

    def validate(self, value: Any, path: str) -> None:
        """The round trip's checks, written out: every record a node builds passes here,
        once per field."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRecord(f"{path}: expected int, got {type(value).__name__}")
        if not 0 <= value <= self.max:
            raise InvalidRecord(f"{path}: {value} is outside 0..{self.max}")


@dataclass(frozen=True)
class Blob(WireType):
    """A byte string of at most `max_len` bytes, or exactly `exact_len` when given."""

    max_len: int
    exact_len: int | None = None

    def to_wire(self, value: Any) -> codec.Value:
        if not isinstance(value, bytes):
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        return value

    def from_wire(self, raw: codec.Value, path: str) -> bytes:
        if not isinstance(raw, bytes):
            raise DecodeError(f"{path}: expected bytes, got {type(raw).__name__}")
        if self.exact_len is not None and len(raw) != self.exact_len:
            raise DecodeError(f"{path}: expected {self.exact_len} bytes, got {len(raw)}")
        if len(raw) > self.max_len:
            raise DecodeError(f"{path}: {len(raw)} bytes exceeds {self.max_len}")
        return raw

    def validate(self, value: Any, path: str) -> None:
        """The round trip's checks on a value that passes them (every node id, key and hash a
        node puts in a record); anything else takes the round trip, for its error."""
        exact = self.exact_len
        if isinstance(value, bytes) and len(value) <= self.max_len and exact in (None, len(value)):
            return
        super().validate(value, path)


@dataclass(frozen=True)
class Text(WireType):
    """Printable ASCII (0x20..0x7E) carried as bytes.

    ASCII rather than Unicode "printable": the latter depends on the Unicode version of each
    implementation, and two honest nodes must never disagree on whether a record is valid.
    """

    max_bytes: int

    def to_wire(self, value: Any) -> codec.Value:
        if not isinstance(value, str):
            raise TypeError(f"expected str, got {type(value).__name__}")
        return value.encode("utf-8")

    def from_wire(self, raw: codec.Value, path: str) -> str:
        if not isinstance(raw, bytes):
            raise DecodeError(f"{path}: expected ASCII bytes, got {type(raw).__name__}")
        if len(raw) > self.max_bytes:
            raise DecodeError(f"{path}: {len(raw)} bytes exceeds {self.max_bytes}")
        if raw.translate(None, _PRINTABLE_ASCII):  # something other than 0x20..0x7E is left
            bad = next(b for b in raw if not 0x20 <= b <= 0x7E)
            raise DecodeError(f"{path}: byte 0x{bad:02x} is not printable ASCII")
        return raw.decode("ascii")

    def validate(self, value: Any, path: str) -> None:
        """The round trip's checks on a value that passes them: for ASCII, `isprintable` is
        exactly 0x20..0x7E and a character is a byte. Anything else takes the round trip,
        for its error."""
        ascii_ok = isinstance(value, str) and value.isascii() and value.isprintable()
        if ascii_ok and len(value) <= self.max_bytes:
            return
        super().validate(value, path)


@dataclass(frozen=True)
class Seq(WireType):
    """A tuple of at most `max_len` items of one type."""

    item: WireType
    max_len: int

    def to_wire(self, value: Any) -> codec.Value:
        return [self.item.to_wire(v) for v in value]

    def from_wire(self, raw: codec.Value, path: str) -> tuple[Any, ...]:
        if not isinstance(raw, list):
            raise DecodeError(f"{path}: expected an array, got {type(raw).__name__}")
        if len(raw) > self.max_len:
            raise DecodeError(f"{path}: {len(raw)} items exceeds {self.max_len}")
        return tuple(self.item.from_wire(v, f"{path}[{i}]") for i, v in enumerate(raw))

    def validate(self, value: Any, path: str) -> None:
        """Item by item with the item's own check (the same checks as the round trip, without
        building the items' wire forms and decoding them again)."""
        if not isinstance(value, tuple):
            raise InvalidRecord(f"{path}: expected tuple, got {type(value).__name__}")
        if len(value) > self.max_len:
            raise InvalidRecord(f"{path}: {len(value)} items exceeds {self.max_len}")
        for i, v in enumerate(value):
            self.item.validate(v, f"{path}[{i}]")


@dataclass(frozen=True)
class Nested(WireType):
    """A `Struct` embedded as an array of its fields."""

    struct: type[Struct]

    def to_wire(self, value: Any) -> codec.Value:
        if not isinstance(value, self.struct):
            raise TypeError(f"expected {self.struct.__name__}, got {type(value).__name__}")
        return value.to_wire()

    def from_wire(self, raw: codec.Value, path: str) -> Struct:
        return self.struct.from_wire(raw, path)

    def validate(self, value: Any, path: str) -> None:
        """A Struct instance checked itself when it was built (`__post_init__`) or decoded
        (`from_wire`), and it is frozen: its type is all that is left to check."""
        if not isinstance(value, self.struct):
            raise InvalidRecord(
                f"{path}: expected {self.struct.__name__}, got {type(value).__name__}"
            )


_NO_DEFAULT: Any = dataclasses.MISSING

_T = TypeVar("_T")


class computed_once(Generic[_T]):
    """`functools.cached_property` for frozen records, without the lock that Python 3.11's
    takes on every first read: a record's derived value (its GPU total, its expiry key) is
    first read while it is built or decoded, so every record paid the lock, once per
    announcement per node. Records are immutable, so two threads computing the same value
    at once is harmless."""

    def __init__(self, func: Callable[[Any], _T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> computed_once[_T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _T: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.func(instance)  # read from there next time
        return value


def wire_field(wire_type: WireType, default: Any = _NO_DEFAULT) -> Any:
    """Declare a dataclass field together with how it travels (and, for a field added to a
    record later, the default that older callers get)."""
    return dataclasses.field(default=default, metadata={"wire": wire_type})


# ---------------------------------------------------------------------------------------------
# Structs and records


@dataclass(frozen=True)
class Struct:
    """A frozen dataclass that encodes as the array of its fields, in declaration order."""

    def __post_init__(self) -> None:
        for name, wire_type in self.wire_schema():
            wire_type.validate(getattr(self, name), f"{type(self).__name__}.{name}")
        problem = self.invariant_violation()
        if problem is not None:
            raise InvalidRecord(f"{type(self).__name__}: {problem}")

    def invariant_violation(self) -> str | None:
        """Cross-field rules (e.g. free <= total); return a reason or None. Override."""
        return None

    @classmethod
    def wire_schema(cls) -> tuple[tuple[str, WireType], ...]:
        cached: tuple[tuple[str, WireType], ...] | None = cls.__dict__.get("_wire_schema_cache")
        if cached is None:
            cached = tuple((f.name, f.metadata["wire"]) for f in dataclasses.fields(cls))
            type.__setattr__(cls, "_wire_schema_cache", cached)
        return cached

    def to_wire(self) -> list[codec.Value]:
        return [t.to_wire(getattr(self, name)) for name, t in self.wire_schema()]

    @classmethod
    def from_wire(cls, raw: codec.Value, path: str | None = None) -> Self:
        path = path or cls.__name__
        schema = cls.wire_schema()
        if not isinstance(raw, list):
            raise DecodeError(f"{path}: expected an array, got {type(raw).__name__}")
        if len(raw) != len(schema):
            raise DecodeError(f"{path}: expected {len(schema)} fields, got {len(raw)}")
        values = {
            name: t.from_wire(v, f"{path}.{name}") for (name, t), v in zip(schema, raw, strict=True)
        }
        # Built without `__init__`: each value has just passed its type's `from_wire`, which
        # is all `validate` checks, and re-validating in `__post_init__` (again at every
        # level of nesting) cost decoding half its time. Only the cross-field rule is left.
        record = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(record, name, value)
        problem = record.invariant_violation()
        if problem is not None:
            raise DecodeError(f"{path}: {cls.__name__}: {problem}")
        return record

    def evolve(self, **changes: Any) -> Self:
        """`dataclasses.replace`, checking only the fields that change: the others (and a
        change to the very object held) passed their checks when `self` was built and cannot
        have changed since (frozen). The cross-field rule runs on the result. A node builds
        one announcement after another that differ in a few numbers; checking its GPUs and
        addresses again each time cost most of building one. Like `from_wire`, it builds
        without `__init__`: a subclass's own `__post_init__` would not run."""
        name_of = type(self).__name__
        record = object.__new__(type(self))
        fields = record.__dict__  # frozen: written past its __setattr__, as from_wire does
        for name, wire_type in self.wire_schema():
            value = getattr(self, name)
            new = changes.pop(name, value)
            if new is not value:
                wire_type.validate(new, f"{name_of}.{name}")
                value = new
            fields[name] = value
        if changes:
            raise TypeError(f"{name_of} has no fields {sorted(changes)}")
        problem = record.invariant_violation()
        if problem is not None:
            raise InvalidRecord(f"{name_of}: {problem}")
        return record

    def packed_fields(self, earlier: tuple[Struct, list[bytes]] | None = None) -> list[bytes]:
        """Each field's wire form packed on its own, in order: `codec.pack_array` of them is
        `encode()`. Given an `earlier` record of this class with its packed fields, a field
        whose value is that record's very object reuses its bytes (values are immutable)."""
        schema = self.wire_schema()
        if earlier is None or type(earlier[0]) is not type(self):
            return [codec.pack(t.to_wire(getattr(self, name))) for name, t in schema]
        before, pieces = earlier
        return [
            piece if (value := getattr(self, name)) is getattr(before, name) else
            codec.pack(t.to_wire(value))
            for (name, t), piece in zip(schema, pieces, strict=True)
        ]  # fmt: skip

    def encode(self) -> bytes:
        return codec.pack(self.to_wire())

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int = codec.FRAME_BYTES_MAX) -> Self:
        return cls.from_wire(codec.unpack(data, max_bytes=max_bytes))


@dataclass(frozen=True)
class Record(Struct):
    """A Struct that can stand alone in a signed envelope: it has a registered kind and version."""

    KIND: ClassVar[int]
    VERSION: ClassVar[int]


RECORD_KINDS: dict[int, type[Record]] = {}
R = TypeVar("R", bound=Record)


def register(cls: type[R]) -> type[R]:
    """Class decorator: make a record kind decodable from envelopes. Kinds are unique forever."""
    if cls.KIND in RECORD_KINDS and RECORD_KINDS[cls.KIND] is not cls:
        raise ValueError(f"record kind {cls.KIND} is already {RECORD_KINDS[cls.KIND].__name__}")
    RECORD_KINDS[cls.KIND] = cls
    return cls


# ---------------------------------------------------------------------------------------------
# Signed envelopes


class Signer(Protocol):
    """Anything that can sign with an ed25519 key (p2p.identity.Identity is one)."""

    public_key: bytes

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class Signed(Generic[R]):
    """A record with the chain it belongs to, who signed it, and the signature."""

    record: R
    chain_id: bytes
    signer: bytes
    signature: bytes

    def encode(self) -> bytes:
        rec = self.record
        return codec.pack(
            [ENVELOPE_FORMAT, rec.KIND, rec.VERSION, self.chain_id, self.signer, rec.to_wire(),
             self.signature]
        )  # fmt: skip


def signing_bytes(
    kind: int, version: int, chain_id: bytes, signer: bytes, body: codec.Value
) -> bytes:
    """The exact bytes an envelope's signature covers."""
    return codec.pack([DOMAIN_TAG, kind, version, chain_id, signer, body])


def sign(record: R, signer: Signer, chain_id: bytes) -> Signed[R]:
    _check_chain_id(chain_id)
    message = signing_bytes(
        record.KIND, record.VERSION, chain_id, signer.public_key, record.to_wire()
    )
    return Signed(record, chain_id, signer.public_key, signer.sign(message))


class EnvelopeSigner:
    """`sign` and then `Signed.encode`, for one signer on one chain, record after record:
    the same signature and bytes for less work (a node announcing signs and sends in one
    go). The envelope's fixed items are packed once, and a record's fields that are the very
    objects of the previous record's (a node announces the same GPUs, region and addresses
    every time) are not put on the wire again."""

    def __init__(self, signer: Signer, chain_id: bytes) -> None:
        _check_chain_id(chain_id)
        self.signer, self.chain_id = signer, chain_id
        self._chain, self._key = codec.pack(chain_id), codec.pack(signer.public_key)
        self._last: tuple[Struct, list[bytes]] | None = None

    def sign_encoded(self, record: R) -> tuple[Signed[R], bytes]:
        pieces = record.packed_fields(self._last)
        self._last = (record, pieces)
        body = codec.pack_array(pieces)
        kind, version = codec.pack(record.KIND), codec.pack(record.VERSION)
        signature = self.signer.sign(
            codec.pack_array([_DOMAIN_TAG_PACKED, kind, version, self._chain, self._key, body])
        )
        data = codec.pack_array([_FORMAT_PACKED, kind, version, self._chain, self._key, body,
                                 codec.pack(signature)])  # fmt: skip
        return Signed(record, self.chain_id, self.signer.public_key, signature), data


_DOMAIN_TAG_PACKED = codec.pack(DOMAIN_TAG)
_FORMAT_PACKED = codec.pack(ENVELOPE_FORMAT)


def decode_signed(
    data: bytes,
    *,
    chain_id: bytes,
    expect: type[R] | None = None,
    max_bytes: int = codec.FRAME_BYTES_MAX,
) -> Signed[Any]:
    """Decode and verify an envelope from a peer.

    Raises DecodeError for anything malformed, unknown, for another chain or of another kind
    than `expect`, and BadSignature when the signature does not verify.
    """
    raw = codec.unpack(data, max_bytes=max_bytes)
    if not isinstance(raw, list) or len(raw) != 7:
        raise DecodeError("envelope: expected an array of 7 items")
    fmt, kind, version, chain, signer, body, signature = raw
    if fmt != ENVELOPE_FORMAT:
        raise DecodeError(f"envelope: unknown format {fmt!r}")
    if not isinstance(kind, int) or kind not in RECORD_KINDS:
        raise DecodeError(f"envelope: unknown record kind {kind!r}")
    cls = RECORD_KINDS[kind]
    if expect is not None and cls is not expect:
        raise DecodeError(f"envelope: expected {expect.__name__}, got {cls.__name__}")
    if version != cls.VERSION:
        raise DecodeError(f"envelope: {cls.__name__} version {version!r} is not supported")
    if chain != chain_id:
        raise DecodeError(f"envelope: for chain {chain!r}, not {chain_id!r}")
    signer_key = Blob(PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES).from_wire(signer, "envelope.signer")
    sig = Blob(SIGNATURE_BYTES, SIGNATURE_BYTES).from_wire(signature, "envelope.signature")
    record = cls.from_wire(body, cls.__name__)
    if not verify(signer_key, signing_bytes(kind, version, chain, signer_key, body), sig):
        raise BadSignature(f"envelope: {cls.__name__} signature does not verify")
    return Signed(record, chain, signer_key, sig)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is `public_key`'s ed25519 signature of `message`."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def _check_chain_id(chain_id: bytes) -> None:
    if not isinstance(chain_id, bytes) or not 0 < len(chain_id) <= CHAIN_ID_BYTES_MAX:
        raise InvalidRecord(f"chain id must be 1..{CHAIN_ID_BYTES_MAX} bytes")


Decoder = Callable[[bytes], Signed[Any]]
