"""Inference: the forward pass of a small integer-quantised MLP on a seeded batch.

The network is int8-style: activations are integers 0..255, weights integers -31..31,
biases integers -1024..1024, all stored as float32. A layer computes pre = x @ W + b, whose
terms and partial sums are integers below 2048 * 255 * 31 + 1024 < 2**24, exact in float32
in any order, on any device; then act = clip(floor(pre / 2**shift), 0, 255) (ReLU and
requantisation in one; division by a power of two and floor are exact too). The last layer
returns its integer `pre` values as logits. So every honest backend gives the same bits and
the same digest, while one wrong weight changes the logits by whole units.

The weights are generated from `weights_seed` and identified by their content hash
(`weights_hash`): a job names the hash, and a run refuses weights that do not match it, so
a node cannot be fed other weights than the job's. The forward pass goes layer by layer and
batch chunk by chunk; the deadline is checked after each chunk.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.workloads import (
    SEED_MAX,
    Backend,
    Clock,
    InvalidParams,
    WeightsMismatch,
    WorkloadResult,
    check_int,
    gpu_backend,
    matmul_f32,
    rng,
    to_device,
)
from node.workloads.canonical import array_digest

WIDTH_MAX = 2048
"""Largest layer: keeps every sum exact in float32 (see the module docstring)."""
LAYERS_MAX = 8
BATCH_MAX = 4096
BATCH_CHUNK = 256
WEIGHT_MAX = 31
BIAS_MAX = 1024
ACT_MAX = 255
_HASH_DOMAIN = b"gpumesh/mlp-weights/v1"

Weights = tuple[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]], ...]
"""(W, b) per layer; W has shape (fan_in, fan_out)."""


@dataclass(frozen=True)
class InferenceParams:
    layer_sizes: tuple[int, ...]
    """Widths from input to output, e.g. (256, 512, 512, 10): len - 1 layers."""
    weights_seed: int
    weights_hash: str
    """Hex SHA-256 content hash of the weights (`weights_hash()`)."""
    input_seed: int
    batch: int

    def __post_init__(self) -> None:
        sizes = self.layer_sizes
        if not isinstance(sizes, tuple) or not 2 <= len(sizes) <= LAYERS_MAX + 1:
            raise InvalidParams("layer_sizes", f"must be a tuple of 2..{LAYERS_MAX + 1} widths")
        for i, size in enumerate(sizes):
            check_int(f"layer_sizes[{i}]", size, 1, WIDTH_MAX)
        check_int("weights_seed", self.weights_seed, 0, SEED_MAX)
        check_int("input_seed", self.input_seed, 0, SEED_MAX)
        check_int("batch", self.batch, 1, BATCH_MAX)
        h = self.weights_hash
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            raise InvalidParams("weights_hash", "must be 64 lowercase hex digits")

    def encode(self) -> bytes:
        sizes = struct.pack(f"<B{len(self.layer_sizes)}H", len(self.layer_sizes), *self.layer_sizes)
        seeds = struct.pack("<QQI", self.weights_seed, self.input_seed, self.batch)
        return b"gpumesh/inference/v1" + sizes + seeds + bytes.fromhex(self.weights_hash)


def shift_for(fan_in: int) -> int:
    """Requantisation shift: a sum of fan_in terms of typical size 255 * 18 spreads about
    sqrt(fan_in) times wider, so dividing by ~16 * sqrt(fan_in) keeps activations in range."""
    return 4 + (fan_in.bit_length() + 1) // 2


def generate_weights(seed: int, layer_sizes: tuple[int, ...]) -> Weights:
    gen = rng(seed)
    layers = []
    for fan_in, fan_out in itertools.pairwise(layer_sizes):
        w = gen.integers(-WEIGHT_MAX, WEIGHT_MAX, size=(fan_in, fan_out), endpoint=True)
        b = gen.integers(-BIAS_MAX, BIAS_MAX, size=fan_out, endpoint=True)
        layers.append((w.astype(np.float32), b.astype(np.float32)))
    return tuple(layers)


def weights_hash(weights: Weights) -> str:
    """Content hash: each layer's W and b as int64 little-endian with their shapes."""
    h = hashlib.sha256(_HASH_DOMAIN + struct.pack("<B", len(weights)))
    for w, b in weights:
        for arr in (w, b):
            ints = np.asarray(arr)
            if not np.array_equal(ints, np.rint(ints)):
                raise WeightsMismatch("weights must be integers")
            h.update(struct.pack("<B", ints.ndim))
            h.update(b"".join(struct.pack("<Q", d) for d in ints.shape))
            h.update(np.ascontiguousarray(ints, dtype="<i8").tobytes())
    return h.hexdigest()


def _check_weights(params: InferenceParams, weights: Weights) -> None:
    sizes = params.layer_sizes
    if len(weights) != len(sizes) - 1:
        raise WeightsMismatch(f"expected {len(sizes) - 1} layers, got {len(weights)}")
    for i, (w, b) in enumerate(weights):
        if w.shape != (sizes[i], sizes[i + 1]) or b.shape != (sizes[i + 1],):
            raise WeightsMismatch(f"layer {i} has shapes {w.shape}, {b.shape}")
        if np.max(np.abs(w)) > WEIGHT_MAX or np.max(np.abs(b)) > BIAS_MAX:
            raise WeightsMismatch(f"layer {i} has values out of range")
    got = weights_hash(weights)
    if got != params.weights_hash:
        raise WeightsMismatch(f"weights hash {got} != expected {params.weights_hash}")


def inputs(params: InferenceParams) -> npt.NDArray[np.float32]:
    gen = rng(params.input_seed)
    x = gen.integers(0, ACT_MAX, size=(params.batch, params.layer_sizes[0]), endpoint=True)
    return x.astype(np.float32)


def input_digest(params: InferenceParams) -> str:
    return hashlib.sha256(params.encode()).hexdigest()


def run(
    params: InferenceParams,
    weights: Weights | None = None,
    *,
    deadline_s: float | None = None,
    backend: Backend | None = None,
) -> WorkloadResult:
    """Forward pass; `weights` default to those generated from `weights_seed`, and in every
    case must hash to `weights_hash` (WeightsMismatch otherwise). Output: int logits."""
    clock = Clock(deadline_s)
    chosen = backend or gpu_backend()
    if weights is None:
        weights = generate_weights(params.weights_seed, params.layer_sizes)
    _check_weights(params, weights)
    x = inputs(params)
    clock.check()
    last = len(weights) - 1
    for i, (w, b) in enumerate(weights):
        w_dev = to_device(w, chosen)
        pre = np.empty((x.shape[0], w.shape[1]), dtype=np.float32)
        for start in range(0, x.shape[0], BATCH_CHUNK):
            pre[start : start + BATCH_CHUNK] = matmul_f32(
                x[start : start + BATCH_CHUNK], w_dev, chosen
            )
            clock.check()
        pre += b
        if i == last:
            x = pre
        else:
            scale = np.float32(2.0 ** -shift_for(w.shape[0]))
            x = np.clip(np.floor(pre * scale), 0, ACT_MAX).astype(np.float32)
    logits = x.astype(np.int64)
    return WorkloadResult(
        digest=array_digest(logits),
        input_digest=input_digest(params),
        backend=chosen,
        runtime_ms=clock.runtime_ms(),
        output=logits,
    )
