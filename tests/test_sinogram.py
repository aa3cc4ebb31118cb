"""Sinogram preparation on every engine (``SinogramPrepTests`` of xrdct_dask.testing.conformance):
on simulated sinograms with ground truth (the simulator's phantom and its skimage Radon transform)
each correction undoes the artefact it is for, measured on the reconstruction against the clean
one, and leaves clean data alone; numpy, and cupy, which also equals the numpy engine."""

from __future__ import annotations

import pytest

from xrdct_dask.testing.conformance import SinogramPrepTests


class TestNumpySinogramPrep(SinogramPrepTests):
    engine = "numpy"


@pytest.mark.gpu
class TestCupySinogramPrep(SinogramPrepTests):
    engine = "cupy"
