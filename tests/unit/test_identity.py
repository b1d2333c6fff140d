"""Identities (ed25519 keys and their libp2p peer ids) and key files on disk."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.identity import (
    Identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
    short_peer,
)
from p2p.keyfile import KEY_FILE_TAG, KeyFileError, load_key_file, write_key_file

keys = st.binary(min_size=32, max_size=32)

# ---------------------------------------------------------------------------------------------
# Peer ids


@settings(max_examples=200, deadline=None)
@given(keys)
def test_peer_id_round_trips(public_key: bytes) -> None:
    peer_id = peer_id_from_public_key(public_key)
    assert peer_id.startswith("12D3KooW")
    assert len(peer_id) == 52
    assert public_key_from_peer_id(peer_id) == public_key


@settings(max_examples=100, deadline=None)
@given(keys, keys)
def test_distinct_keys_have_distinct_peer_ids(a: bytes, b: bytes) -> None:
    assert (peer_id_from_public_key(a) == peer_id_from_public_key(b)) == (a == b)


ZERO_KEY_PEER_ID = "12D3KooW9pNAk8aiBuGVQtWRdbkLmo5qVL3e2h5UxbN2Nz9ttwiw"


@pytest.mark.parametrize(
    ("public_key", "peer_id"),
    [
        (bytes(32), ZERO_KEY_PEER_ID),
        (bytes(range(32)), "12D3KooW9pP4Seg3kZYhySpuVjn1RPdQBsUFZKiFxGMGQN5MeL6A"),
    ],
)
def test_peer_id_of_known_keys(public_key: bytes, peer_id: str) -> None:
    """Fixed vectors, computed with py-libp2p 0.8.1 (base58 of the identity multihash
    00 24 of the key's protobuf 08 01 12 20 <key>)."""
    assert peer_id_from_public_key(public_key) == peer_id
    assert public_key_from_peer_id(peer_id) == public_key


def test_peer_id_matches_libp2p() -> None:
    """Our pure computation agrees with py-libp2p's own (when it is installed)."""
    peer_id_mod = pytest.importorskip("libp2p.peer.id")
    ed25519 = pytest.importorskip("libp2p.crypto.ed25519")
    for i in range(5):
        ident = Identity.derive("test-identity", "libp2p", i)
        theirs = peer_id_mod.ID.from_pubkey(ed25519.Ed25519PublicKey.from_bytes(ident.public_key))
        assert theirs.to_base58() == ident.peer_id
        assert peer_id_mod.ID.from_base58(ident.peer_id).extract_public_key().to_bytes() \
            == ident.public_key


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33])
def test_peer_id_needs_a_32_byte_key(bad: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        peer_id_from_public_key(bad)


@pytest.mark.parametrize(
    "peer_id",
    [
        "",
        "1",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # an RSA (sha256 multihash) peer id
        ZERO_KEY_PEER_ID[:-1],  # one character short
        ZERO_KEY_PEER_ID + "2",  # one character long
        "12D3KooW0OIl",  # 0, O, I, l are not base58
        ZERO_KEY_PEER_ID[:-1] + "\u00e9",
        "1" + ZERO_KEY_PEER_ID,  # a leading zero byte more
    ],
)
def test_public_key_from_other_peer_ids_is_a_value_error(peer_id: str) -> None:
    with pytest.raises(ValueError):
        public_key_from_peer_id(peer_id)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_public_key_from_random_text_raises_only_value_error(text: str) -> None:
    try:
        key = public_key_from_peer_id(text)
    except ValueError:
        return
    assert peer_id_from_public_key(key) == text  # accepted only if it is the canonical form


# ---------------------------------------------------------------------------------------------
# Identities


def test_derive_is_deterministic() -> None:
    a = Identity.derive("sim", 42, 3)
    b = Identity.derive("sim", 42, 3)
    assert a == b and hash(a) == hash(b)
    assert a.seed == b.seed and a.peer_id == b.peer_id and a.public_key == b.public_key
    assert a.sign(b"m") == b.sign(b"m")  # ed25519 signatures are deterministic too


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sim", "node", "test"]), st.integers(0, 10**6)),
                min_size=2, max_size=8, unique=True))
def test_derive_is_distinct_per_label(labels: list[tuple[str, int]]) -> None:
    derived = [Identity.derive(*label) for label in labels]
    assert len({i.public_key for i in derived}) == len(labels)
    assert len({i.peer_id for i in derived}) == len(labels)


def test_derive_accepts_bytes_str_and_int_labels() -> None:
    assert Identity.derive(b"sim", 1) == Identity.derive("sim", 1)
    assert Identity.derive("sim", 1) != Identity.derive("sim", 2)
    assert Identity.derive("sim", 1) != Identity.derive("sim", 1, 0)
    assert Identity.derive("a", "b") != Identity.derive("ab")


