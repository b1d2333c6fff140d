"""Typed records and signed envelopes: exact round trips, strict decoding, and signatures
that cover kind, version, chain, signer and body (DESIGN.md principles 5 and 6)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import consensus
from p2p import codec
from p2p.announcements import (
    ADDRS_MAX,
    ANNOUNCEMENT_BYTES_MAX,
    GPU_MODELS_MAX,
    CapacityAnnouncement,
    GpuSpec,
    decode_announcement,
)
from p2p.errors import BadSignature, DecodeError, InvalidRecord
from p2p.identity import Identity
from p2p.wire import (
    CHAIN_ID_BYTES_MAX,
    DOMAIN_TAG,
    ENVELOPE_FORMAT,
    RECORD_KINDS,
    U64_MAX,
    Blob,
    EnvelopeSigner,
    Record,
    Signed,
    Text,
    WireType,
    decode_signed,
    register,
    sign,
    signing_bytes,
)
from tests.strategies import capacity_announcements, identities, mutated, record_instances

# Every module that may register record kinds is imported, so "every registered record"
# below means every kind the project has, including consensus messages yet to come.
for _mod in pkgutil.walk_packages(consensus.__path__, "consensus."):
    importlib.import_module(_mod.name)

CHAIN = b"gpumesh-test"
ALICE = Identity.derive("test-wire", "alice")
MALLORY = Identity.derive("test-wire", "mallory")


def announcement(**changes: Any) -> CapacityAnnouncement:
    fields: dict[str, Any] = dict(
        node_id=ALICE.public_key, seq=7, issued_ms=1_000, expires_ms=31_000, region="eu-west",
        gpus=(GpuSpec("NVIDIA A100-SXM4-80GB", 4, 81_920), GpuSpec("RTX 4090", 2, 24_564)),
        price_per_gpu_hour=2_500_000, free_gpus=5, load_permille=125, gpu_source="nvidia-smi",
        addrs=("/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"),
    )
    fields.update(changes)
    return CapacityAnnouncement(**fields)


def envelope_items(data: bytes) -> list[Any]:
    items = codec.unpack(data)
    assert isinstance(items, list) and len(items) == 7
    return items


def rewrap(data: bytes, **changes: Any) -> bytes:
    """Re-pack an envelope with some items replaced, leaving the signature as it was."""
    names = ["format", "kind", "version", "chain", "signer", "body", "signature"]
    items = envelope_items(data)
    for name, value in changes.items():
        items[names.index(name)] = value
    return codec.pack(items)


def decode_or_error(data: bytes, **kwargs: Any) -> Signed[Any] | None:
    """decode_signed; None for DecodeError (BadSignature included); anything else fails."""
    try:
        return decode_signed(data, chain_id=CHAIN, **kwargs)
    except DecodeError:
        return None
    except Exception as exc:  # a peer's bytes must raise nothing else
        pytest.fail(f"decode_signed({data.hex()}) raised {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# Round trips


def test_capacity_announcement_is_registered() -> None:
    assert RECORD_KINDS[CapacityAnnouncement.KIND] is CapacityAnnouncement
    assert all(kind == cls.KIND for kind, cls in RECORD_KINDS.items())


@pytest.mark.parametrize("cls", [RECORD_KINDS[k] for k in sorted(RECORD_KINDS)],
                         ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), signer=identities())
def test_every_registered_record_round_trips(cls: type[Record], data: st.DataObject,
                                            signer: Identity) -> None:
    record = data.draw(record_instances(cls))
    encoded = record.encode()
    assert cls.decode(encoded) == record
    assert cls.decode(encoded).encode() == encoded

    signed = sign(record, signer, CHAIN)
    wire = signed.encode()
    back = decode_signed(wire, chain_id=CHAIN, expect=cls)
    assert back == signed
    assert type(back.record) is cls
    assert back.signer == signer.public_key
    assert back.encode() == wire


@settings(max_examples=100, deadline=None)
@given(capacity_announcements())
def test_valid_announcements_always_fit_the_gossip_limit(ann: CapacityAnnouncement) -> None:
    wire = sign(ann, ALICE, CHAIN).encode()
    assert len(wire) <= ANNOUNCEMENT_BYTES_MAX
    assert decode_announcement(wire, CHAIN).record == ann


def test_the_largest_announcement_fits_the_gossip_limit() -> None:
    """Every field at its byte limit: still under 8 KiB."""
    ann = announcement(
        node_id=ALICE.public_key, seq=U64_MAX, issued_ms=U64_MAX - 1, expires_ms=U64_MAX,
        region="r" * 32, price_per_gpu_hour=U64_MAX, free_gpus=0, load_permille=1000,
        gpus=tuple(GpuSpec(f"{i:02d}" + "m" * 62, 1024, 2**24)
                   for i in range(GPU_MODELS_MAX)),
        gpu_source="s" * 16, addrs=tuple(f"{i}" + "a" * 255 for i in range(ADDRS_MAX)),
    )
    longest_chain = b"c" * CHAIN_ID_BYTES_MAX
    wire = sign(ann, ALICE, longest_chain).encode()
    assert len(wire) <= ANNOUNCEMENT_BYTES_MAX
    assert decode_announcement(wire, longest_chain).record == ann


def test_signing_bytes_are_the_documented_array() -> None:
    ann = announcement()
    signed = sign(ann, ALICE, CHAIN)
    expected = codec.pack([DOMAIN_TAG, ann.KIND, ann.VERSION, CHAIN, ALICE.public_key,
                           ann.to_wire()])
    assert signing_bytes(ann.KIND, ann.VERSION, CHAIN, ALICE.public_key, ann.to_wire()) \
        == expected
    nacl.signing.VerifyKey(ALICE.public_key).verify(expected, signed.signature)  # raises if not
    assert envelope_items(signed.encode()) == [ENVELOPE_FORMAT, ann.KIND, ann.VERSION, CHAIN,
                                               ALICE.public_key, ann.to_wire(),
                                               signed.signature]


def test_field_order_is_declaration_order() -> None:
    ann = announcement()
    wire: list[Any] = ann.to_wire()
    assert [name for name, _ in CapacityAnnouncement.wire_schema()] == [
        f.name for f in dataclasses.fields(CapacityAnnouncement)]
    assert wire[0] == ann.node_id and wire[1] == ann.seq and wire[4] == b"eu-west"
    assert wire[5][0] == [b"NVIDIA A100-SXM4-80GB", 4, 81_920]


# ---------------------------------------------------------------------------------------------
# Hostile envelopes


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_envelope_bytes_raise_only_decode_errors(data: bytes) -> None:
    assert decode_or_error(data) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bodies_in_a_valid_envelope_raise_only_decode_errors(junk: bytes) -> None:
    """Random bytes reach the record decoder when wrapped as a (canonical) body value."""
    body = decode_or_error(rewrap(sign(announcement(), ALICE, CHAIN).encode(), body=junk))
    assert body is None


@settings(max_examples=200, deadline=None)
@given(st.data(), capacity_announcements(), identities())
def test_mutated_envelopes_raise_only_decode_errors(data: st.DataObject,
                                                    ann: CapacityAnnouncement,
                                                    signer: Identity) -> None:
    wire = sign(ann, signer, CHAIN).encode()
    bad = data.draw(mutated(wire))
    assert decode_or_error(bad) is None


@settings(max_examples=120, deadline=None)
@given(st.data(), capacity_announcements(), identities())
def test_a_flipped_bit_never_yields_a_different_record(data: st.DataObject,
                                                       ann: CapacityAnnouncement,
                                                       signer: Identity) -> None:
    wire = sign(ann, signer, CHAIN).encode()
    bit = data.draw(st.integers(0, len(wire) * 8 - 1))
    flipped = bytearray(wire)
    flipped[bit // 8] ^= 1 << (bit % 8)
    back = decode_or_error(bytes(flipped))
    assert back is None or back.record.encode() == ann.encode()


def test_every_single_bit_flip_of_an_envelope_is_rejected() -> None:
    wire = sign(announcement(), ALICE, CHAIN).encode()
    accepted = []
    for bit in range(len(wire) * 8):
        flipped = bytearray(wire)
        flipped[bit // 8] ^= 1 << (bit % 8)
        if decode_or_error(bytes(flipped)) is not None:
            accepted.append(bit)
    assert accepted == []


# ---------------------------------------------------------------------------------------------
# Each envelope check


@pytest.fixture
def wire() -> bytes:
    return sign(announcement(), ALICE, CHAIN).encode()


def test_the_envelope_decodes_as_it_was_signed(wire: bytes) -> None:
    back = decode_signed(wire, chain_id=CHAIN, expect=CapacityAnnouncement)
    assert back.record == announcement() and back.signer == ALICE.public_key


def test_an_envelope_signer_is_sign_then_encode(wire: bytes) -> None:
    signed, data = EnvelopeSigner(ALICE, CHAIN).sign_encoded(announcement())
    assert signed == sign(announcement(), ALICE, CHAIN) and data == wire == signed.encode()
    with pytest.raises(InvalidRecord, match="chain id"):
        EnvelopeSigner(ALICE, b"x" * (CHAIN_ID_BYTES_MAX + 1))


@settings(max_examples=40, deadline=None)
@given(st.lists(capacity_announcements(), min_size=1, max_size=4), st.data())
def test_an_envelope_signer_signs_record_after_record_like_sign_then_encode(
    records: list[CapacityAnnouncement], data: st.DataObject
) -> None:
    """Record after record, evolved from the last (its fields reused) or not, the same
    envelope and the same bytes as `sign` and `Signed.encode`."""
    signer = EnvelopeSigner(ALICE, CHAIN)
    last: CapacityAnnouncement | None = None
    for record in records:
        if last is not None and data.draw(st.booleans()):
            record = last.evolve(seq=record.seq, free_gpus=min(last.free_gpus, 1))
        signed = sign(record, ALICE, CHAIN)
        assert signer.sign_encoded(record) == (signed, signed.encode())
        last = record


def test_evolve_checks_what_changes_and_keeps_the_rest() -> None:
    base = announcement()
    later = base.evolve(seq=base.seq + 1, addrs=base.addrs)
    assert later == dataclasses.replace(base, seq=base.seq + 1) and later.gpu_total == 6
    with pytest.raises(InvalidRecord, match="load_permille"):
        base.evolve(load_permille=1001)
    with pytest.raises(InvalidRecord, match="exceeds"):
        base.evolve(free_gpus=9)
    with pytest.raises(TypeError, match="no fields"):
        base.evolve(colour=1)


def test_pack_array_is_pack_of_the_array() -> None:
    for n in (0, 1, 15, 16, 70_000):
        items = [i % 300 for i in range(n)]
        assert codec.pack_array([codec.pack(i) for i in items]) == codec.pack(items)


def test_wrong_chain_is_a_decode_error_not_a_bad_signature(wire: bytes) -> None:
    with pytest.raises(DecodeError, match="chain") as info:
        decode_signed(wire, chain_id=b"gpumesh-other")
    assert not isinstance(info.value, BadSignature)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kind": 999}, "unknown record kind"),
        ({"kind": 0}, "unknown record kind"),
        ({"kind": b"\x01"}, "unknown record kind"),
        ({"kind": [1]}, "unknown record kind"),
        ({"version": 2}, "version"),
        ({"version": 0}, "version"),
        ({"version": b"\x01"}, "version"),
        ({"format": 2}, "format"),
        ({"format": 0}, "format"),
        ({"chain": b""}, "chain"),
        ({"chain": 1}, "chain"),
        ({"signer": ALICE.public_key[:31]}, "envelope.signer"),
        ({"signer": ALICE.public_key + b"\x00"}, "envelope.signer"),
        ({"signer": 5}, "envelope.signer"),
        ({"signature": b"\x00" * 63}, "envelope.signature"),
        ({"signature": b"\x00" * 65}, "envelope.signature"),
        ({"signature": [b"\x00" * 64]}, "envelope.signature"),
        ({"body": 1}, "CapacityAnnouncement: expected an array"),
        ({"body": []}, "expected 11 fields, got 0"),
    ],
)
def test_malformed_envelopes_are_decode_errors(wire: bytes, changes: dict[str, Any],
                                               reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_signed(rewrap(wire, **changes), chain_id=CHAIN)
    assert not isinstance(info.value, BadSignature)


@pytest.mark.parametrize("items", [6, 8, 0])
def test_envelope_with_wrong_item_count_is_a_decode_error(wire: bytes, items: int) -> None:
    raw = envelope_items(wire)
    raw = [*raw, b""][:items] if items else []
    with pytest.raises(DecodeError, match="7 items"):
        decode_signed(codec.pack(raw), chain_id=CHAIN)
    with pytest.raises(DecodeError, match="7 items"):
        decode_signed(codec.pack(b"not an array"), chain_id=CHAIN)


def test_envelope_over_the_size_limit_is_a_decode_error(wire: bytes) -> None:
    assert decode_signed(wire, chain_id=CHAIN, max_bytes=len(wire)).record == announcement()
    with pytest.raises(DecodeError, match="exceeds"):
        decode_signed(wire, chain_id=CHAIN, max_bytes=len(wire) - 1)


def test_wrong_expected_type_is_a_decode_error(wire: bytes) -> None:
    @dataclasses.dataclass(frozen=True)
    class Other(Record):
        KIND = 4242
        VERSION = 1

    with pytest.raises(DecodeError, match="expected Other, got CapacityAnnouncement"):
        decode_signed(wire, chain_id=CHAIN, expect=Other)
    assert decode_signed(wire, chain_id=CHAIN, expect=CapacityAnnouncement).record \
        == announcement()


# ---------------------------------------------------------------------------------------------
# What the signature covers


def test_tampered_body_is_a_bad_signature(wire: bytes) -> None:
    cheaper = announcement(price_per_gpu_hour=1).to_wire()
    with pytest.raises(BadSignature):
        decode_signed(rewrap(wire, body=cheaper), chain_id=CHAIN)


def test_tampered_signature_is_a_bad_signature(wire: bytes) -> None:
    sig = bytearray(envelope_items(wire)[6])
    for i in (0, 31, 32, 63):  # both halves (R and S) of the signature
        bad = bytearray(sig)
        bad[i] ^= 0x01
        with pytest.raises(BadSignature):
            decode_signed(rewrap(wire, signature=bytes(bad)), chain_id=CHAIN)
    with pytest.raises(BadSignature):
        decode_signed(rewrap(wire, signature=bytes(64)), chain_id=CHAIN)


def test_another_signer_key_is_a_bad_signature(wire: bytes) -> None:
    with pytest.raises(BadSignature):
        decode_signed(rewrap(wire, signer=MALLORY.public_key), chain_id=CHAIN)
    with pytest.raises(BadSignature):  # not even a valid curve point
        decode_signed(rewrap(wire, signer=b"\xff" * 32), chain_id=CHAIN)


def test_signature_by_another_key_is_a_bad_signature() -> None:
    """Mallory signs Alice's statement but names Alice as signer."""
    ann = announcement()
    forged = Signed(ann, CHAIN, ALICE.public_key,
                    MALLORY.sign(signing_bytes(1, 1, CHAIN, ALICE.public_key, ann.to_wire())))
    with pytest.raises(BadSignature):
        decode_signed(forged.encode(), chain_id=CHAIN)


ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


