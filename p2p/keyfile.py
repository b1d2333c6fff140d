"""Key files on disk: created 0600 with O_EXCL, refused if others can read them.

The format is two lines, a tag and the hex seed, so an operator can back it up by hand.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2p.identity import Identity

KEY_FILE_TAG = "gpumesh-ed25519-seed-v1"


class KeyFileError(Exception):
    """A key file that is missing, malformed, or readable by others; carries the path."""


def write_key_file(path: Path, identity: Identity, *, overwrite: bool = False) -> None:
    """Write `identity` to `path` with mode 0600; never replaces a key unless asked.

    The key is written and fsynced under a temporary name first, then linked (new key) or
    renamed (overwrite) into place, so a crash never leaves a truncated key behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path}: a key already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{KEY_FILE_TAG}\n{identity.seed.hex()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and fails if another writer got there first
    except FileExistsError:
        raise KeyFileError(f"{path}: a key already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key_file(path: Path) -> Identity:
    """Read a key file, refusing one that group or others can read or write."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no key file (create one with `gpumesh keys new`)") from None
    except OSError as exc:  # a parent that is a file, a directory we may not enter, ...
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(mode):04o} let others read the key; "
            f"run `chmod 600 {path}`"
        )
    try:
        lines = path.read_text(encoding="ascii", errors="replace").split()
    except OSError as exc:  # a directory, or a file we may not read
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror or exc}") from None
    if len(lines) != 2 or lines[0] != KEY_FILE_TAG:
        raise KeyFileError(f"{path}: not a gpumesh key file (expected tag {KEY_FILE_TAG})")
    try:
        seed = bytes.fromhex(lines[1])
    except ValueError:
        raise KeyFileError(f"{path}: the seed is not hex") from None
    if len(seed) != 32:
        raise KeyFileError(f"{path}: the seed must be 32 bytes, got {len(seed)}")
    return Identity.from_seed(seed)
