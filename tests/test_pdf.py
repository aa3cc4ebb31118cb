"""G(r) the PDFgetX3 way on every engine (``PDFTests`` of xrdct_dask.testing.conformance: the fcc
Ni shells of the simulator's Debye pattern, PyStoG as an oracle for S(Q) -> G(r), both tomographic
orders; numpy, and cupy, which also equals the numpy engine), and what is the same on every
engine: edge backgrounds, one-line errors, PDFgetX3's measured G, its configuration files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import find_peaks

from xrdct_dask.pdf import PDFParameterError, build_operator, compute_pdf, parse_composition, pattern_scale
from xrdct_dask.pdf.background import edge_background_frames, edge_voxel_mask, load_background
from xrdct_dask.pdf.transform import trapezoid_weights
from xrdct_dask.testing.conformance import PDFTests
from xrdct_dask.testing.conformance.pdf import NI_ARGS


class TestNumpyPDF(PDFTests):
    engine = "numpy"


@pytest.mark.gpu
class TestCupyPDF(PDFTests):
    engine = "cupy"


# ------------------------------------------------------------------------------------------
# background
# ------------------------------------------------------------------------------------------
def test_edge_backgrounds():
    # the rim of the reconstruction circle (radius nx // 2 about nx // 2), width 2 pixels
    m = edge_voxel_mask(24, 2)
    yy, xx = np.nonzero(m)
    rho = np.hypot(yy - 12, xx - 12)
    assert rho.max() <= 12 and rho.min() > 10
    assert m.sum() == pytest.approx(np.pi * (12**2 - 10**2), rel=0.15)
    # frames: the first and last x steps of good frames only
    sino = np.zeros((4, 10, 3))
    sino[:, [0, 1, 8, 9]] = 2.0
    sino[:, 2:8] = 100.0
    ok = np.ones((4, 10), bool)
    sino[0, 0] = 1e6
    ok[0, 0] = False  # a flagged frame at the edge is left out
    np.testing.assert_allclose(edge_background_frames(sino, ok, 2), [2.0, 2.0, 2.0])


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(qmax=300.0), "pdf.qmax = 300.0 1/A is more than 10x the data's end"),  # 1/nm given as 1/A
    (dict(qmaxinst=260.0), "pdf.qmaxinst = 260.0 1/A is more than 10x the data's end"),
    (dict(qmin=26.0, qmax=28.0), "pdf.qmin..qmax = 26.0..28.0 1/A misses the data"),
    (dict(qmin=20.0, qmax=10.0), "pdf.qmin (20.0) must be below pdf.qmax (10.0)"),
    (dict(qmaxinst=15.0), "pdf.qmaxinst (15.0) must be >= pdf.qmax (20.0)"),
    (dict(scale_method="median"), "pdf.scale_method must be one of"),
    (dict(rpoly=0.0), "pdf.rpoly must be > 0"),
    (dict(rpoly=-1.0), "pdf.rpoly must be > 0"),
    (dict(composition="NiXx"), "unknown element 'Xx'"),
    (dict(composition="ni"), "cannot parse 'ni'"),
    (dict(rstep=1e-5), "rmin, rmax, rstep are in A"),
    (dict(lowr_max=0.5), "pdf.lowr_max (0.5) must be above pdf.rpoly"),
])
def test_bad_parameters_are_one_line_errors(kw, msg):
    with pytest.raises(PDFParameterError) as err:
        build_operator(np.linspace(0.9, 25, 500), **(NI_ARGS | kw))
    assert msg in str(err.value) and "\n" not in str(err.value)


def test_bad_background_file_is_a_one_line_error(tmp_path):
    radial = np.linspace(8, 250, 100)
    with pytest.raises(PDFParameterError, match="not found"):
        load_background(tmp_path / "none.xy", radial)
    p = tmp_path / "short.xy"
    np.savetxt(p, np.c_[np.linspace(8, 100, 50), np.ones(50)])
    with pytest.raises(PDFParameterError, match=r"covers 8..100 but the data span 8..250"):
        load_background(p, radial)


def test_composition_parser():
    assert parse_composition("NaCl") == {"Na": 1.0, "Cl": 1.0}
    assert parse_composition("Ni0.8Fe0.2") == {"Ni": 0.8, "Fe": 0.2}
    assert parse_composition("SiO2") == {"Si": 1.0, "O": 2.0}


# ------------------------------------------------------------------------------------------
# PDFgetX3 on measured data: limits clipped to the data, its scale, its files in and out
# ------------------------------------------------------------------------------------------
DATA = Path(__file__).parent / "data"
NI_X3 = dict(composition="Ni", qmin=0.1, qmax=31.5, qmaxinst=31.5, rpoly=0.9, rmin=0.0, rmax=20.0, rstep=0.01)


def measured_ni():
    """tests/data: a measured Ni I(Q) and PDFgetX3's G(r) of it (README.md there: source, parameters)."""
    q, i = np.loadtxt(DATA / "ni.iq", comments="#", skiprows=24).T
    r, g = np.loadtxt(DATA / "ni_r0-20.gr", comments="#", skiprows=26).T
    return q, i, r, g


