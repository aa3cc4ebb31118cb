"""pytest fixtures the conformance classes (:mod:`xrdct_dask.testing.conformance`) use.

A pytest plugin: name it in your ``conftest.py`` to run the classes on your own engine::

    pytest_plugins = ["xrdct_dask.testing.fixtures"]

(the project's own ``tests/conftest.py`` does).  Every fixture makes its data in pytest's tmp
dirs with the project's simulator; nothing is downloaded.  Needs the ``test`` extra
(``pip install "xrdct-dask[test]"``).

Fixtures
--------
rng : numpy Generator, seed 12345, new for every test.
sim_scan : :class:`~xrdct_dask.simulate.SimulatedScan` of 2 slices x 32 angles x 24
    steps (1536 CBF frames of the 8x8-binned Pilatus, 209 x 184 pixels, snake order), made once
    per session (~10 s).
small_ai : pyFAI AzimuthalIntegrator of that binned detector (the simulator's geometry).
shared_data_dir : folder of real detector files (``$XRDCT_SHARED_DATA``; None where unset);
    override it in a conftest to point elsewhere.
real_cbf : the real Pilatus 2M frame ``pilatus2m_l-cyst_00001.cbf`` in ``shared_data_dir``;
    the test is skipped, saying where it looked, when the file is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from xrdct_dask.simulate import make_integrator, simulate_scan

REAL_CBF_NAME = "pilatus2m_l-cyst_00001.cbf"


@pytest.fixture()
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def sim_scan(tmp_path_factory):
    """A small simulated scan (2 slices x 32 angles x 24 steps, binned detector, snake order)."""

    return simulate_scan(tmp_path_factory.mktemp("scan"), nz=2, nomega=32, nx=24, seed=1)


@pytest.fixture(scope="session")
def small_ai():

    return make_integrator("small")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path | None:
    folder = os.environ.get("XRDCT_SHARED_DATA")
    return Path(folder) if folder else None


@pytest.fixture(scope="session")
def real_cbf(shared_data_dir) -> Path:
    """The Pilatus 2M frame of ``shared_data_dir`` (skipped where it is absent)."""
    if shared_data_dir is None:
        pytest.skip(f"real detector frame {REAL_CBF_NAME} not available: set XRDCT_SHARED_DATA")
    p = Path(shared_data_dir) / REAL_CBF_NAME
    if not p.is_file():
        pytest.skip(f"real detector frame not available at {p} (set XRDCT_SHARED_DATA)")
    return p
