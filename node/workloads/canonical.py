"""Canonical digests of workload inputs and results.

A result is content-addressed by a SHA-256 over one byte layout: a domain tag, the kind of
the values, the quantum, the shape and the values themselves as little-endian int64. Floats
never enter the hash as floats: they are first quantised, that is divided by the quantum
2**quantum_exp and rounded to the nearest integer (ties to even). Two arrays therefore share
a digest exactly when they have the same shape and land on the same grid points.

Why the digest tolerates honest floating-point noise, and how much:

* Honest backends disagree only in the last bits: summation order (blocked or threaded
  reductions), fused multiply-add, float64 accumulation then a cast, GPU versus CPU kernels.
  For float32 results that is a relative error of order n * 2**-24 for an n-term sum.
* Quantising to a grid of step q = 2**quantum_exp absorbs any error below q/2 for a value
  that lies at least that far from a rounding boundary (a half-integer multiple of q). A
  value that sits within the error of a boundary can still round either way; for values
  spread evenly the chance per value is about 2 * error / q. A digest over millions of
  values cannot be tolerant everywhere, so our workloads are built to keep honest values
  *on* the grid: matmul multiplies small integers (every partial sum is an integer below
  2**24, exact in float32 in any order, with or without FMA, on any backend), inference is
  an integer-quantised network evaluated the same way, and a pixel's colour is computed
  with correctly rounded operations only (+, -, *, /, sqrt: no exp or pow, whose SIMD and
  GPU versions differ) before it is rounded to 8 bits.
* For results that are not exact by construction, `agree` is the verifier's comparison: it
  accepts values at most `max_quanta` grid steps apart, which never rejects an honest
  result whose error is below q, boundary or not.

A wrong result (a different seed, a skipped block, a wrong weight, garbage) moves values by
whole units or more, far beyond q, so its digest differs and `agree` refuses it. NaN and
infinities are refused outright: they are never an honest answer to our workloads.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import numpy.typing as npt

_ARRAY_DOMAIN = b"gpumesh/workload-array/v1"
_BYTES_DOMAIN = b"gpumesh/workload-bytes/v1"
QUANTUM_EXP_MIN = -60
QUANTUM_EXP_MAX = 60
_GRID_MAX = 2**62
"""Largest |value / quantum| that quantises: int64 with room to spare."""


def quantise(values: npt.ArrayLike, quantum_exp: int) -> npt.NDArray[np.int64]:
    """`values` divided by 2**quantum_exp and rounded to the nearest integer (ties to even).

    Scaling by a power of two is exact, so the only rounding is the one to the grid.
    Raises ValueError for NaN, infinities, or values too large for the grid."""
    if not QUANTUM_EXP_MIN <= quantum_exp <= QUANTUM_EXP_MAX:
        raise ValueError(f"quantum_exp must be {QUANTUM_EXP_MIN}..{QUANTUM_EXP_MAX}")
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("result holds NaN or infinity")
    scaled = np.ldexp(arr, -quantum_exp)
    if scaled.size and float(np.max(np.abs(scaled))) >= _GRID_MAX:
        raise ValueError("result too large for the quantisation grid")
    return np.rint(scaled).astype(np.int64)


def _layout(kind: bytes, quantum_exp: int, ints: npt.NDArray[np.int64]) -> bytes:
    header = struct.pack("<cbB", kind, quantum_exp, ints.ndim)
    shape = b"".join(struct.pack("<Q", d) for d in ints.shape)
    data = np.ascontiguousarray(ints, dtype="<i8").tobytes()
    return _ARRAY_DOMAIN + header + shape + data


def array_digest(values: npt.ArrayLike, quantum_exp: int | None = None) -> str:
    """Hex SHA-256 of an array in the canonical layout.

    Floating arrays need `quantum_exp` (they are quantised first); integer and boolean
    arrays are hashed as their exact values and must not pass one. The dtype's width and
    byte order never matter, only the values and the shape."""
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.floating):
        if quantum_exp is None:
            raise ValueError("a floating-point array needs a quantum_exp")
        layout = _layout(b"q", quantum_exp, quantise(arr, quantum_exp))
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if quantum_exp is not None:
            raise ValueError("integer arrays are hashed exactly; pass no quantum_exp")
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
            raise ValueError("integer values must fit in int64")
        layout = _layout(b"i", 0, arr.astype(np.int64))
    else:
        raise ValueError(f"cannot digest an array of dtype {arr.dtype}")
    return hashlib.sha256(layout).hexdigest()


def bytes_digest(data: bytes) -> str:
    """Hex SHA-256 of an opaque blob (a PNG, an encoded input), domain-separated."""
    return hashlib.sha256(_BYTES_DOMAIN + data).hexdigest()


def agree(a: npt.ArrayLike, b: npt.ArrayLike, quantum_exp: int, *, max_quanta: int = 1) -> bool:
    """Whether two float results are the same answer: same shape, and every pair of values
    at most `max_quanta` grid steps apart after quantisation. With max_quanta=1 an honest
    pair whose difference is below one quantum always agrees, wherever the boundaries lie."""
    qa, qb = quantise(a, quantum_exp), quantise(b, quantum_exp)
    if qa.shape != qb.shape:
        return False
    return bool(np.all(np.abs(qa - qb) <= max_quanta))
