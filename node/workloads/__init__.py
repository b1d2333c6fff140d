"""Workloads a node runs for the market: fixed kinds of computation with bounded parameters.

No arbitrary code runs on an operator's machine: a job names one of these kinds (matmul,
render, inference) and gives validated parameters; everything else is our code. Inputs are
generated from a seed (numpy's PCG64) and results are content-addressed (see `canonical`),
so any node can re-run a job and check a digest. Runtimes are measured, and each workload
checks its deadline between chunks of work and raises `DeadlineExceeded` when it has passed.

numpy runs on the CPU; when CuPy or torch is importable and a CUDA GPU is present, the heavy
arithmetic runs there and the result records which backend produced it. The workloads are
built so that every backend yields the same digest (see `canonical`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Backend = Literal["numpy", "torch", "cupy"]
SEED_MAX = 2**64 - 1


class InvalidParams(ValueError):
    """A workload parameter is out of range; `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class DeadlineExceeded(TimeoutError):
    """The work passed its deadline and was stopped between two chunks."""

    def __init__(self, deadline_s: float, elapsed_s: float) -> None:
        super().__init__(f"deadline of {deadline_s:.3f} s passed after {elapsed_s:.3f} s")
        self.deadline_s = deadline_s
        self.elapsed_s = elapsed_s


class WeightsMismatch(ValueError):
    """The weights offered do not hash to the content hash the job names."""


@dataclass(frozen=True)
class WorkloadResult:
    """What a run produced: the result's digest, the inputs' digest, the backend, the
    measured runtime, and the output itself (an array, or PNG bytes for a render)."""

    digest: str
    input_digest: str
    backend: Backend
    runtime_ms: int
    output: bytes | npt.NDArray[Any]


class Clock:
    """Elapsed time since a run started, checked against its deadline between chunks."""

    def __init__(self, deadline_s: float | None) -> None:
        if deadline_s is not None and not deadline_s >= 0:
            raise InvalidParams("deadline_s", "must be a non-negative number of seconds")
        self.deadline_s = deadline_s
        self._start = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._start

    def check(self) -> None:
        """Raise DeadlineExceeded if the deadline has passed."""
        if self.deadline_s is not None:
            elapsed = self.elapsed_s()
            if elapsed > self.deadline_s:
                raise DeadlineExceeded(self.deadline_s, elapsed)

    def runtime_ms(self) -> int:
        return round(self.elapsed_s() * 1000)


def check_int(field: str, value: object, lo: int, hi: int) -> int:
    """`value` if it is an int (not a bool) in lo..hi, else InvalidParams naming `field`."""
    if type(value) is not int:
        raise InvalidParams(field, f"must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidParams(field, f"must be {lo}..{hi}, got {value}")
    return value


def rng(seed: int) -> np.random.Generator:
    """The one generator every workload draws its inputs from."""
    return np.random.Generator(np.random.PCG64(seed))


@cache
def gpu_backend() -> Backend:
    """ "cupy" or "torch" when importable with a CUDA device present, else "numpy".

    Import failures of any kind (missing, broken driver) fall back to numpy: a GPU library
    that cannot start is the same as none."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy"
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except Exception:
        pass
    return "numpy"


def matmul_f32(a: npt.NDArray[np.float32], b: Any, backend: Backend) -> npt.NDArray[np.float32]:
    """a @ b in float32 on `backend`, returned as a numpy array. `b` may already live on the
    device (see `to_device`). TF32 is switched off for torch: inputs are exact either way
    (small integers), but accumulation must stay float32."""
    if backend == "numpy":
        return np.asarray(a @ b, dtype=np.float32)
    if backend == "cupy":
        import cupy

        return np.asarray(cupy.asnumpy(cupy.asarray(a) @ to_device(b, backend)), np.float32)
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    out = torch.from_numpy(np.ascontiguousarray(a)).cuda() @ to_device(b, backend)
    return np.asarray(out.cpu().numpy(), dtype=np.float32)


def to_device(x: Any, backend: Backend) -> Any:
    """Move a numpy array to the backend's device once (a no-op for numpy and for arrays
    already there)."""
    if backend == "numpy" or not isinstance(x, np.ndarray):
        return x
    if backend == "cupy":
        import cupy

        return cupy.asarray(x)
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).cuda()


__all__ = [
    "Backend",
    "Clock",
    "DeadlineExceeded",
    "InvalidParams",
    "WeightsMismatch",
    "WorkloadResult",
    "check_int",
    "gpu_backend",
    "rng",
]