def test_limits_beyond_the_data_are_clipped_with_one_warning_line(caplog):
    """PDFgetX3 resets qmax/qmaxinst to the data's end and qmin to its start: so do we, with one
    warning line per operator, and the clipped values are the parameters recorded (op.params)."""
    q = np.linspace(0.9, 25, 500)
    with caplog.at_level(logging.WARNING, logger="xrdct_dask.pdf.transform"):
        op = build_operator(q, **(NI_ARGS | dict(qmin=0.5, qmax=30.0)))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "qmin 0.5 -> 0.9" in warnings[0].getMessage() and "qmax 30 -> 25" in warnings[0].getMessage()
    assert op.params["qmin"] == pytest.approx(0.9) and op.params["qmax"] == op.params["qmaxinst"] == pytest.approx(25)
    assert op.q_A[0] == pytest.approx(0.9) and op.q_A[-1] == pytest.approx(25)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xrdct_dask.pdf.transform"):
        build_operator(q, **NI_ARGS)  # inside the data: silent
    assert not caplog.records


def test_measured_ni_gives_pdfgetx3s_G():
    """The same measured I(Q), PDFgetX3's parameters (qmin, qmaxinst beyond the data: clipped): G(r)
    has PDFgetX3's amplitude (scale_method pdfgetx3: within 3 %; measured 0.04 % on 1-10 A, 0.3 %
    on 1-20 A), its shape (Pearson > 0.9999, rms after scaling < 1 %: what differs is PDFgetX3's
    resampling of F(Q) for its FFT, a ~1 % damping at 20 A) and its peaks to the 0.01 A grid.
    The previous scale (upper-half-fit) gives 1.63x PDFgetX3's amplitude on these data."""
    q, i, r_x3, g_x3 = measured_ni()
    ratios = {}
    for method in ("pdfgetx3", "upper-half-fit"):
        op = build_operator(q, **NI_X3, scale_method=method)
        res = compute_pdf(i, op, dtype=np.float64)
        assert np.allclose(res.r_A, r_x3)
        g = res.G
        for lo, hi in ((1.0, 10.0), (1.0, 20.0)):
            sel = (r_x3 >= lo) & (r_x3 <= hi)
            ratio = float(g[sel] @ g_x3[sel] / (g_x3[sel] @ g_x3[sel]))
            ratios[method, hi] = ratio
            assert np.corrcoef(g[sel], g_x3[sel])[0, 1] > 0.9999
            assert np.sqrt(np.mean((g[sel] / ratio - g_x3[sel]) ** 2)) < 0.01 * np.sqrt(np.mean(g_x3[sel] ** 2))
        if method == "pdfgetx3":
            ours, theirs = (r_x3[find_peaks(x, prominence=1.0)[0]] for x in (g, g_x3))
            assert ours.size == theirs.size >= 25
            np.testing.assert_allclose(ours, theirs, atol=0.005)  # same 0.01 A grid point
    assert ratios["pdfgetx3", 10.0] == pytest.approx(1.0, abs=0.03)
    assert ratios["pdfgetx3", 20.0] == pytest.approx(1.0, abs=0.03)
    assert ratios["upper-half-fit", 10.0] == pytest.approx(1.63, abs=0.03)


