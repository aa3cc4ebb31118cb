"""Expected results of the simulator's phases and the comparisons the tests make with them.

Shared by the conformance classes (:mod:`xrdct_dask.testing.conformance`) and the project's own
tests (the whole workflow's G(r) of the Ni region must show the same shells).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks

from xrdct_dask.simulate import phase_library

NI_LATTICE_A = 3.524  # fcc Ni of the simulator's phase library (synthetic.phase_library)
# the first four coordination shells of fcc: a/sqrt(2), a, a sqrt(3/2), a sqrt(2) = 2.49, 3.52, 4.32, 4.98 A
NI_SHELLS = [NI_LATTICE_A / np.sqrt(2), NI_LATTICE_A, NI_LATTICE_A * np.sqrt(1.5), NI_LATTICE_A * np.sqrt(2)]


def g_peaks(r, g, rmin: float = 1.5, n: int = 4) -> np.ndarray:
    """Positions of the first ``n`` maxima of G(r) above rmin that stand out (prominence >= 15 % of max)."""

    sel = r >= rmin
    idx, _ = find_peaks(g[sel], prominence=0.15 * g[sel].max())
    return r[sel][idx][:n]


def ni_pattern(q_A, scale: float = 37.0, flat: float = 5.0) -> np.ndarray:
    """The simulator's Debye pattern of an fcc Ni cluster (a = 3.524 A) per atom, times ``scale``, plus ``flat``."""
    ni = phase_library()[0]
    return scale * np.interp(q_A, ni.q_A, ni.intensity) + flat


def rel_max(a, b) -> float:
    """max |a - b| / max |b|: the agreement of two curves on the scale of the curve."""
    return float(np.max(np.abs(np.asarray(a, float) - b)) / np.max(np.abs(b)))
