"""Job parameters on the wire, running a job from its committed terms, result bytes checked
against digests, and the node's result store."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from node.job_exec import (
    JobParamsError,
    decode_params,
    encode_params,
    execute,
    load_output,
    output_digest,
)
from node.job_runner import ResultStore, StoredResult
from node.workloads import DeadlineExceeded, inference, matmul, render
from p2p import codec
from p2p.errors import DecodeError

SIZES = (16, 32, 4)
SPECS = [
    ("matmul", matmul.MatmulParams(n=48, seed=3)),
    ("render", render.RenderParams(5, 64, 32, 16, 0, 16, 16)),
    (
        "inference",
        inference.InferenceParams(
            SIZES, 9, inference.weights_hash(inference.generate_weights(9, SIZES)), 4, 8
        ),
    ),
]


@pytest.mark.parametrize(("kind", "spec"), SPECS)
def test_params_round_trip_and_execution_matches_the_workload(kind: str, spec: object) -> None:
    data = encode_params(spec)  # type: ignore[arg-type]
    assert len(data) <= 512
    assert decode_params(kind, data) == spec
    done = execute(kind, data)
    assert len(done.digest) == 32 and done.backend in ("numpy", "torch", "cupy")
    assert output_digest(kind, done.output) == done.digest
    assert execute(kind, data).digest == done.digest  # deterministic


def test_execution_equals_the_reference_computation() -> None:
    spec = matmul.MatmulParams(n=40, seed=8)
    out = load_output(execute("matmul", encode_params(spec)).output)
    a, b = matmul.inputs(spec)
    assert np.array_equal(out, a @ b)
    tile = render.RenderParams(2, 32, 32, 0, 0, 8, 8)
    pixels = load_output(execute("render", encode_params(tile)).output)
    assert np.array_equal(pixels, render.render_pixels(tile))


def test_a_tampered_result_does_not_match_its_digest() -> None:
    kind, spec = SPECS[0]
    done = execute(kind, encode_params(spec))  # type: ignore[arg-type]
    array = load_output(done.output).copy()
    array[0, 0] += 1
    buffer = io.BytesIO()
    np.save(buffer, array)
    assert output_digest(kind, buffer.getvalue()) != done.digest
    with pytest.raises(DecodeError):
        output_digest(kind, b"not an array")
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError):  # object arrays would need pickle: refused
        load_output(pickled.getvalue())


@pytest.mark.parametrize(
    ("kind", "data", "needle"),
    [
        ("matmul", codec.pack([0, 1]), "n"),
        ("matmul", codec.pack([1]), "matmul"),
        ("matmul", codec.pack(5), "array"),
        ("render", codec.pack([1, 64, 64, 60, 0, 16, 16, 4]), "w"),
        ("inference", codec.pack([[16, 4], 1, b"short", 1, 1]), "weights_hash"),
        ("inference", codec.pack([5, 1, bytes(32), 1, 1]), "layer"),
        ("shader", codec.pack([1]), "unknown job kind"),
        ("matmul", b"\xc1", "matmul"),
    ],
)
def test_bad_params_are_refused_with_what_was_wrong(kind: str, data: bytes, needle: str) -> None:
    with pytest.raises(JobParamsError, match=needle):
        decode_params(kind, data)


def test_execution_stops_at_the_deadline() -> None:
    with pytest.raises(DeadlineExceeded):
        execute("matmul", encode_params(matmul.MatmulParams(n=1024, seed=1)), deadline_s=0.0)


def test_the_result_store_survives_reopening_and_ignores_half_written_results(
    tmp_path: Path,
) -> None:
    store = ResultStore(tmp_path / "results")
    job = bytes(range(32))
    assert store.get(job) is None and store.output(job) is None
    result = StoredResult(b"\x01" * 32, b"\x02" * 32, 1234, "numpy")
    store.put(job, result, b"array bytes")
    again = ResultStore(tmp_path / "results")
    assert again.get(job) == result and again.output(job) == b"array bytes"
    other = b"\x07" * 32
    (tmp_path / "results" / f"{other.hex()}.npy").write_bytes(b"partial")  # crashed before .json
    assert again.get(other) is None
    (tmp_path / "results" / f"{other.hex()}.json").write_text("{not json")
    assert again.get(other) is None


def test_blobs_are_named_by_hash_and_refuse_substitutes(tmp_path: Path) -> None:
    import hashlib

    from node.blobs import BLOB_BYTES_MAX, BlobStore

    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"weights")
    assert digest == hashlib.sha256(b"weights").digest()
    assert store.get(digest) == b"weights" and store.get(bytes(32)) is None
    other = BlobStore(tmp_path / "other")
    assert not other.accept(digest, b"something else")  # a peer cannot substitute
    assert other.get(digest) is None
    assert other.accept(digest, b"weights") and other.get(digest) == b"weights"
    (tmp_path / "other" / f"{digest.hex()}.bin").write_bytes(b"rotted")
    assert other.get(digest) is None  # bytes that no longer hash to the name are not served
    with pytest.raises(ValueError):
        store.put(b"x" * (BLOB_BYTES_MAX + 1))


def test_inference_runs_on_uploaded_weights_and_refuses_the_wrong_ones() -> None:
    from node.blobs import weights_from_blob, weights_to_blob

    weights = inference.generate_weights(21, SIZES)
    blob = weights_to_blob(weights)
    back = weights_from_blob(blob)
    assert inference.weights_hash(back) == inference.weights_hash(weights)
    spec = inference.InferenceParams(SIZES, 0, inference.weights_hash(weights), 4, 8)
    done = execute("inference", encode_params(spec), inputs=[blob])
    expected = inference.run(spec, weights)
    assert done.digest.hex() == expected.digest
    other = weights_to_blob(inference.generate_weights(22, SIZES))
    with pytest.raises(JobParamsError, match="hash"):
        execute("inference", encode_params(spec), inputs=[other])
    with pytest.raises(JobParamsError, match="weights blob"):
        execute("inference", encode_params(spec), inputs=[b"junk"])
    with pytest.raises(JobParamsError, match="only inference"):
        execute("matmul", encode_params(matmul.MatmulParams(n=8, seed=1)), inputs=[blob])