def test_non_canonical_signature_scalar_is_rejected(wire: bytes) -> None:
    """S + L verifies under a lax ed25519 check; docs/PROTOCOL.md promises strict checks."""
    sig = envelope_items(wire)[6]
    s_plus_l = int.from_bytes(sig[32:], "little") + ED25519_ORDER
    malleated = sig[:32] + s_plus_l.to_bytes(32, "little")
    with pytest.raises(BadSignature):
        decode_signed(rewrap(wire, signature=malleated), chain_id=CHAIN)


def test_small_order_signer_is_rejected() -> None:
    """The identity point as key and R with S = 0 'signs' every message under a lax check."""
    identity_point = b"\x01" + bytes(31)
    ann = announcement(node_id=identity_point)
    forged = Signed(ann, CHAIN, identity_point, identity_point + bytes(32))
    with pytest.raises(BadSignature):
        decode_signed(forged.encode(), chain_id=CHAIN)


TWIN_KIND = 65_000


class Twin(CapacityAnnouncement):
    """The same schema under another kind number: only the signature can tell them apart."""

    KIND = TWIN_KIND


class NextVersion(CapacityAnnouncement):
    """CapacityAnnouncement as a v2 node would register it."""

    VERSION = 2


def test_signature_covers_the_kind(wire: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RECORD_KINDS, TWIN_KIND, Twin)
    twin = Twin(**{f.name: getattr(announcement(), f.name)
                   for f in dataclasses.fields(CapacityAnnouncement)})
    genuine = decode_signed(sign(twin, ALICE, CHAIN).encode(), chain_id=CHAIN)
    assert type(genuine.record) is Twin  # the kind itself decodes; only the re-wrap fails
    with pytest.raises(BadSignature):
        decode_signed(rewrap(wire, kind=TWIN_KIND), chain_id=CHAIN)


