"""Workloads: determinism, tolerant canonical digests, tiles, PNGs, weights, deadlines."""

from __future__ import annotations

import io
import struct
import zlib

import matplotlib.image as mpimg
import numpy as np
import numpy.typing as npt
import pytest

from node.workloads import (
    DeadlineExceeded,
    InvalidParams,
    WeightsMismatch,
    gpu_backend,
    inference,
    matmul,
    render,
)
from node.workloads.canonical import agree, array_digest, bytes_digest, quantise

# canonical ------------------------------------------------------------------------------


def test_quantise_rounds_to_the_grid_and_refuses_non_finite() -> None:
    assert quantise(np.array([1.2, -2.5, 3.5, 0.24]), -2).tolist() == [5, -10, 14, 1]
    with pytest.raises(ValueError, match="NaN"):
        quantise(np.array([1.0, np.nan]), 0)
    with pytest.raises(ValueError, match="large"):
        quantise(np.array([1e30]), 0)


def test_digest_depends_on_values_and_shape_not_dtype() -> None:
    a = np.arange(12, dtype=np.float32)
    assert array_digest(a, 0) == array_digest(a.astype(np.float64), 0)
    assert array_digest(a, 0) != array_digest(a.reshape(3, 4), 0)
    assert array_digest(a.astype(np.int32)) == array_digest(a.astype(np.uint8))
    assert array_digest(a.astype(np.int32)) != array_digest(a, 0)  # kinds are separated
    with pytest.raises(ValueError, match="quantum_exp"):
        array_digest(a)
    assert bytes_digest(b"x") != bytes_digest(b"y")


def test_digest_absorbs_noise_below_half_a_quantum_on_grid_values() -> None:
    gen = np.random.default_rng(7)
    exact = gen.integers(-1000, 1000, size=(64, 64)).astype(np.float64) * 2.0**-4
    noisy = exact + gen.uniform(-0.49, 0.49, size=exact.shape) * 2.0**-4
    assert array_digest(noisy, -4) == array_digest(exact, -4)
    wrong = exact.copy()
    wrong[5, 9] += 2.0**-4
    assert array_digest(wrong, -4) != array_digest(exact, -4)


def test_agree_tolerates_one_quantum_anywhere_and_refuses_more() -> None:
    gen = np.random.default_rng(3)
    a = gen.normal(size=1000)
    b = a + gen.uniform(-1, 1, size=1000) * 0.99 * 2.0**-10  # off-grid, boundaries crossed
    assert agree(a, b, -10)
    c = a.copy()
    c[17] += 0.01
    assert not agree(a, c, -10)
    assert not agree(a, a[:-1], -10)


# matmul ---------------------------------------------------------------------------------


def test_matmul_is_deterministic_and_exact() -> None:
    p = matmul.MatmulParams(n=96, seed=11, block_rows=32)
    r1, r2 = matmul.run(p), matmul.run(p)
    assert r1.digest == r2.digest and r1.input_digest == r2.input_digest
    assert r1.backend in ("numpy", "torch", "cupy") and r1.runtime_ms >= 0
    a, b = matmul.inputs(p)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert isinstance(r1.output, np.ndarray)
    assert np.array_equal(r1.output, exact)
    assert matmul.run(matmul.MatmulParams(n=96, seed=12)).digest != r1.digest


def test_matmul_digest_is_the_same_for_reordered_and_noisy_honest_results() -> None:
    p = matmul.MatmulParams(n=80, seed=5, block_rows=80)
    ref = matmul.run(p)
    a, b = matmul.inputs(p)
    # another blocking (and another summation order: float64 over transposed blocks)
    reblocked = matmul.run(matmul.MatmulParams(n=80, seed=5, block_rows=7))
    assert reblocked.digest == ref.digest
    f64 = (b.T.astype(np.float64) @ a.T.astype(np.float64)).T.astype(np.float32)
    assert matmul.result_digest(f64) == ref.digest
    split = (a[:, :40] @ b[:40]) + (a[:, 40:] @ b[40:])  # a split-K reduction
    assert matmul.result_digest(split) == ref.digest
    noise = np.random.default_rng(1).uniform(-0.4, 0.4, size=f64.shape).astype(np.float32)
    assert matmul.result_digest(f64 + noise) == ref.digest
    wrong = f64.copy()
    wrong[3, 4] += 1
    assert matmul.result_digest(wrong) != ref.digest


# render ---------------------------------------------------------------------------------


def _png_pixels(png: bytes) -> npt.NDArray[np.uint8]:
    img: npt.NDArray[np.float32] = np.asarray(mpimg.imread(io.BytesIO(png), format="png"))
    return np.rint(img * 255).astype(np.uint8)


def test_render_tiles_stitch_into_the_full_image() -> None:
    width, height = 40, 30
    full = render.run(
        render.RenderParams(seed=9, width=width, height=height, x0=0, y0=0, w=40, h=30)
    )
    full_px = _png_pixels(full.output)  # type: ignore[arg-type]
    assert full_px.shape == (height, width, 3)
    stitched = np.zeros_like(full_px)
    for x0, w in ((0, 17), (17, 23)):
        for y0, h in ((0, 11), (11, 19)):
            tile = render.RenderParams(seed=9, width=width, height=height, x0=x0, y0=y0, w=w, h=h)
            stitched[y0 : y0 + h, x0 : x0 + w] = _png_pixels(render.run(tile).output)  # type: ignore[arg-type]
    assert np.array_equal(stitched, full_px)
    assert len(np.unique(full_px.reshape(-1, 3), axis=0)) > 20  # a picture, not a blank


