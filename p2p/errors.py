"""Typed errors for everything a peer can send us.

A peer's bad input is data, not a crash (DESIGN.md principle 6): decoders raise only these,
each carrying what was wrong, so callers can reject, penalise the sender and carry on.
"""


class DecodeError(ValueError):
    """Bytes from the wire that are not a valid record: malformed, oversized, unknown kind or
    version, wrongly typed, truncated, non-canonical, or for another chain."""


class BadSignature(DecodeError):
    """A well-formed envelope whose signature does not verify against its signer."""


class InvalidRecord(ValueError):
    """A record built locally with field values outside its schema: our own bug."""
