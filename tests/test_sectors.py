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


def test_1d_is_unchanged_bit_for_bit_with_one_sector(sim_scan):
    """``npt_azim: 1`` is the 1D integration as it was, bit for bit: the plan's matrix is pyFAI's own
    1D CSR (``setup_sparse_integrator``, rows = radial bins, no permutation), the patterns of 40
    simulated frames (a drifting monitor, a missing frame) with the sums kept or not are those of an
    integrator made without the sector arguments, exactly; the store's arrays keep their 1D dims
    and chunks, and the workflow keys read 1D."""
    import numpy as np
    import scipy.sparse as sp

    from xrdct_dask.config import load_workflow
    from xrdct_dask.integrate import Integrator
    from xrdct_dask.integrate.csr import load_image, load_poni
    from xrdct_dask.io.source import open_source
    from xrdct_dask.pipeline.stages import Sizes
    from xrdct_dask.store import array_specs
    from xrdct_dask.store.budget import Layout

    ai, mask = load_poni(sim_scan.poni), load_image(sim_scan.mask)
    shape = (209, 184)
    plain = Integrator(ai, shape, 300, mask=mask, engine="numpy")
    one = Integrator(ai, shape, 300, mask=mask, engine="numpy", npt_azim=1, azimuth_range=None, keep_sums=True)
    assert plain.plan.azimuthal is None and one.plan.azimuthal is None and one.plan.pattern_shape == (300,)
    # pyFAI's 1D matrix with the plan's mask and splitting, its duplicates summed and zeros dropped as the plan does
    ref = ai.setup_sparse_integrator(shape, 300, mask=plain.plan.mask.reshape(shape), unit="q_nm^-1", split="full",
                                     algo="CSR", scale=True, empty=0.0)
    data, indices, indptr = ref.lut
    csr = sp.csr_matrix((data.astype(np.float32), indices.astype(np.int32), indptr.astype(np.int32)),
                        shape=(300, shape[0] * shape[1]))
    csr.sum_duplicates()
    csr.eliminate_zeros()
    for name, want in (("csr_data", csr.data), ("csr_indices", csr.indices), ("csr_indptr", csr.indptr)):
        np.testing.assert_array_equal(getattr(one.plan, name), want, err_msg=name)
    assert one.plan.checksum == plain.plan.checksum
    src = open_source(sim_scan.frames)
    idx = np.r_[np.arange(20), -1, np.arange(21, 40)]
    mon = np.linspace(0.9, 1.1, idx.size)
    a = plain.integrate_source(src, idx, mon)
    b = one.integrate_source(src, idx, mon)
    assert len(a) == 4 and len(b) == 5 and b[4].shape == (5, idx.size, 300)
    for k, what in enumerate(("intensity", "sigma", "status")):
        np.testing.assert_array_equal(b[k], a[k], err_msg=what)
    wf = load_workflow(sim_scan.workflow, {"integrate.npt_azim": 1})
    assert not wf.integrate.sums_kept and wf.integrate.chi_range is None and wf.texture.peaks == []
    lay = Layout(omega_chunk=8, q_chunk=50, q_sub=50, y_chunk=12, r_chunk=64, budget=2**26)
    sizes = Sizes.of(wf, nq=300, nr=0, layout=lay)
    assert (sizes.nchi, sizes.bins, sizes.sums, sizes.peaks) == (1, 300, False, 0)
    specs = {s.path: s for s in array_specs(nz=2, nomega=32, nx=24, nq=300, nr=0, layout=lay)}
    assert specs["reduced/intensity"].dims == ("z", "omega", "x", "q")
    assert specs["reduced/intensity"].chunks == (1, 8, 24, 50) and specs["recon/intensity"].chunks == (1, 12, 24, 50)
    assert not [p for p in specs if p.startswith(("texture/", "reduced/sum_", "reduced/count"))]
