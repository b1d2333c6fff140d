"""`make demo` end to end (`gpumesh demo`): a real 5-node swarm converges, 20 jobs of the three
kinds settle on two replicas each, and the render tiles come back stitched into one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.workloads import render
from sim_harness.demo_jobs import IMAGE_H, IMAGE_W, TILE
from tests.integration.cli import gpumesh

pytestmark = pytest.mark.slow


def test_the_demo_settles_every_job_and_stitches_the_tiles(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    done = gpumesh("demo", "--dir", str(root), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "20/20 jobs settled" in done.stdout
    for table in ("assignments, verdicts and payments", "GPU class prices", "measured uptime"):
        assert table in done.stdout
    png = (root / "render.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    # the stitched image is exactly the scene rendered whole, tile by tile
    whole = np.concatenate([
        np.concatenate([
            render.render_pixels(render.RenderParams(11, IMAGE_W, IMAGE_H, x, y, TILE, TILE))
            for x in range(0, IMAGE_W, TILE)
        ], axis=1)
        for y in range(0, IMAGE_H, TILE)
    ])  # fmt: skip
    assert png == render.encode_png(whole)
