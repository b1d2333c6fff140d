"""Content-addressed job inputs: stored under their SHA-256, moved between nodes over a direct
stream (`PROTOCOL_BLOB`), and accepted only when the bytes hash to the name asked for.

A submitter uploads an input (say, a network's weights) to its own node (`POST /blob`) and
names it in `SubmitJob.inputs` by hash. A replica that lacks it asks its peers one by one;
whatever comes back is checked before it is stored, so a peer can withhold an input but never
substitute one. Files are written to a temporary name, fsync'ed and renamed: a crash leaves
either the whole blob or none.

Weights travel as an `.npz` of integer arrays `w0, b0, w1, b1, ...` (`weights_to_blob`): plain
arrays, loaded without pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from node.workloads.inference import Weights
from p2p.errors import DecodeError

PROTOCOL_BLOB = "/gpumesh/blob/1"
BLOB_BYTES_MAX = 3 * 1024 * 1024
"""Below the transport's 4 MiB request limit."""
LAYERS_MAX = 16


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: bytes) -> Path:
        return self.root / f"{digest.hex()}.bin"

    def get(self, digest: bytes) -> bytes | None:
        try:
            data = self._path(digest).read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).digest() == digest else None

    def put(self, data: bytes) -> bytes:
        """Store `data`; returns its SHA-256 (its name). ValueError if it is too large."""
        if len(data) > BLOB_BYTES_MAX:
            raise ValueError(f"a blob holds at most {BLOB_BYTES_MAX} bytes, got {len(data)}")
        digest = hashlib.sha256(data).digest()
        self._write(digest, data)
        return digest

    def accept(self, digest: bytes, data: bytes) -> bool:
        """Store bytes a peer sent for `digest` if, and only if, they hash to it."""
        if len(data) > BLOB_BYTES_MAX or hashlib.sha256(data).digest() != digest:
            return False
        self._write(digest, data)
        return True

    def _write(self, digest: bytes, data: bytes) -> None:
        """Durably, under its name; each writer has its own temporary file, since two jobs
        (or a job and an upload) may store the same blob at once."""
        path = self._path(digest)
        if path.exists():
            return
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def weights_to_blob(weights: Weights) -> bytes:
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {}
    for i, (w, b) in enumerate(weights):
        arrays[f"w{i}"] = np.asarray(w, dtype=np.int64)
        arrays[f"b{i}"] = np.asarray(b, dtype=np.int64)
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def weights_from_blob(data: bytes) -> Weights:
    """The layers of an .npz weights blob; DecodeError if it is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = set(npz.files)
            layers = []
            for i in range(LAYERS_MAX + 1):
                if f"w{i}" not in names:
                    break
                w, b = npz[f"w{i}"], npz[f"b{i}"]
                layers.append((w.astype(np.float32), b.astype(np.float32)))
    except (ValueError, OSError, KeyError, EOFError) as exc:
        raise DecodeError(f"not a weights blob: {exc}") from None
    if not layers or len(names) != 2 * len(layers):
        raise DecodeError("a weights blob holds w0, b0, w1, b1, ... and nothing else")
    return tuple(layers)


__all__ = [
    "BLOB_BYTES_MAX",
    "PROTOCOL_BLOB",
    "BlobStore",
    "weights_from_blob",
    "weights_to_blob",
]