def test_pdfgetx3_scale_is_the_high_q_mean_of_I_over_f2():
    """scale_method pdfgetx3: N = dQ-weighted mean of I/<f^2> over Q >= 0.6 qmaxinst (float64 1e-12),
    independent of qmin; a pattern that is exactly N <f^2> gets that N back."""
    q, i, _, _ = measured_ni()
    op = build_operator(q, **NI_X3)
    n = float(pattern_scale(i, op))
    qq, ii = q[op.sel], i[op.sel]
    win = qq >= 0.6 * op.params["qmaxinst"]
    w = trapezoid_weights(qq) * win
    assert n == pytest.approx(float(np.sum(w * ii / op.favg2) / np.sum(w)), rel=1e-12)
    assert n == pytest.approx(16098, rel=0.01)  # PDFgetX3's N for these data (its S(Q), tests/data/README.md)
    op2 = build_operator(q, **(NI_X3 | dict(qmin=2.0)))
    assert float(pattern_scale(i, op2)) == pytest.approx(n, rel=1e-12)
    flat = np.zeros_like(q)
    flat[op.sel] = 123.0 * op.favg2
    assert float(pattern_scale(flat, op)) == pytest.approx(123.0, rel=1e-12)


CFG = (DATA / "pdfgetx3.cfg").read_text()  # a PDFgetX3 configuration: [DEFAULT] and a [nacl] section


def test_pdfgetx3_configuration_sets_the_pdf_keys(tmp_path):
    """[DEFAULT], a section over it (pdfgetx3 -c FILE -s SECTION), and a PDFgetX3 output file
    (its header is a configuration) give the workflow's pdf keys; keys PDFgetX3 uses only to read
    the powder file are ignored."""
    from xrdct_dask.pdf.pdfgetx3 import read_config

    cfg = tmp_path / "pdfgetx3.cfg"
    cfg.write_text(CFG)
    assert read_config(cfg) == dict(composition="Ni", qmin=1.2, qmax=22.0, qmaxinst=24.0, rpoly=1.1, rmin=0.0,
                                    rmax=12.0, rstep=0.02, bgscale=0.8)
    sec = read_config(cfg, "nacl")
    assert sec["composition"] == "NaCl" and sec["qmax"] == 20.0 and sec["rpoly"] == 1.1
    gr = read_config(DATA / "ni_r0-20.gr", "PDF")  # xPDFsuite writes its parameters in [PDF]
    assert gr["composition"] == "Ni" and gr["qmax"] == 31.5 and gr["rpoly"] == 0.9
    assert gr["background"] == "file" and gr["background_file"].endswith("Kapton-bkg.chi")


@pytest.mark.parametrize("text, section, msg", [
    (None, None, "not found"),
    (CFG, "kcl", "no [kcl] in"),
    ("[DEFAULT]\nmode = neutron\ncomposition = Ni\n", None, "mode = neutron; only xray"),
    ("[DEFAULT]\ncomposition = Ni\nqmax = lots\n", None, "qmax = 'lots'"),
    ("[only]\nqmax = 20\n", None, "no PDF parameters in [DEFAULT]"),
    ("qmax = 20\n", None, "is not a PDFgetX3 configuration"),
])
def test_bad_pdfgetx3_configuration_is_a_one_line_error(tmp_path, text, section, msg):
    from xrdct_dask.pdf.pdfgetx3 import read_config

    cfg = tmp_path / "x.cfg"
    if text is not None:
        cfg.write_text(text)
    with pytest.raises(PDFParameterError) as err:
        read_config(cfg, section)
    assert msg in str(err.value) and "\n" not in str(err.value)
