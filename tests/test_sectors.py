"""Azimuthal sectors: the (chi, q) integration on every engine (``SectorTests`` of
xrdct_dask.testing.conformance: pyFAI's integrate2d_ng, the real Pilatus 2M frame, the kept sums),
and what the plan itself must hold."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xrdct_dask.testing.conformance import SectorTests


class TestNumpySectors(SectorTests):
    engine = "numpy"

    @pytest.mark.slow
    def test_real_pilatus_frame_matches_pyfai(self, real_cbf):  # two full-split 2D matrices of 2.5M pixels: ~15 s
        super().test_real_pilatus_frame_matches_pyfai(real_cbf)


@pytest.mark.gpu
class TestCupySectors(SectorTests):
    engine = "cupy"


PLAN = """
from xrdct_dask.integrate.csr import build_plan
from xrdct_dask.simulate import make_integrator
plan = build_plan(make_integrator("small"), (209, 184), 300, npt_azim=12, azimuth_range=(-180, 180))
"""


def test_sector_plan_is_the_same_in_every_process(tmp_path):
    """A 2D plan is the same in every process (the workers rebuild or load the client's; a
    reprocess rebuilds it): pyFAI splits its first pixel in an uninitialised buffer (a new value
    each process, seen: 0.77/0.23, -0.005/1.005, 5e-24/1.0), the plan asks for that pixel again in
    a clean one.  Its coefficients are then fractions of the pixel: each in [0, 1], together 1 (1e-6)."""
    scope: dict = {}
    exec(PLAN, scope)
    plan = scope["plan"]
    there = subprocess.run([sys.executable, "-c", PLAN + "print(plan.checksum)"], capture_output=True, text=True,
                           check=True, cwd=tmp_path).stdout.split()[-1]
    assert there == plan.checksum
    first = int(plan.csr_indices.min())
    c = plan.csc_data[plan.csc_indptr[first]:plan.csc_indptr[first + 1]]
    assert c.min() >= 0 and abs(float(c.sum()) - 1) < 1e-6
