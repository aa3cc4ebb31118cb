"""The base of the conformance classes: an engine named by a class attribute."""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask.backend import gpu_available, to_host, xp_for_engine


class EngineTests:
    """What every conformance class shares: the engine it runs on and the moves to and from it."""

    engine = "numpy"

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _engine_is_here(cls):
        if cls.engine == "cupy" and not gpu_available():
            pytest.skip("needs cupy and a CUDA GPU")

    @property
    def xp(self):
        """The engine's array module."""
        return xp_for_engine(self.engine)

    def asarray(self, a, dtype=None):
        """Host data ``a`` on the engine (a copy on a GPU)."""
        return self.xp.asarray(a, dtype=dtype)

    def asnumpy(self, a) -> np.ndarray:
        """An engine array (or a host one) on the host."""
        return to_host(a)

    def skip_on_twin(self) -> None:
        if self.engine == "numpy":
            pytest.skip("the numpy engine is the twin the other engines are compared to")
