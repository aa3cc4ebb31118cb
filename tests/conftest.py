"""Shared fixtures: simulated scans (made once per session, in tmp dirs) and the real CBF frame."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XRDCT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def plan_cache(tmp_path_factory):
    """The suite's integration plans are kept in a tmp folder, not the user's ~/.cache (the workers
    of the suite's clusters, started later, inherit the variable)."""
    folder = tmp_path_factory.mktemp("plan-cache")
    old = os.environ.get("XRDCT_CACHE_DIR")
    os.environ["XRDCT_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("XRDCT_CACHE_DIR", None)
    else:
        os.environ["XRDCT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def real_cbf() -> Path:
    """The Pilatus 2M frame from ../shared/data (skipped where that folder is absent)."""
    p = SHARED_DATA / "pilatus2m_l-cyst_00001.cbf"
    if not p.is_file():
        pytest.skip(f"real detector frame not available at {p} (set XRDCT_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def sim_scan(tmp_path_factory):
    """A small simulated scan (2 slices x 32 angles x 24 steps, binned detector, snake order)."""
    from xrdct_dask.testing.synthetic import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("scan"), nz=2, nomega=32, nx=24, seed=1)


@pytest.fixture(scope="session")
def small_ai():
    from xrdct_dask.testing.synthetic import make_integrator

    return make_integrator("small")


@pytest.fixture()
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded local worker processes, bound to localhost, shared by a module's tests."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as c:
        yield c
