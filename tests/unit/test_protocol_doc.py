"""docs/PROTOCOL.md cannot drift: its generated blocks (field tables, the worked example's
keys, signing bytes, envelope hex and annotated dump) are rebuilt here from the code and
must match the document byte for byte.

The annotated dump is produced by a small msgpack reader written from the document's rules,
independent of `p2p.codec`, so this test also checks that the document describes the bytes
the code really produces.

To refresh the document after an intended format change, print the blocks with
    python -c "from tests.unit.test_protocol_doc import print_blocks; print_blocks()"
and paste each between its markers.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import nacl.signing

from p2p import codec
from p2p.announcements import (
    ANNOUNCEMENT_BYTES_MAX,
    TOPIC_CAPACITY,
    BookConfig,
    CapacityAnnouncement,
    GpuSpec,
    Verdict,
    check_announcement,
    decode_announcement,
    gossip_validator,
)
from p2p.identity import Identity, public_key_from_peer_id
from p2p.wire import (
    CHAIN_ID_BYTES_MAX,
    DOMAIN_TAG,
    ENVELOPE_FORMAT,
    Blob,
    Nested,
    Seq,
    Signed,
    Struct,
    Text,
    UInt,
    WireType,
    sign,
    signing_bytes,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
EXAMPLE_CHAIN = b"gpumesh-local"
EXAMPLE_IDENTITY = Identity.derive("protocol-doc", 1)
ENVELOPE_ITEMS = ("format", "kind", "version", "chain_id", "signer", "body", "signature")


def example_announcement() -> CapacityAnnouncement:
    return CapacityAnnouncement(
        node_id=EXAMPLE_IDENTITY.public_key,
        seq=1_700_000_000_000,
        issued_ms=1_700_000_000_000,
        expires_ms=1_700_000_030_000,
        region="eu-west",
        gpus=(GpuSpec("NVIDIA H100 80GB HBM3", 8, 81_559),),
        price_per_gpu_hour=2_500_000,
        free_gpus=6,
        load_permille=250,
        gpu_source="nvidia-smi",
        addrs=("/ip4/203.0.113.7/tcp/4001",),
    )


def example_signed() -> Signed[CapacityAnnouncement]:
    return sign(example_announcement(), EXAMPLE_IDENTITY, EXAMPLE_CHAIN)


# ---------------------------------------------------------------------------------------------
# Field tables


def describe(wire_type: WireType) -> tuple[str, str]:
    """(wire type, limits) of one field, in the document's words."""
    if isinstance(wire_type, UInt):
        top = "2^64-1" if wire_type.max == 2**64 - 1 else f"{wire_type.max}"
        return "uint", f"0 ..= {top}"
    if isinstance(wire_type, Blob):
        if wire_type.exact_len is not None:
            return "bin", f"exactly {wire_type.exact_len} bytes"
        return "bin", f"at most {wire_type.max_len} bytes"
    if isinstance(wire_type, Text):
        return "text", f"at most {wire_type.max_bytes} bytes, printable ASCII"
    if isinstance(wire_type, Nested):
        return f"`{wire_type.struct.__name__}`", "see its table"
    if isinstance(wire_type, Seq):
        item, limits = describe(wire_type.item)
        each = "" if limits == "see its table" else f"; each {limits}"
        return f"array of {item}", f"at most {wire_type.max_len} items{each}"
    raise AssertionError(f"undocumented wire type {wire_type!r}")


