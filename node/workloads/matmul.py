"""Matrix multiplication: C = A @ B for seeded n x n float32 matrices.

The entries of A and B are integers in -63..63 stored as float32. Every product is at most
63 * 63 = 3969 in magnitude and every partial sum of up to 4096 of them at most 16,257,024,
below 2**24: all are integers float32 holds exactly. So C is exact whatever the summation
order, blocking, FMA use or device (TF32 rounds inputs to 10-bit mantissas, which these
small integers survive), and every honest backend returns the same bits. The work is still
real: n**3 multiply-adds at full float32 speed (137 GFLOP at n = 4096).

C is computed in blocks of rows; the deadline is checked between blocks.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.workloads import (
    SEED_MAX,
    Backend,
    Clock,
    WorkloadResult,
    check_int,
    gpu_backend,
    matmul_f32,
    rng,
    to_device,
)
from node.workloads.canonical import array_digest

N_MAX = 4096
"""Largest side: 3 * 64 MiB of float32 and exact sums (see the module docstring)."""
ENTRY_MAX = 63
BLOCK_ROWS_MAX = 4096
QUANTUM_EXP = 0
"""Results are integers: a grid of 1 keeps them exactly, and puts any honest noise (there
is none by construction) half a unit away from a rounding boundary."""


@dataclass(frozen=True)
class MatmulParams:
    n: int
    seed: int
    block_rows: int = 256
    """Rows of C per chunk: the granularity of deadline checks. Never changes the result."""

    def __post_init__(self) -> None:
        check_int("n", self.n, 1, N_MAX)
        check_int("seed", self.seed, 0, SEED_MAX)
        check_int("block_rows", self.block_rows, 1, BLOCK_ROWS_MAX)

    def encode(self) -> bytes:
        """The parameters that determine the inputs (block_rows does not)."""
        return b"gpumesh/matmul/v1" + struct.pack("<QQ", self.n, self.seed)


def inputs(params: MatmulParams) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A and B, drawn from the seed."""
    gen = rng(params.seed)
    shape = (params.n, params.n)
    a = gen.integers(-ENTRY_MAX, ENTRY_MAX, size=shape, endpoint=True, dtype=np.int8)
    b = gen.integers(-ENTRY_MAX, ENTRY_MAX, size=shape, endpoint=True, dtype=np.int8)
    return a.astype(np.float32), b.astype(np.float32)


def input_digest(params: MatmulParams) -> str:
    """Content address of the inputs: they are a pure function of (n, seed)."""
    return hashlib.sha256(params.encode()).hexdigest()


def result_digest(c: npt.ArrayLike) -> str:
    return array_digest(np.asarray(c, dtype=np.float32), QUANTUM_EXP)


def run(
    params: MatmulParams, *, deadline_s: float | None = None, backend: Backend | None = None
) -> WorkloadResult:
    """Compute C = A @ B block by block; raise DeadlineExceeded past the deadline."""
    clock = Clock(deadline_s)
    chosen = backend or gpu_backend()
    a, b = inputs(params)
    clock.check()
    b_dev = to_device(b, chosen)
    c = np.empty((params.n, params.n), dtype=np.float32)
    for start in range(0, params.n, params.block_rows):
        stop = min(start + params.block_rows, params.n)
        c[start:stop] = matmul_f32(a[start:stop], b_dev, chosen)
        clock.check()
    return WorkloadResult(
        digest=result_digest(c),
        input_digest=input_digest(params),
        backend=chosen,
        runtime_ms=clock.runtime_ms(),
        output=c,
    )
