"""Conformance test classes: one per engine contract, run on every engine (as zarr's StoreTests).

===========================  ==========================================  ==============================
class                        contract                                    oracle
===========================  ==========================================  ==============================
:class:`DecoderTests`        byte-offset payloads -> int32 pixels        fabio (``decByteOffset``,
                             (``io.decode`` / ``io.gpu_decode``)          ``fabio.open``)
:class:`IntegratorTests`     frames or payloads -> I(q), sigma(q)        pyFAI ``integrate1d_ng``,
                             (``integrate.Integrator``)                  ``sigma_clip_ng``, ``medfilt1d_ng``
:class:`SectorTests`         frames -> I(chi, q), sigma, the kept sums   pyFAI ``integrate2d_ng``, its 1D
                             (``Integrator(npt_azim=..., keep_sums)``)   results over one sector
:class:`ReconstructorTests`  sinogram blocks -> images per q bin         skimage ``iradon`` / ``radon``,
                             (``recon``: fbp, sirt, cgls, projectors)    the simulator's phantom
:class:`PDFTests`            I(Q) -> G(r) per voxel                      PyStoG, fcc Ni shells of the
                             (``pdf``: compute_pdf, linear_transform)    simulator's Debye pattern
:class:`SinogramPrepTests`   prepare_sinogram and each of its steps      the simulator's phantom and its
                             (``sinogram``)                              Radon transform (ground truth)
===========================  ==========================================  ==============================

Every class is parametrized by the class attribute ``engine`` (``"numpy"`` or ``"cupy"``; the array
module is :func:`xrdct_dask.backend.xp_for_engine` of it, property ``xp``).  Inputs are made on the
host, moved to the engine with :meth:`EngineTests.asarray`, and results come back with
:meth:`EngineTests.asnumpy`, so the assertions and tolerances are the same on every engine.  A
``cupy`` class skips all its tests, saying why, where cupy or a CUDA device is missing.  Each class
has a ``test_equals_numpy_twin``: an engine other than numpy must also equal the numpy engine
(skipped on numpy itself, which is the twin).

Run them on an engine by subclassing in a test module, e.g.::

    import pytest
    from xrdct_dask.testing.conformance import ReconstructorTests

    class TestNumpyReconstructor(ReconstructorTests):
        engine = "numpy"

    @pytest.mark.gpu
    class TestCupyReconstructor(ReconstructorTests):
        engine = "cupy"

and name the fixtures' plugin in ``conftest.py``: ``pytest_plugins = ["xrdct_dask.testing.fixtures"]``
(``rng``, ``sim_scan``, ``small_ai``, ``real_cbf``; see :mod:`xrdct_dask.testing.fixtures`).  A
decoder with another calling convention overrides :meth:`DecoderTests.decode`.  Needs the
``test`` extra (pytest, hypothesis, pystog).
"""

from __future__ import annotations

from xrdct_dask.testing.conformance.base import EngineTests
from xrdct_dask.testing.conformance.decode import DecoderTests
from xrdct_dask.testing.conformance.integrate import IntegratorTests
from xrdct_dask.testing.conformance.pdf import PDFTests
from xrdct_dask.testing.conformance.recon import ReconstructorTests
from xrdct_dask.testing.conformance.sectors import SectorTests
from xrdct_dask.testing.conformance.sinogram import SinogramPrepTests

__all__ = ["EngineTests", "DecoderTests", "IntegratorTests", "SectorTests", "ReconstructorTests", "PDFTests",
           "SinogramPrepTests"]
