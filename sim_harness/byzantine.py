"""Byzantine behaviours: pluggable wrappers that make a simulated node misbehave.

A behaviour wraps one node's honest `NodeCore`: it sees every input before the core does
(and may hide it), and decides what actually leaves the node whenever the core publishes.
What leaves goes two ways: `publish` is gossip, checked by every receiver's topic validator
(so a malformed or forged message dies at the first honest hop, as on the real network), and
`direct` is written straight to each mesh neighbour's core, bypassing the validator: a
hostile peer talking on a raw stream, which is how a simulation proves that cores survive
bad input and penalise its sender.

Register new behaviours with `@register_behaviour`; later issues add theirs (equivocation,
wrong results) the same way. Every random choice draws from `ctx.rng`, seeded per node.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

from node.core import GossipIn, Input
from p2p.announcements import TOPIC_CAPACITY, CapacityAnnouncement, GpuSpec
from p2p.errors import DecodeError
from p2p.identity import Identity
from p2p.wire import Signed, sign

CAPTURED_MAX = 64
"""Messages a replaying node remembers; the oldest are forgotten first."""
GARBAGE_BYTES_MAX = 600


@dataclass
class ByzContext:
    """What a behaviour may use: its node's identity and chain, a seeded generator, and the
    simulator's (memoised) announcement decoder."""

    name: str
    index: int
    identity: Identity
    chain_id: bytes
    rng: random.Random
    decode: Callable[[bytes], Signed[CapacityAnnouncement]]


@dataclass(frozen=True)
class Outgoing:
    publish: tuple[bytes, ...] = ()
    """Gossiped: validated at every hop."""
    direct: tuple[bytes, ...] = ()
    """Sent to each mesh neighbour's core, bypassing the validator."""


class Behaviour:
    """Honest by default; subclasses override what they corrupt."""

    name: ClassVar[str] = "honest"
    forwards: ClassVar[bool] = True
    """Whether the node relays other nodes' gossip."""
    detectable: ClassVar[bool] = True
    """Whether honest nodes can tell from gossip alone (documentation for reports)."""

    def __init__(self, ctx: ByzContext) -> None:
        self.ctx = ctx

    def on_input(self, now_ms: int, inp: Input) -> bool:
        """See an input first; False hides it from the core."""
        return True

    def on_publish(self, now_ms: int, data: bytes) -> Outgoing:
        """What leaves the node when its core publishes `data`."""
        return Outgoing((data,))

    def own(self, data: bytes) -> Signed[CapacityAnnouncement] | None:
        try:
            return self.ctx.decode(data)
        except DecodeError:
            return None


BYZANTINE: dict[str, type[Behaviour]] = {}
_B = TypeVar("_B", bound=type[Behaviour])


def register_behaviour(cls: _B) -> _B:
    if cls.name in BYZANTINE and BYZANTINE[cls.name] is not cls:
        raise ValueError(f"Byzantine behaviour {cls.name!r} is already registered")
    BYZANTINE[cls.name] = cls
    return cls


@register_behaviour
class Silent(Behaviour):
    """Never publishes or forwards; still listens (a free rider, or a node gone dark)."""

    name = "silent"
    forwards = False

    def on_publish(self, now_ms: int, data: bytes) -> Outgoing:
        return Outgoing()


@register_behaviour
class Garbage(Behaviour):
    """Publishes random bytes, or mangled copies of its own announcement, instead of it."""

    name = "garbage"

    def on_publish(self, now_ms: int, data: bytes) -> Outgoing:
        rng = self.ctx.rng
        choice = rng.randrange(3)
        if choice == 0:
            junk = rng.randbytes(rng.randint(1, GARBAGE_BYTES_MAX))
        elif choice == 1:
            junk = data[: rng.randint(0, len(data) - 1)] or b"\x00"
        else:
            buf = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            junk = bytes(buf)
        return Outgoing((junk,), (junk,))


@register_behaviour
class ForgedSignature(Behaviour):
    """Publishes announcements whose signature does not match: a flipped signature byte, a
    record claiming another node's key, or an envelope naming another signer."""

    name = "forged_signature"

    def __init__(self, ctx: ByzContext) -> None:
        super().__init__(ctx)
        self.victims: list[bytes] = []

    def on_input(self, now_ms: int, inp: Input) -> bool:
        if isinstance(inp, GossipIn) and len(self.victims) < CAPTURED_MAX:
            signed = self.own(inp.data)
            if signed is not None and signed.signer not in self.victims:
                self.victims.append(signed.signer)
        return True

    def on_publish(self, now_ms: int, data: bytes) -> Outgoing:
        signed = self.own(data)
        if signed is None:
            return Outgoing()
        rng = self.ctx.rng
        choice = rng.randrange(3) if self.victims else 0
        if choice == 0:
            sig = bytearray(signed.signature)
            sig[rng.randrange(len(sig))] ^= 1 << rng.randrange(8)
            forged = replace(signed, signature=bytes(sig))
        else:
            victim = rng.choice(self.victims)
            if choice == 1:  # claims the victim's capacity, signed (validly) by us
                forged = sign(
                    replace(signed.record, node_id=victim), self.ctx.identity, signed.chain_id
                )
            else:  # names the victim as signer, but the signature is ours
                forged = replace(
                    signed, record=replace(signed.record, node_id=victim), signer=victim
                )
        bad = forged.encode()
        return Outgoing((bad,), (bad,))


@register_behaviour
class Replay(Behaviour):
    """Publishes its own announcement, and re-publishes an old one it captured from others."""

    name = "replay"

    def __init__(self, ctx: ByzContext) -> None:
        super().__init__(ctx)
        self.captured: deque[bytes] = deque(maxlen=CAPTURED_MAX)

    def on_input(self, now_ms: int, inp: Input) -> bool:
        if isinstance(inp, GossipIn) and inp.topic == TOPIC_CAPACITY:
            self.captured.append(inp.data)
        return True

    def on_publish(self, now_ms: int, data: bytes) -> Outgoing:
        if not self.captured:
            return Outgoing((data,))
        # the oldest half: stale (or expired) by now
        old = self.captured[self.ctx.rng.randrange(max(1, len(self.captured) // 2))]
        return Outgoing((data, old), (old,))


@register_behaviour
class LyingCapacity(Behaviour):
    """Announces GPUs it does not have, correctly signed. Honest books accept it: nothing in
    gossip alone can tell a lie from the truth (committee probes and challenge jobs, later,
    can)."""

    name = "lying_capacity"
    detectable = False
    LIE = (GpuSpec("H100", 8, 81_920),)

    def on_publish(self, now_ms: int, data: bytes) -> Outgoing:
        signed = self.own(data)
        if signed is None:
            return Outgoing((data,))
        lie = replace(signed.record, gpus=self.LIE, free_gpus=8)
        return Outgoing((sign(lie, self.ctx.identity, signed.chain_id).encode(),))