def field_table(cls: type[Struct]) -> str:
    rows = ["| # | field | wire type | limits |", "|---|---|---|---|"]
    for i, (name, wire_type) in enumerate(cls.wire_schema()):
        kind, limits = describe(wire_type)
        rows.append(f"| {i} | `{name}` | {kind} | {limits} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# An independent reader of the canonical subset, for the annotated dump


def read_header(data: bytes, at: int) -> tuple[str, int, int]:
    """(kind, value or length, header size) of the item at `at`: kind is int, bin or array."""
    b = data[at]
    if b <= 0x7F:
        return "int", b, 1
    if b >= 0xE0:
        return "int", b - 0x100, 1
    if 0x90 <= b <= 0x9F:
        return "array", b & 0x0F, 1
    fixed = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
             0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
    if b in fixed:
        size = struct.calcsize(fixed[b])
        return "int", struct.unpack_from(fixed[b], data, at + 1)[0], 1 + size
    lengths = {0xC4: (">B", "bin"), 0xC5: (">H", "bin"), 0xC6: (">I", "bin"),
               0xDC: (">H", "array"), 0xDD: (">I", "array")}
    if b in lengths:
        fmt, kind = lengths[b]
        size = struct.calcsize(fmt)
        return kind, struct.unpack_from(fmt, data, at + 1)[0], 1 + size
    raise AssertionError(f"byte {b:02x} at {at} is outside the documented subset")


def _row(at: int, chunk: bytes, meaning: str) -> str:
    return f"{at:04x}    {chunk.hex(' '):<47}  {meaning}".rstrip()


class Annotator:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0
        self.rows: list[str] = []

    def emit(self, size: int, meaning: str) -> bytes:
        chunk = self.data[self.at : self.at + size]
        for i in range(0, max(size, 1), 16):
            self.rows.append(_row(self.at + i, chunk[i : i + 16], meaning if i == 0 else ""))
        self.at += size
        return chunk

    def item(self, label: str, wire_type: WireType | None = None) -> None:
        kind, value, header = read_header(self.data, self.at)
        if kind == "int":
            self.emit(header, f"{label} = {value}")
        elif kind == "bin":
            self.emit(header, f"{label}: bin, {value} bytes")
            text = self.data[self.at : self.at + value]
            shown = f'"{text.decode()}"' if isinstance(wire_type, Text) else f"({value} bytes)"
            self.emit(value, f"  {shown}")
        else:
            self.emit(header, f"{label}: array of {value}")
            self.array(label, value, wire_type)

    def array(self, label: str, count: int, wire_type: WireType | None) -> None:
        if isinstance(wire_type, Seq):
            for i in range(count):
                self.item(f"{label}[{i}]", wire_type.item)
            return
        struct_cls = wire_type.struct if isinstance(wire_type, Nested) else None
        if struct_cls is None and label == "body":
            struct_cls = CapacityAnnouncement
        assert struct_cls is not None, f"no schema for {label}"
        schema = struct_cls.wire_schema()
        assert count == len(schema)
        for name, field_type in schema:
            self.item(f"{label}.{name}", field_type)


def annotated_dump(data: bytes) -> str:
    annotator = Annotator(data)
    kind, count, header = read_header(data, 0)
    assert (kind, count) == ("array", 7)
    annotator.emit(header, "envelope: array of 7")
    for name in ENVELOPE_ITEMS:
        annotator.item(name, Nested(CapacityAnnouncement) if name == "body" else
                       Text(64) if name == "chain_id" else None)
    assert annotator.at == len(data), "trailing bytes"
    head = f"{'offset':<8}{'bytes':<49}meaning"
    return "\n".join([head, *annotator.rows])


def hex_lines(data: bytes, width: int = 32) -> str:
    return "\n".join(data[i : i + width].hex() for i in range(0, len(data), width))


# ---------------------------------------------------------------------------------------------
# The blocks of the document


def render_blocks() -> dict[str, str]:
    signed = example_signed()
    ann = signed.record
    wire = signed.encode()
    message = signing_bytes(ann.KIND, ann.VERSION, EXAMPLE_CHAIN, signed.signer, ann.to_wire())
    values = "\n".join(f"{name:<19}= {getattr(ann, name)!r}"
                       for name, _ in CapacityAnnouncement.wire_schema() if name != "node_id")
    fence = "```"
    return {
        "fields-CapacityAnnouncement": field_table(CapacityAnnouncement),
        "fields-GpuSpec": field_table(GpuSpec),
        "example-identity": "\n".join([
            fence + "text",
            'Identity.derive("protocol-doc", 1)',
            f"seed       {EXAMPLE_IDENTITY.seed.hex()}",
            f"public key {EXAMPLE_IDENTITY.public_key.hex()}",
            f"peer id    {EXAMPLE_IDENTITY.peer_id}",
            fence,
        ]),
        "example-values": "\n".join([
            fence + "text",
            f"chain_id           = {EXAMPLE_CHAIN!r}",
            "node_id            = <the public key above>",
            values,
            fence,
        ]),
        "example-signing-bytes": "\n".join([
            f"{fence}text", f"{len(message)} bytes", hex_lines(message), fence]),
        "example-signature": "\n".join([f"{fence}text", signed.signature.hex(), fence]),
        "example-envelope-hex": "\n".join([
            f"{fence}text", f"{len(wire)} bytes", hex_lines(wire), fence]),
        "example-envelope-annotated": "\n".join([fence + "text", annotated_dump(wire), fence]),
    }


def print_blocks() -> None:
    for name, block in render_blocks().items():
        print(f"<!-- begin:{name} -->\n{block}\n<!-- end:{name} -->\n")


def doc_blocks(text: str) -> dict[str, str]:
    pattern = re.compile(r"<!-- begin:([\w-]+) -->\n(.*?)\n<!-- end:\1 -->", re.DOTALL)
    return {m.group(1): m.group(2) for m in pattern.finditer(text)}


# ---------------------------------------------------------------------------------------------
# Tests


def test_every_generated_block_matches_the_document() -> None:
    found = doc_blocks(DOC.read_text(encoding="utf-8"))
    for name, expected in render_blocks().items():
        assert name in found, f"docs/PROTOCOL.md lacks the block <!-- begin:{name} -->"
        assert found[name] == expected, (
            f"docs/PROTOCOL.md block {name!r} drifted from the code; it should read:\n{expected}")


def test_the_documented_hex_is_a_valid_announcement() -> None:
    """Read the envelope back from the document itself, as another implementation would."""
    block = doc_blocks(DOC.read_text(encoding="utf-8"))["example-envelope-hex"]
    hex_text = "".join(line for line in block.splitlines()[2:-1])
    wire = bytes.fromhex(hex_text)
    signed = decode_announcement(wire, EXAMPLE_CHAIN)
    assert signed.record == example_announcement()
    assert signed.signer == public_key_from_peer_id(EXAMPLE_IDENTITY.peer_id)
    assert check_announcement(signed, signed.record.issued_ms, BookConfig()) is None
    message = signing_bytes(1, 1, EXAMPLE_CHAIN, signed.signer, signed.record.to_wire())
    assert message.startswith(bytes([0x96, 0xC4, len(DOMAIN_TAG)]) + DOMAIN_TAG)
    nacl.signing.VerifyKey(signed.signer).verify(message, signed.signature)


def test_the_documented_acceptance_window() -> None:
    """Section 7: accepted from issued - skew up to expires - 1, with the default config."""
    wire, config = example_signed().encode(), BookConfig()
    first, last = 1_700_000_000_000 - config.clock_skew_max_ms, 1_700_000_030_000 - 1
    assert gossip_validator(wire, EXAMPLE_CHAIN, first, config)
    assert gossip_validator(wire, EXAMPLE_CHAIN, last, config)
    assert not gossip_validator(wire, EXAMPLE_CHAIN, first - 1, config)
    assert not gossip_validator(wire, EXAMPLE_CHAIN, last + 1, config)
    assert not gossip_validator(wire, b"gpumesh-swarm", first, config)


def test_the_signing_bytes_are_a_slice_of_the_envelope() -> None:
    """What the document promises implementers: items kind..body are encoded identically in
    the envelope and in the signing bytes, so the signed message can be cut from the frame."""
    signed = example_signed()
    wire = signed.encode()
    message = signing_bytes(1, 1, EXAMPLE_CHAIN, signed.signer, signed.record.to_wire())
    signature_start = len(wire) - 2 - 64  # c4 40 <64 bytes>
    tag = bytes([0xC4, len(DOMAIN_TAG)]) + DOMAIN_TAG
    assert wire[:2] == bytes([0x97, 0x01])
    assert message == b"\x96" + tag + wire[2:signature_start]


def test_the_document_states_the_constants() -> None:
    text = DOC.read_text(encoding="utf-8")
    book = BookConfig()
    needles = [f"`{TOPIC_CAPACITY}`", f'`"{DOMAIN_TAG.decode()}"`', "`gpumesh-local`",
               f"`FRAME_BYTES_MAX` = {codec.FRAME_BYTES_MAX}",
               f"`ANNOUNCEMENT_BYTES_MAX` = {ANNOUNCEMENT_BYTES_MAX}",
               f"`DEPTH_MAX` = {codec.DEPTH_MAX}",
               f"`CHAIN_ID_BYTES_MAX` = {CHAIN_ID_BYTES_MAX}",
               f"`ttl_max_ms` = {book.ttl_max_ms}",
               f"`clock_skew_max_ms` = {book.clock_skew_max_ms}",
               f"`entries_max` = {book.entries_max}",
               f"`ENVELOPE_FORMAT` = {ENVELOPE_FORMAT}"]
    missing = [n for n in needles if n not in text]
    assert missing == [], f"docs/PROTOCOL.md does not state: {missing}"
    for verdict in Verdict:
        assert f"`{verdict.name}`" in text, f"docs/PROTOCOL.md does not explain {verdict.name}"
