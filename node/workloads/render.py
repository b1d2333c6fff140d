"""Render: one tile of a ray-marched scene (seeded spheres on a checkered plane, soft
shadows), returned as PNG bytes.

The image is W x H; a tile is the rectangle (x0, y0, w, h) of it. Each pixel is a pure
function of (scene seed, W, H, x, y): rays are marched a fixed number of steps with masks
instead of early exits, so a pixel never depends on its neighbours and tiles rendered
anywhere stitch into exactly the pixels of the whole image. Only correctly rounded float64
operations are used (+, -, *, /, sqrt, floor, min, max), never exp or pow, whose vectorised
and GPU versions differ in the last bits, so the 8-bit pixels are the same on any machine
with IEEE float64 (a colour landing within an ulp of a half-step between two byte values is
the one place two honest machines could differ; see `canonical`).

The digest is taken over the pixels (shape h x w x 3, uint8), not over the PNG bytes, whose
compression could differ with the zlib version. Rendering goes row by row; the deadline is
checked after each row.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.workloads import SEED_MAX, Clock, InvalidParams, WorkloadResult, check_int, rng
from node.workloads.canonical import array_digest

SIDE_MAX = 4096
TILE_SIDE_MAX = 512
SPHERES_MAX = 16
MARCH_STEPS = 96
SHADOW_STEPS = 32
T_MAX = 40.0
HIT_EPS = 1e-3
SHADOW_K = 8.0
_LIGHT = (0.6, 0.8, -0.45)
_L_NORM = math.sqrt(sum(c * c for c in _LIGHT))
LIGHT = tuple(c / _L_NORM for c in _LIGHT)
CAMERA = (0.0, 1.2, -4.5)
FOCAL = 1.6

Vec = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]


@dataclass(frozen=True)
class RenderParams:
    seed: int
    width: int
    height: int
    x0: int
    y0: int
    w: int
    h: int
    spheres: int = 4

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, SEED_MAX)
        check_int("width", self.width, 1, SIDE_MAX)
        check_int("height", self.height, 1, SIDE_MAX)
        check_int("x0", self.x0, 0, self.width - 1)
        check_int("y0", self.y0, 0, self.height - 1)
        check_int("w", self.w, 1, TILE_SIDE_MAX)
        check_int("h", self.h, 1, TILE_SIDE_MAX)
        check_int("spheres", self.spheres, 1, SPHERES_MAX)
        if self.x0 + self.w > self.width:
            raise InvalidParams("w", f"tile ends at x={self.x0 + self.w} > width {self.width}")
        if self.y0 + self.h > self.height:
            raise InvalidParams("h", f"tile ends at y={self.y0 + self.h} > height {self.height}")

    def encode(self) -> bytes:
        fields = (self.seed, self.width, self.height, self.x0, self.y0, self.w, self.h)
        return b"gpumesh/render/v1" + struct.pack("<8Q", *fields, self.spheres)


@dataclass(frozen=True)
class Scene:
    centres: npt.NDArray[np.float64]  # (k, 3)
    radii: npt.NDArray[np.float64]  # (k,)
    colours: npt.NDArray[np.float64]  # (k, 3)


def scene(seed: int, spheres: int) -> Scene:
    """Spheres resting on the plane y = 0, drawn from the seed."""
    gen = rng(seed)
    radii = gen.uniform(0.3, 0.9, size=spheres)
    xs = gen.uniform(-2.5, 2.5, size=spheres)
    zs = gen.uniform(-0.5, 3.0, size=spheres)
    centres = np.stack([xs, radii, zs], axis=1)
    colours = gen.uniform(0.15, 0.95, size=(spheres, 3))
    return Scene(centres=centres, radii=radii, colours=colours)


def _sdf(sc: Scene, p: Vec) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """Distance to the nearest surface and its id (0 the plane, i + 1 sphere i)."""
    px, py, pz = p
    dists = [py]
    for (cx, cy, cz), r in zip(sc.centres, sc.radii, strict=True):
        dx, dy, dz = px - cx, py - cy, pz - cz
        dists.append(np.sqrt(dx * dx + dy * dy + dz * dz) - r)
    stacked = np.stack(dists)
    ids = np.argmin(stacked, axis=0)
    return np.take_along_axis(stacked, ids[None, :], axis=0)[0], ids


def _offset(p: Vec, axis: int, e: float) -> Vec:
    x, y, z = p
    return (x + e, y, z) if axis == 0 else (x, y + e, z) if axis == 1 else (x, y, z + e)


def _row(sc: Scene, params: RenderParams, y: int) -> npt.NDArray[np.uint8]:
    xs = np.arange(params.x0, params.x0 + params.w, dtype=np.float64)
    width, height = float(params.width), float(params.height)
    u = (2.0 * (xs + 0.5) - width) / height
    v = np.full_like(u, (height - 2.0 * (y + 0.5)) / height)
    dx, dy, dz = u, v - 0.25, np.full_like(u, FOCAL)
    norm = np.sqrt(dx * dx + dy * dy + dz * dz)
    d = (dx / norm, dy / norm, dz / norm)
    o = CAMERA

    t = np.zeros_like(u)
    hit = np.zeros(u.shape, dtype=bool)
    active = np.ones(u.shape, dtype=bool)
    for _ in range(MARCH_STEPS):
        p = (o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2])
        dist, _ids = _sdf(sc, p)
        now = active & (dist < HIT_EPS)
        hit |= now
        active &= ~now
        t = np.where(active, t + dist, t)
        active &= t < T_MAX

    p = (o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2])
    _dist, ids = _sdf(sc, p)
    e = 1e-4
    grads = []
    for axis in range(3):
        plus = _offset(p, axis, e)
        minus = _offset(p, axis, -e)
        grads.append(_sdf(sc, plus)[0] - _sdf(sc, minus)[0])
    gn = np.sqrt(grads[0] ** 2 + grads[1] ** 2 + grads[2] ** 2)
    gn = np.where(gn > 0, gn, 1.0)
    n = (grads[0] / gn, grads[1] / gn, grads[2] / gn)
    diffuse = np.maximum(n[0] * LIGHT[0] + n[1] * LIGHT[1] + n[2] * LIGHT[2], 0.0)

    # Soft shadow (penumbra from the closest miss along the shadow ray), fixed step count.
    base = (p[0] + n[0] * 2e-3, p[1] + n[1] * 2e-3, p[2] + n[2] * 2e-3)
    shade = np.ones_like(u)
    st = np.full_like(u, 0.02)
    for _ in range(SHADOW_STEPS):
        q = (base[0] + LIGHT[0] * st, base[1] + LIGHT[1] * st, base[2] + LIGHT[2] * st)
        hd, _ = _sdf(sc, q)
        live = st < 12.0
        shade = np.where(live, np.minimum(shade, SHADOW_K * hd / st), shade)
        st = st + np.clip(hd, 0.02, 0.5)
    shade = np.clip(shade, 0.0, 1.0)

    plane = ids == 0
    checker = (np.floor(p[0]) + np.floor(p[2])) % 2.0
    albedo = [np.where(plane, 0.35 + 0.4 * checker, 0.0) for _ in range(3)]
    for i in range(sc.radii.shape[0]):
        sel = ids == i + 1
        for ch in range(3):
            albedo[ch] = np.where(sel, sc.colours[i, ch], albedo[ch])
    light = 0.12 + 0.88 * diffuse * shade
    sky_mix = np.clip(0.5 + 0.5 * d[1], 0.0, 1.0)
    sky = (0.55 + 0.35 * sky_mix, 0.7 + 0.25 * sky_mix, 0.95 + 0.05 * sky_mix)
    rgb = [np.where(hit, albedo[ch] * light, sky[ch]) for ch in range(3)]
    out = np.stack([np.rint(np.sqrt(np.clip(c, 0.0, 1.0)) * 255.0) for c in rgb], axis=1)
    return out.astype(np.uint8)


def render_pixels(params: RenderParams, clock: Clock | None = None) -> npt.NDArray[np.uint8]:
    """The tile's pixels, h x w x 3 uint8, row by row with a deadline check after each."""
    sc = scene(params.seed, params.spheres)
    out = np.empty((params.h, params.w, 3), dtype=np.uint8)
    for row in range(params.h):
        out[row] = _row(sc, params, params.y0 + row)
        if clock is not None:
            clock.check()
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """8-bit RGB PNG, no filtering, zlib level 9: deterministic for a given zlib."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError("pixels must be an h x w x 3 uint8 array")
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def input_digest(params: RenderParams) -> str:
    return hashlib.sha256(params.encode()).hexdigest()


def run(params: RenderParams, *, deadline_s: float | None = None) -> WorkloadResult:
    """Render the tile on the CPU (numpy; the per-pixel work is branchy masks, which gain
    little on a GPU at tile sizes) and return its PNG; the digest is over the pixels."""
    clock = Clock(deadline_s)
    pixels = render_pixels(params, clock)
    return WorkloadResult(
        digest=array_digest(pixels),
        input_digest=input_digest(params),
        backend="numpy",
        runtime_ms=clock.runtime_ms(),
        output=encode_png(pixels),
    )