def test_signature_covers_the_version(wire: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RECORD_KINDS, CapacityAnnouncement.KIND, NextVersion)
    v2 = NextVersion(**{f.name: getattr(announcement(), f.name)
                        for f in dataclasses.fields(CapacityAnnouncement)})
    assert decode_signed(sign(v2, ALICE, CHAIN).encode(), chain_id=CHAIN).record == v2
    with pytest.raises(BadSignature):
        decode_signed(rewrap(wire, version=2), chain_id=CHAIN)


def test_signature_covers_the_chain(wire: bytes) -> None:
    other = b"gpumesh-other"
    with pytest.raises(BadSignature):
        decode_signed(rewrap(wire, chain=other), chain_id=other)


def test_sign_refuses_a_bad_chain_id() -> None:
    for chain in (b"", b"x" * 65, "gpumesh"):
        with pytest.raises(InvalidRecord, match="chain id"):
            sign(announcement(), ALICE, chain)  # type: ignore[arg-type]
    assert sign(announcement(), ALICE, b"x" * 64).chain_id == b"x" * 64


def test_register_refuses_a_second_class_for_a_kind() -> None:
    class Impostor(CapacityAnnouncement):
        pass

    with pytest.raises(ValueError, match="already CapacityAnnouncement"):
        register(Impostor)
    assert RECORD_KINDS[CapacityAnnouncement.KIND] is CapacityAnnouncement
    assert register(CapacityAnnouncement) is CapacityAnnouncement  # idempotent


