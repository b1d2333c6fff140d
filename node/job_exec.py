"""From a committed job's terms to a run of one of our workloads, and back to bytes.

`SubmitJob.params` carries a workload's parameters as a canonical msgpack array (our codec:
integers and bytes only, one encoding per value), so the ledger can hold them opaquely and
every replica decodes the same thing. `execute` runs the workload with the job's deadline
and returns the canonical result digest (32 bytes, what the replica commits to) and the
result array as `.npy` bytes: the form results are stored, served and fetched in, because
the digest is over that array and anyone holding the bytes can check them
(`output_digest`) without trusting whoever sent them. A render tile's PNG is made from the
array when someone asks for a picture.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from node.blobs import weights_from_blob
from node.workloads import Clock, InvalidParams, WeightsMismatch, inference, matmul, render
from node.workloads.canonical import array_digest
from p2p import codec
from p2p.errors import DecodeError

Spec = matmul.MatmulParams | render.RenderParams | inference.InferenceParams
OUTPUT_BYTES_MAX = 3 * 1024 * 1024
"""Largest result we store and serve: below the transport's 4 MiB request limit."""


class JobParamsError(ValueError):
    """A job's parameters do not decode to a valid workload; says which and why."""


def encode_params(spec: Spec) -> bytes:
    """The canonical bytes for `SubmitJob.params`."""
    if isinstance(spec, matmul.MatmulParams):
        return codec.pack([spec.n, spec.seed])
    if isinstance(spec, render.RenderParams):
        s = spec
        return codec.pack([s.seed, s.width, s.height, s.x0, s.y0, s.w, s.h, s.spheres])
    return codec.pack(
        [
            list(spec.layer_sizes),
            spec.weights_seed,
            bytes.fromhex(spec.weights_hash),
            spec.input_seed,
            spec.batch,
        ]
    )


def decode_params(kind: str, data: bytes) -> Spec:
    """The workload parameters of a job of `kind`; JobParamsError if they are not valid."""
    try:
        raw = codec.unpack(data, max_bytes=512)
        if not isinstance(raw, list):
            raise JobParamsError(f"{kind} parameters must be an array")
        fields: list[Any] = raw  # each value is checked by the workload's own params
        if kind == "matmul":
            n, seed = fields
            return matmul.MatmulParams(n=n, seed=seed)
        if kind == "render":
            seed, width, height, x0, y0, w, h, spheres = fields
            return render.RenderParams(seed, width, height, x0, y0, w, h, spheres)
        if kind == "inference":
            sizes, weights_seed, weights_hash, input_seed, batch = fields
            if not isinstance(sizes, list) or not isinstance(weights_hash, bytes):
                raise JobParamsError("inference: layer sizes must be an array, hash bytes")
            return inference.InferenceParams(
                tuple(sizes), weights_seed, weights_hash.hex(), input_seed, batch
            )
    except (DecodeError, InvalidParams, ValueError, TypeError) as exc:
        if isinstance(exc, JobParamsError):
            raise
        raise JobParamsError(f"{kind} parameters: {exc}") from None
    raise JobParamsError(f"unknown job kind {kind!r}")


@dataclass(frozen=True)
class Executed:
    digest: bytes
    """The canonical result digest (32 bytes): what the replica commits to."""
    runtime_ms: int
    backend: str
    output: bytes
    """The result array as .npy bytes."""


def _run(
    spec: Spec, deadline_s: float | None, inputs: Sequence[bytes] = ()
) -> tuple[str, int, str, npt.NDArray[Any]]:
    """(hex digest, runtime ms, backend, result array) of one run."""
    if inputs and not isinstance(spec, inference.InferenceParams):
        raise JobParamsError("only inference takes inputs (its weights)")
    if len(inputs) > 1:
        raise JobParamsError(f"inference takes one input (its weights), got {len(inputs)}")
    if isinstance(spec, render.RenderParams):
        # The tile's pixels, not its PNG: the digest is over the pixels (as render.run's).
        clock = Clock(deadline_s)
        pixels = render.render_pixels(spec, clock)
        return array_digest(pixels), clock.runtime_ms(), "numpy", pixels
    if isinstance(spec, matmul.MatmulParams):
        result = matmul.run(spec, deadline_s=deadline_s)
    else:
        weights = None
        if inputs:
            try:
                weights = weights_from_blob(inputs[0])
            except DecodeError as exc:
                raise JobParamsError(f"inference weights: {exc}") from None
        try:
            result = inference.run(spec, weights, deadline_s=deadline_s)
        except WeightsMismatch as exc:
            raise JobParamsError(f"inference weights: {exc}") from None
    assert not isinstance(result.output, bytes)
    return result.digest, result.runtime_ms, result.backend, result.output


def execute(
    kind: str, params: bytes, *, deadline_s: float | None = None, inputs: Sequence[bytes] = ()
) -> Executed:
    """Run the job's workload (DeadlineExceeded past `deadline_s`) on its input blobs, in the
    job's order (already hash-checked: node/blobs.py); JobParamsError for bad parameters or
    inputs. Blocking: call it from a worker thread."""
    digest, runtime_ms, backend, array = _run(decode_params(kind, params), deadline_s, inputs)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Executed(bytes.fromhex(digest), runtime_ms, backend, buffer.getvalue())


def load_output(data: bytes) -> npt.NDArray[Any]:
    """A stored or fetched result array; DecodeError if the bytes are not a plain .npy."""
    if len(data) > OUTPUT_BYTES_MAX:
        raise DecodeError(f"result of {len(data)} bytes exceeds {OUTPUT_BYTES_MAX}")
    try:
        array: npt.NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DecodeError(f"not a result array: {exc}") from None
    return array


def output_digest(kind: str, data: bytes) -> bytes:
    """The canonical digest of a result's bytes, computed as the workload computes it."""
    array = load_output(data)
    if kind == "matmul":
        return bytes.fromhex(matmul.result_digest(array))
    return bytes.fromhex(array_digest(array))