def test_render_png_is_valid_deterministic_and_digested_over_pixels() -> None:
    p = render.RenderParams(seed=2, width=64, height=48, x0=8, y0=4, w=24, h=16)
    r1, r2 = render.run(p), render.run(p)
    assert r1.output == r2.output and r1.digest == r2.digest
    png = r1.output
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (24, 16)
    px = _png_pixels(png)
    assert r1.digest == array_digest(px)
    idat_len = struct.unpack(">I", png[33:37])[0]
    raw = zlib.decompress(png[41 : 41 + idat_len])
    assert len(raw) == 16 * (1 + 24 * 3)
    other = render.RenderParams(seed=3, width=64, height=48, x0=8, y0=4, w=24, h=16)
    assert render.run(other).digest != r1.digest


# inference ------------------------------------------------------------------------------

SIZES = (64, 128, 64, 10)


def _params(**overrides: object) -> inference.InferenceParams:
    weights = inference.generate_weights(4, SIZES)
    fields: dict[str, object] = {
        "layer_sizes": SIZES,
        "weights_seed": 4,
        "weights_hash": inference.weights_hash(weights),
        "input_seed": 8,
        "batch": 300,
    }
    fields.update(overrides)
    return inference.InferenceParams(**fields)  # type: ignore[arg-type]


def test_inference_is_deterministic_and_matches_a_float64_reference() -> None:
    p = _params()
    r1, r2 = inference.run(p), inference.run(p)
    assert r1.digest == r2.digest
    logits = r1.output
    assert isinstance(logits, np.ndarray) and logits.shape == (300, 10)
    x = inference.inputs(p).astype(np.float64)
    weights = inference.generate_weights(4, SIZES)
    for i, (w, b) in enumerate(weights):
        pre = x @ w.astype(np.float64) + b
        x = (
            pre
            if i == len(weights) - 1
            else np.clip(np.floor(pre / 2 ** inference.shift_for(w.shape[0])), 0, 255)
        )
    assert np.array_equal(logits, x.astype(np.int64))
    assert inference.run(_params(input_seed=9)).digest != r1.digest


def test_inference_refuses_weights_that_do_not_match_the_hash() -> None:
    with pytest.raises(WeightsMismatch, match="hash"):
        inference.run(_params(weights_hash="0" * 64))
    weights = inference.generate_weights(4, SIZES)
    w0 = weights[0][0].copy()
    w0[0, 0] += 1
    tampered = ((w0, weights[0][1]), *weights[1:])
    with pytest.raises(WeightsMismatch):
        inference.run(_params(), tampered)
    assert inference.run(_params(), weights).digest == inference.run(_params()).digest


# deadlines and validation ---------------------------------------------------------------


def test_deadline_raises_between_chunks() -> None:
    with pytest.raises(DeadlineExceeded):
        matmul.run(matmul.MatmulParams(n=256, seed=1, block_rows=1), deadline_s=0.0)
    with pytest.raises(DeadlineExceeded):
        render.run(
            render.RenderParams(seed=1, width=64, height=64, x0=0, y0=0, w=64, h=64), deadline_s=0.0
        )
    with pytest.raises(DeadlineExceeded):
        inference.run(_params(), deadline_s=0.0)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: matmul.MatmulParams(n=0, seed=1), "n"),
        (lambda: matmul.MatmulParams(n=4097, seed=1), "n"),
        (lambda: matmul.MatmulParams(n=True, seed=1), "n"),
        (lambda: matmul.MatmulParams(n=8, seed=-1), "seed"),
        (lambda: matmul.MatmulParams(n=8, seed=1, block_rows=0), "block_rows"),
        (lambda: render.RenderParams(seed=1, width=64, height=64, x0=60, y0=0, w=8, h=8), "w"),
        (lambda: render.RenderParams(seed=1, width=64, height=64, x0=0, y0=64, w=8, h=8), "y0"),
        (lambda: render.RenderParams(seed=1, width=8192, height=64, x0=0, y0=0, w=8, h=8), "width"),
        (
            lambda: render.RenderParams(
                seed=1, width=64, height=64, x0=0, y0=0, w=8, h=8, spheres=99
            ),
            "spheres",
        ),
        (lambda: _params(layer_sizes=(64, 0, 10)), "layer_sizes[1]"),
        (lambda: _params(layer_sizes=(64,)), "layer_sizes"),
        (lambda: _params(batch=100_000), "batch"),
        (lambda: _params(weights_hash="xyz"), "weights_hash"),
    ],
)
def test_invalid_params_name_the_field(make: object, field: str) -> None:
    with pytest.raises(InvalidParams) as info:
        make()  # type: ignore[operator]
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_no_gpu_here_means_numpy() -> None:
    if gpu_backend() != "numpy":
        pytest.skip("a GPU backend is present")
    assert matmul.run(matmul.MatmulParams(n=8, seed=1)).backend == "numpy"