# ---------------------------------------------------------------------------------------------
# Locally built invalid records: InvalidRecord, naming the field


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (lambda: announcement(seq=-1), "CapacityAnnouncement.seq"),
        (lambda: announcement(seq=U64_MAX + 1), "CapacityAnnouncement.seq"),
        (lambda: announcement(seq=True), "CapacityAnnouncement.seq"),
        (lambda: announcement(seq=7.0), "CapacityAnnouncement.seq"),
        (lambda: announcement(seq="7"), "CapacityAnnouncement.seq"),
        (lambda: announcement(load_permille=1001), "CapacityAnnouncement.load_permille"),
        (lambda: announcement(free_gpus=2**16 + 1), "CapacityAnnouncement.free_gpus"),
        (lambda: announcement(node_id=b"\x01" * 31), "CapacityAnnouncement.node_id"),
        (lambda: announcement(node_id=bytearray(32)), "CapacityAnnouncement.node_id"),
        (lambda: announcement(node_id=ALICE.public_key.hex()), "CapacityAnnouncement.node_id"),
        (lambda: announcement(region="r" * 33), "CapacityAnnouncement.region"),
        (lambda: announcement(region="\u00e9"), "CapacityAnnouncement.region"),  # not ASCII
        (lambda: announcement(region="eu\nwest"), "CapacityAnnouncement.region"),
        (lambda: announcement(region="eu\x00"), "CapacityAnnouncement.region"),
        (lambda: announcement(region="\u200b"), "CapacityAnnouncement.region"),  # Cf
        (lambda: announcement(region="\ud800"), "CapacityAnnouncement.region"),  # surrogate
        (lambda: announcement(region="eu\x7f"), "CapacityAnnouncement.region"),  # DEL
        (lambda: announcement(region=b"eu"), "CapacityAnnouncement.region"),
        (lambda: announcement(gpu_source="x" * 17), "CapacityAnnouncement.gpu_source"),
        (lambda: announcement(addrs=["/ip4/1.2.3.4"]), "CapacityAnnouncement.addrs"),
        (lambda: announcement(addrs=("ok", "bad\t")), "CapacityAnnouncement.addrs[1]"),
        (lambda: announcement(addrs=("a" * 257,)), "CapacityAnnouncement.addrs[0]"),
        (lambda: announcement(addrs=("a",) * (ADDRS_MAX + 1)), "CapacityAnnouncement.addrs"),
        (lambda: announcement(addrs=(1,)), "CapacityAnnouncement.addrs"),
        (lambda: announcement(gpus=[GpuSpec("A", 1, 1)], free_gpus=0),
         "CapacityAnnouncement.gpus"),
        (lambda: announcement(gpus=(("A", 1, 1),), free_gpus=0), "CapacityAnnouncement.gpus"),
        (lambda: announcement(gpus=tuple(GpuSpec(f"m{i}", 1, 1) for i in range(17)),
                              free_gpus=0), "CapacityAnnouncement.gpus"),
        (lambda: GpuSpec("x" * 65, 1, 1), "GpuSpec.model"),
        (lambda: GpuSpec("H100\r", 1, 1), "GpuSpec.model"),
        (lambda: GpuSpec("H100", 1025, 1), "GpuSpec.count"),
        (lambda: GpuSpec("H100", -1, 1), "GpuSpec.count"),
        (lambda: GpuSpec("H100", 1, 2**24 + 1), "GpuSpec.memory_mib"),
        (lambda: GpuSpec("H100", 1, None), "GpuSpec.memory_mib"),  # type: ignore[arg-type]
    ],
)
def test_invalid_fields_raise_invalid_record_naming_the_field(build: Callable[[], object],
                                                              path: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        build()
    assert path in str(info.value)
    assert not isinstance(info.value, DecodeError)  # our bug, not a peer's bad bytes


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: announcement(free_gpus=7), "free_gpus 7 exceeds the 6 GPUs"),
        (lambda: announcement(gpus=(), free_gpus=1), "free_gpus 1 exceeds the 0 GPUs"),
        (lambda: announcement(expires_ms=1_000), "expires_ms must be after issued_ms"),
        (lambda: announcement(expires_ms=999), "expires_ms must be after issued_ms"),
        (lambda: announcement(gpus=(GpuSpec("A", 1, 1), GpuSpec("A", 2, 2)), free_gpus=0),
         "each GPU model may appear once"),
        (lambda: GpuSpec("", 1, 1), "model must not be empty"),
        (lambda: GpuSpec("H100", 0, 1), "count must be at least 1"),
    ],
)
def test_cross_field_invariants_raise_invalid_record(build: Callable[[], object],
                                                     reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        build()


# ---------------------------------------------------------------------------------------------
# The same rules from the wire: DecodeError, naming the field path


def body_with(path: tuple[int, ...], value: Any) -> list[Any]:
    body: list[Any] = announcement().to_wire()
    target = body
    for i in path[:-1]:
        target = target[i]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ((5, 0, 0), b"H100\x07", r"CapacityAnnouncement\.gpus\[0\]\.model: byte 0x07 is not"),
        ((5, 1, 0), b"\xff\xfe", r"CapacityAnnouncement\.gpus\[1\]\.model: byte 0xff is not"),
        ((5, 1, 1), 0, r"CapacityAnnouncement\.gpus\[1\]: .*count must be at least 1"),
        ((5, 0, 2), -1, r"CapacityAnnouncement\.gpus\[0\]\.memory_mib: -1 is outside"),
        ((5, 0), [b"H100", 1], r"CapacityAnnouncement\.gpus\[0\]: expected 3 fields"),
        ((5,), b"", r"CapacityAnnouncement\.gpus: expected an array"),
        ((1,), b"\x07", r"CapacityAnnouncement\.seq: expected an integer"),
        ((1,), -5, r"CapacityAnnouncement\.seq: -5 is outside"),
        ((0,), b"\x00" * 33, r"CapacityAnnouncement\.node_id: expected 32 bytes"),
        ((4,), b"r" * 33, r"CapacityAnnouncement\.region: 33 bytes exceeds 32"),
        ((10, 1), b"\x1b[31m", r"CapacityAnnouncement\.addrs\[1\]: byte 0x1b is not printable"),
        ((10,), [b"a"] * 9, r"CapacityAnnouncement\.addrs: 9 items exceeds 8"),
        ((7,), 7, r"free_gpus 7 exceeds the 6 GPUs"),
        ((3,), 1_000, r"expires_ms must be after issued_ms"),
    ],
)
def test_decode_errors_name_the_field_path(path: tuple[int, ...], value: Any,
                                           reason: str) -> None:
    body = body_with(path, value)
    with pytest.raises(DecodeError, match=reason):
        CapacityAnnouncement.decode(codec.pack(body))
    # The same body in an envelope signed over it: still a DecodeError, never InvalidRecord.
    message = signing_bytes(1, 1, CHAIN, ALICE.public_key, body)
    wire = codec.pack([1, 1, 1, CHAIN, ALICE.public_key, body, ALICE.sign(message)])
    with pytest.raises(DecodeError, match=reason) as info:
        decode_signed(wire, chain_id=CHAIN)
    assert not isinstance(info.value, BadSignature)


def _verdict(check: Callable[[Any, str], None], value: Any) -> str | None:
    """What a `validate` says of `value`: None, or its InvalidRecord's message."""
    try:
        check(value, "f")
    except InvalidRecord as exc:
        return str(exc)
    return None


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(st.characters(max_codepoint=0x80), max_size=40),
                 st.binary(max_size=40), st.integers()),
       st.integers(0, 40))  # fmt: skip
def test_text_validate_accepts_and_refuses_what_the_round_trip_does(value: Any, size: int) -> None:
    """Text and Blob check a locally built value without the round trip when it passes (every
    record a node builds, every announcement it signs); the verdict, and any error, must be
    the round trip's."""
    for wire_type in (Text(size), Blob(size), Blob(40, size)):
        round_trip = functools.partial(WireType.validate, wire_type)  # to the wire and back
        assert _verdict(wire_type.validate, value) == _verdict(round_trip, value)
