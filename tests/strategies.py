"""Hypothesis strategies for wire values and records, shared by every test that needs them.

`capacity_announcements()` builds only valid announcements (free <= total, unique models,
expires after issued, printable text within its byte limit), so a test that draws one may
assume `CapacityAnnouncement(...)` did not raise. `record_instances(cls)` covers every
registered record kind: a hand-written strategy where one exists here, otherwise one derived
from the record's wire schema.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from consensus.bft.votes import ROUND_MAX, Proposal, Vote
from p2p.announcements import GPU_MODELS_MAX, CapacityAnnouncement, GpuSpec
from p2p.errors import InvalidRecord
from p2p.identity import Identity
from p2p.wire import U64_MAX, Blob, Nested, Record, Seq, Struct, Text, UInt, WireType

# Printable in Python's sense (str.isprintable): letters, marks, numbers, punctuation,
# symbols and the ASCII space; never controls, format characters or other separators.
PRINTABLE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
"""Text on the wire is printable ASCII (docs/PROTOCOL.md, 3.2)."""


def printable_text(max_bytes: int, *, min_size: int = 0) -> st.SearchStrategy[str]:
    """Printable ASCII of at most `max_bytes` bytes (and at least `min_size` chars)."""
    return st.text(PRINTABLE_CHARS, min_size=min_size, max_size=max_bytes)


def gpu_specs(model: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[GpuSpec]:
    return st.builds(
        GpuSpec,
        model=model if model is not None else printable_text(64, min_size=1),
        count=st.integers(1, 1024),
        memory_mib=st.integers(0, 2**24),
    )


def node_ids() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=32, max_size=32)


@st.composite
def capacity_announcements(
    draw: st.DrawFn,
    node_id: st.SearchStrategy[bytes] | None = None,
    seq: st.SearchStrategy[int] | None = None,
    issued_ms: st.SearchStrategy[int] | None = None,
    ttl_ms: st.SearchStrategy[int] | None = None,
) -> CapacityAnnouncement:
    """A valid announcement; each part can be narrowed (e.g. times for book tests)."""
    issued = draw(issued_ms if issued_ms is not None else st.integers(0, U64_MAX - 1))
    ttl = draw(ttl_ms if ttl_ms is not None else st.integers(1, U64_MAX - issued))
    gpus = tuple(
        draw(st.lists(gpu_specs(), max_size=GPU_MODELS_MAX, unique_by=lambda g: g.model))
    )
    total = sum(g.count for g in gpus)
    return CapacityAnnouncement(
        node_id=draw(node_id if node_id is not None else node_ids()),
        seq=draw(seq if seq is not None else st.integers(0, U64_MAX)),
        issued_ms=issued,
        expires_ms=min(issued + ttl, U64_MAX),
        region=draw(printable_text(32)),
        gpus=gpus,
        price_per_gpu_hour=draw(st.integers(0, U64_MAX)),
        free_gpus=draw(st.integers(0, min(total, 2**16))),
        load_permille=draw(st.integers(0, 1000)),
        gpu_source=draw(printable_text(16)),
        addrs=tuple(draw(st.lists(printable_text(256), max_size=8))),
    )


def identities(count: int = 8, label: str = "strategies") -> st.SearchStrategy[Identity]:
    """One of `count` fixed, derived identities (signing needs a real key)."""
    return st.integers(0, count - 1).map(lambda i: Identity.derive(label, i))


# ---------------------------------------------------------------------------------------------
# Any registered record, derived from its schema unless a better strategy is listed here

def votes() -> st.SearchStrategy[Vote]:
    """Valid votes: kind 1 or 2, a nil or 32-byte hash (the generic strategy would draw
    mostly invalid ones and be filtered into a health-check failure)."""
    return st.builds(
        Vote,
        height=st.integers(1, U64_MAX),
        round=st.integers(0, ROUND_MAX),
        kind=st.sampled_from([1, 2]),
        block_hash=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    )


def proposals() -> st.SearchStrategy[Proposal]:
    return st.integers(0, ROUND_MAX).flatmap(
        lambda r: st.builds(
            Proposal,
            height=st.integers(1, U64_MAX),
            round=st.just(r),
            pol_round_plus_one=st.integers(0, r),
            block_hash=st.binary(min_size=32, max_size=32),
        )
    )


RECORD_STRATEGIES: dict[type[Record], st.SearchStrategy[Any]] = {
    CapacityAnnouncement: capacity_announcements(),
    Vote: votes(),
    Proposal: proposals(),
}


def wire_values(wire_type: WireType) -> st.SearchStrategy[Any]:
    """Python values that fit one wire type (before cross-field invariants)."""
    if isinstance(wire_type, UInt):
        return st.integers(0, wire_type.max)
    if isinstance(wire_type, Blob):
        if wire_type.exact_len is not None:
            return st.binary(min_size=wire_type.exact_len, max_size=wire_type.exact_len)
        return st.binary(max_size=wire_type.max_len)
    if isinstance(wire_type, Text):
        return printable_text(wire_type.max_bytes)
    if isinstance(wire_type, Seq):
        return st.lists(wire_values(wire_type.item), max_size=min(wire_type.max_len, 4)).map(
            tuple
        )
    if isinstance(wire_type, Nested):
        return struct_instances(wire_type.struct)
    raise NotImplementedError(f"no strategy for wire type {wire_type!r}: add one here")


def _build(cls: type[Struct], kwargs: dict[str, Any]) -> Struct | None:
    try:
        return cls(**kwargs)
    except InvalidRecord:
        return None  # a cross-field invariant said no; the filter below draws again


def struct_instances(cls: type[Struct]) -> st.SearchStrategy[Any]:
    if cls is GpuSpec:
        return gpu_specs()
    fields = {name: wire_values(t) for name, t in cls.wire_schema()}
    return st.fixed_dictionaries(fields).map(lambda kw: _build(cls, kw)).filter(
        lambda s: s is not None
    )


def record_instances(cls: type[Record]) -> st.SearchStrategy[Any]:
    if cls in RECORD_STRATEGIES:
        return RECORD_STRATEGIES[cls]
    return struct_instances(cls)


# ---------------------------------------------------------------------------------------------
# Damaging valid bytes


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one of: a flipped bit, a changed, inserted or deleted byte, a truncation,
    or appended bytes. The result may still happen to be valid; it is never equal to `data`."""
    kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
    buf = bytearray(data)
    if kind == "flip":
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] = draw(st.integers(0, 255).filter(lambda b: b != buf[i]))
    elif kind == "insert":
        i = draw(st.integers(0, len(buf)))
        buf[i:i] = draw(st.binary(min_size=1, max_size=4))
    elif kind == "delete":
        i = draw(st.integers(0, len(buf) - 1))
        del buf[i : i + draw(st.integers(1, 4))]
    elif kind == "truncate":
        del buf[draw(st.integers(0, len(buf) - 1)) :]
    else:
        buf += draw(st.binary(min_size=1, max_size=4))
    return bytes(buf)
