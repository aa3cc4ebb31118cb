"""The integration plan (pyFAI's sparse matrix and corrections) is built once and shared.

Building it is the slow part of a worker's start; a plan of the same geometry, mask, dark, flat
and bins is loaded from the cache folder instead, equal array for array; any change of those
gives another file, so a stale plan is never used.
"""

from __future__ import annotations

import time

import numpy as np

from xrdct_dask.integrate.cache import cached_plan, plan_key
from xrdct_dask.integrate.csr import build_plan


def test_cached_plan_equals_a_fresh_build_and_loads_fast(small_ai, tmp_path):
    shape = small_ai.detector.max_shape
    mask = np.zeros(shape, bool)
    mask[:5] = True
    t = time.perf_counter()
    first = cached_plan(small_ai, shape, 300, "q_nm^-1", directory=tmp_path, mask=mask, polarization_factor=0.99)
    built = time.perf_counter() - t
    files = list(tmp_path.glob("plan-*.npz"))
    assert len(files) == 1
    t = time.perf_counter()
    again = cached_plan(small_ai, shape, 300, "q_nm^-1", directory=tmp_path, mask=mask, polarization_factor=0.99)
    loaded = time.perf_counter() - t
    fresh = build_plan(small_ai, shape, 300, "q_nm^-1", mask=mask, polarization_factor=0.99)
    for name in ("radial", "csr_data", "csr_indices", "csr_indptr", "csc_data", "csc_rows", "csc_indptr", "norm",
                 "mask", "static_sums"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fresh, name), err_msg=name)
    assert (again.shape, again.unit, again.split, again.checksum) == (fresh.shape, fresh.unit, fresh.split,
                                                                      fresh.checksum)
    assert first.checksum == again.checksum and loaded < built


def test_any_change_of_what_makes_the_plan_changes_its_key(small_ai):
    shape = small_ai.detector.max_shape
    base = plan_key(small_ai, shape, 300, "q_nm^-1")
    mask = np.zeros(shape, bool)
    mask[3, 3] = True
    dark = np.zeros(shape, np.float32)
    moved = small_ai.__class__(dist=small_ai.dist * 1.001, poni1=small_ai.poni1, poni2=small_ai.poni2,
                               rot1=small_ai.rot1, rot2=small_ai.rot2, detector=small_ai.detector,
                               wavelength=small_ai.wavelength)
    variants = [plan_key(small_ai, shape, 301, "q_nm^-1"), plan_key(small_ai, shape, 300, "2th_deg"),
                plan_key(small_ai, shape, 300, "q_nm^-1", mask=mask),
                plan_key(small_ai, shape, 300, "q_nm^-1", dark=dark),
                plan_key(small_ai, shape, 300, "q_nm^-1", polarization_factor=0.9),
                plan_key(small_ai, shape, 300, "q_nm^-1", split="bbox"), plan_key(moved, shape, 300, "q_nm^-1")]
    assert len({base, *variants}) == 1 + len(variants)
    assert plan_key(small_ai, shape, 300, "q_nm^-1") == base


def test_an_unwritable_or_damaged_cache_only_slows_the_start(small_ai, tmp_path):
    shape = small_ai.detector.max_shape
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    plan = cached_plan(small_ai, shape, 200, "q_nm^-1", directory=blocker)  # cannot keep it: still a plan
    assert plan.nbins == 200
    cached_plan(small_ai, shape, 200, "q_nm^-1", directory=tmp_path / "c")
    (f,) = (tmp_path / "c").glob("plan-*.npz")
    f.write_bytes(b"damaged")
    assert cached_plan(small_ai, shape, 200, "q_nm^-1", directory=tmp_path / "c").checksum == plan.checksum