def test_from_seed_and_generate() -> None:
    ident = Identity.derive("test-identity", 0)
    assert Identity.from_seed(ident.seed) == ident
    assert len(ident.seed) == 32 and len(ident.public_key) == 32
    assert Identity.generate() != Identity.generate()
    assert ident != "not an identity"


def test_signatures_verify_with_the_public_key() -> None:
    ident = Identity.derive("test-identity", 1)
    signature = ident.sign(b"hello")
    assert len(signature) == 64
    nacl.signing.VerifyKey(ident.public_key).verify(b"hello", signature)
    with pytest.raises(nacl.exceptions.BadSignatureError):
        nacl.signing.VerifyKey(ident.public_key).verify(b"hellO", signature)


def test_short_is_the_tail_of_the_peer_id() -> None:
    ident = Identity.derive("test-identity", 2)
    assert ident.short == ident.peer_id[-8:] == short_peer(ident.peer_id)
    assert len(ident.short) == 8


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32))
def test_repr_never_shows_the_secret(i: int) -> None:
    ident = Identity.derive("test-identity", "repr", i)
    for shown in (repr(ident), str(ident), f"{ident!r} {ident}", repr([ident])):
        assert ident.seed.hex() not in shown
        assert ident.seed.hex().upper() not in shown
        assert ident.peer_id in shown
    assert not hasattr(ident, "__dict__")  # __slots__: no stray attribute can hold it


# ---------------------------------------------------------------------------------------------
# Key files


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Even with umask 000 a key file must come out 0600."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_round_trip_and_mode(tmp_path: Path, permissive_umask: None) -> None:
    ident = Identity.derive("test-identity", "keyfile")
    path = tmp_path / "deep" / "dir" / "node.key"
    write_key_file(path, ident)
    assert mode_of(path) == 0o600
    assert path.read_text() == f"{KEY_FILE_TAG}\n{ident.seed.hex()}\n"
    loaded = load_key_file(path)
    assert loaded == ident and loaded.seed == ident.seed and loaded.peer_id == ident.peer_id


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    first, second = Identity.derive("test-identity", "a"), Identity.derive("test-identity", "b")
    path = tmp_path / "node.key"
    write_key_file(path, first)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key_file(path, second)
    assert load_key_file(path) == first  # untouched
    write_key_file(path, second, overwrite=True)
    assert load_key_file(path) == second


def test_overwrite_tightens_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_text("old")
    path.chmod(0o644)
    write_key_file(path, Identity.derive("test-identity", "c"), overwrite=True)
    assert mode_of(path) == 0o600
    assert load_key_file(path) == Identity.derive("test-identity", "c")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644, 0o666, 0o601])
def test_load_refuses_files_others_can_reach(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, Identity.derive("test-identity", "d"))
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 {path}") as info:
        load_key_file(path)
    assert f"{mode:04o}" in str(info.value)


def test_load_accepts_owner_only_modes(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    ident = Identity.derive("test-identity", "e")
    write_key_file(path, ident)
    for mode in (0o400, 0o600, 0o700):
        path.chmod(mode)
        assert load_key_file(path) == ident


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a gpumesh key file"),
        (b"\n\n", "not a gpumesh key file"),
        (b"00" * 32 + b"\n", "not a gpumesh key file"),  # seed without its tag
        (b"gpumesh-ed25519-seed-v0\n" + b"00" * 32 + b"\n", "not a gpumesh key file"),
        (f"{KEY_FILE_TAG}\n".encode(), "not a gpumesh key file"),  # tag, no seed
        (f"{KEY_FILE_TAG}\n{'00' * 32}\nextra\n".encode(), "not a gpumesh key file"),
        (f"{KEY_FILE_TAG}\n{'00' * 31}\n".encode(), "must be 32 bytes, got 31"),
        (f"{KEY_FILE_TAG}\n{'00' * 33}\n".encode(), "must be 32 bytes, got 33"),
        (f"{KEY_FILE_TAG}\n{'0' * 63}\n".encode(), "not hex"),
        (f"{KEY_FILE_TAG}\n{'zz' * 32}\n".encode(), "not hex"),
        (f"{KEY_FILE_TAG}\n".encode() + b"\xff\xfe" * 32 + b"\n", "not hex"),
        (b"\x00\x01\x02\xff" * 40, "not a gpumesh key file"),
    ],
)
def test_load_rejects_malformed_files(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=reason) as info:
        load_key_file(path)
    assert str(path) in str(info.value)


def test_load_tolerates_surrounding_whitespace(tmp_path: Path) -> None:
    ident = Identity.derive("test-identity", "f")
    path = tmp_path / "node.key"
    path.write_text(f"  {KEY_FILE_TAG}\r\n{ident.seed.hex().upper()}  \n\n")
    path.chmod(0o600)
    assert load_key_file(path) == ident


def test_load_of_a_missing_file_or_a_directory_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        load_key_file(tmp_path / "absent.key")
    folder = tmp_path / "folder.key"
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key_file(folder)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(KeyFileError):
        load_key_file(not_a_dir / "node.key")
