"""G(r) of Ni from the project's Debye simulator: the fcc neighbour shells come out where they are."""

import numpy as np
import pytest
from scipy.signal import find_peaks

from xrdct_dask.pdf import PDFParameterError, build_operator, compute_pdf, parse_composition
from xrdct_dask.testing.synthetic import phase_library

NI_SHELLS = [3.524 / np.sqrt(2), 3.524, 3.524 * np.sqrt(1.5), 3.524 * np.sqrt(2)]  # 2.49, 3.52, 4.32, 4.98


def g_peaks(r, g, rmin=1.5, n=4):
    """Positions of the first ``n`` maxima of G(r) above rmin that stand out (prominence >= 15 % of max)."""
    sel = r >= rmin
    idx, _ = find_peaks(g[sel], prominence=0.15 * g[sel].max())
    return r[sel][idx][:n]


def test_ni_debye_pattern_gives_fcc_shells():
    ni = phase_library()[0]
    q = np.linspace(0.9, 25, 2400)
    # unknown scale and a flat background: the ad hoc corrections must absorb both
    intensity = 37.0 * np.interp(q, ni.q_A, ni.intensity) + 5.0
    op = build_operator(q, "Ni", qmin=1.0, qmax=20.0, rpoly=0.9, rmin=0.5, rmax=12, rstep=0.01, lorch=True)
    res = compute_pdf(intensity[None], op)
    np.testing.assert_allclose(g_peaks(res.r_A, res.G[0]), NI_SHELLS, atol=0.02)
    # below the first shell G(r) = -4 pi rho0 r: falling
    low = (res.r_A > 1.2) & (res.r_A < 2.1)
    assert np.polyfit(res.r_A[low], res.G[0][low], 1)[0] < 0
    assert res.scale[0] == pytest.approx(37.0, rel=0.1)


def test_batched_equals_one_by_one():
    ni, fe = phase_library()[:2]
    q = np.linspace(0.9, 25, 1200)
    pats = np.stack([np.interp(q, p.q_A, p.intensity) for p in (ni, fe)])
    op = build_operator(q, "Ni", 1.0, 20.0, 0.9, 0.5, 10, 0.02)
    both = compute_pdf(pats, op).G
    for k in range(2):
        np.testing.assert_allclose(both[k], compute_pdf(pats[k], op).G, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw, msg", [
    (dict(qmax=30.0), "pdf.qmax = 30.0 1/A is above the data"),
    (dict(rpoly=0.0), "pdf.rpoly must be > 0"),
    (dict(composition="NiXx"), "unknown element 'Xx'"),
])
def test_bad_parameters_are_one_line_errors(kw, msg):
    args = dict(composition="Ni", qmin=1.0, qmax=20.0, rpoly=0.9, rmin=0.5, rmax=10, rstep=0.01) | kw
    with pytest.raises(PDFParameterError, match=msg):
        build_operator(np.linspace(0.9, 25, 500), **args)


def test_composition_parser():
    assert parse_composition("NaCl") == {"Na": 1.0, "Cl": 1.0}
    assert parse_composition("Ni0.8Fe0.2") == {"Ni": 0.8, "Fe": 0.2}
    assert parse_composition("SiO2") == {"Si": 1.0, "O": 2.0}
