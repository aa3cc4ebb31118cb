"""G(r) the PDFgetX3 way, batched: physics from the project's Debye simulator, PyStoG as an oracle
for S(Q) -> G(r), both tomographic orders, and one-line errors before any compute."""

from __future__ import annotations

import dataclasses

import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import find_peaks

from xrdct_dask.pdf import (PDFParameterError, build_operator, compute_pdf, finish_parts, g_from_sq,
                            linear_transform, parse_composition, pattern_scale, structure_functions)
from xrdct_dask.pdf.transform import trapezoid_weights
from xrdct_dask.pdf.background import edge_background_frames, edge_voxel_mask, load_background
from xrdct_dask.testing.synthetic import WAVELENGTH_A, make_phantom, omega_angles_deg, phase_library, project

NI_SHELLS = [3.524 / np.sqrt(2), 3.524, 3.524 * np.sqrt(1.5), 3.524 * np.sqrt(2)]  # 2.49, 3.52, 4.32, 4.98


def g_peaks(r, g, rmin=1.5, n=4):
    """Positions of the first ``n`` maxima of G(r) above rmin that stand out (prominence >= 15 % of max)."""
    sel = r >= rmin
    idx, _ = find_peaks(g[sel], prominence=0.15 * g[sel].max())
    return r[sel][idx][:n]


def ni_pattern(q_A, scale=37.0, flat=5.0):
    """The simulator's Debye pattern of an fcc Ni cluster (a = 3.524 A) per atom, times ``scale``, plus ``flat``."""
    ni = phase_library()[0]
    return scale * np.interp(q_A, ni.q_A, ni.intensity) + flat


def rel_max(a, b):
    """max |a - b| / max |b|: the agreement of two curves on the scale of the curve."""
    return float(np.max(np.abs(np.asarray(a, float) - b)) / np.max(np.abs(b)))


Q_A = np.linspace(0.9, 25, 2400)
NI_ARGS = dict(composition="Ni", qmin=1.0, qmax=20.0, rpoly=0.9, rmin=0.5, rmax=12, rstep=0.01)


# ------------------------------------------------------------------------------------------
# the transform on one pattern
# ------------------------------------------------------------------------------------------
def test_ni_debye_pattern_gives_fcc_shells_and_falling_low_r():
    # unknown scale and a flat background: the ad hoc corrections absorb both
    op = build_operator(Q_A, **NI_ARGS, lorch=True)
    res = compute_pdf(ni_pattern(Q_A)[None], op)
    r, g = res.r_A, res.G[0]
    np.testing.assert_allclose(g_peaks(r, g), NI_SHELLS, atol=0.02)
    # below the first shell (2.49 A) no atoms: G(r) = -4 pi rho0 r, a falling line
    low = (r > 1.2) & (r < 2.1)
    assert np.polyfit(r[low], g[low], 1)[0] < 0
    assert res.lowr_slope[0] < 0  # the stored figure: slope on [rpoly, 2 rpoly] through the origin
    assert res.lowr_residual[0] < 0.05 * g.max()  # clean data: G is close to that line
    # "S(Q) -> 1 at high Q" recovers the scale within the oscillations' and the flat's bias
    assert res.scale[0] == pytest.approx(37.0, rel=0.1)
    assert op.degree == pytest.approx(0.9 * 20.0 / np.pi)  # PDFgetX3: n = rpoly qmaxinst / pi


def test_correction_removes_any_polynomial_of_its_degree_exactly():
    """PDFgetX3's correction: F(Q) minus its best polynomial sum_{k=1..n} c_k Q^k (n = rpoly qmaxinst/pi).

    Adding such a polynomial to F (in intensity: N <f>^2 P(Q)/Q) must not change G at all (float64,
    1e-9 of max |G|), while an unknown smooth background changes it little."""
    op = build_operator(Q_A, **NI_ARGS)
    i = ni_pattern(Q_A, flat=0.0)
    n = float(compute_pdf(i[None], op, dtype=np.float64).scale[0])
    f2avg = op.f2avg
    q = op.q_A
    poly = 0.3 * q - 0.02 * q**2 + 4e-4 * q ** int(np.floor(op.degree))  # degree <= floor(n)
    extra = np.zeros_like(Q_A)
    extra[op.sel] = n * f2avg * poly / q
    common = dict(dtype=np.float64, normalization="fixed", fixed_scale=n)
    g0 = compute_pdf(i, op, **common).G
    assert rel_max(compute_pdf(i + extra, op, **common).G, g0) < 1e-6  # G itself is float32
    _, f_raw, f = structure_functions(i, op, scale=n)
    _, f_raw2, f2 = structure_functions(i + extra, op, scale=n)
    assert rel_max(f2, f) < 1e-9 and rel_max(f_raw2 - f_raw, poly) < 1e-9


@pytest.mark.filterwarnings("ignore:'where' used without 'out':UserWarning")  # inside PyStoG's Lorch
def test_sq_to_gr_agrees_with_pystog():
    """Same S(Q), two implementations of G(r) = 2/pi int_qmin^qmax Q [S(Q) - 1] W(Q) sin(Qr) dQ: 1e-3 relative."""
    import pystog  # the test extra installs it: a missing oracle is a failure, not a skip
    op = build_operator(Q_A, **NI_ARGS)
    s, _, f = structure_functions(ni_pattern(Q_A), op)
    q, r = op.q_A, op.r_A
    _, g_ref, _ = pystog.Transformer().S_to_G(q, s.copy(), r, xmin=1.0, xmax=20.0)
    assert rel_max(g_from_sq(q, s, r, 1.0, 20.0), g_ref) < 1e-3
    # the batched operator (one GEMM on I(Q)) equals PyStoG on the corrected S(Q) = 1 + F/Q
    res = compute_pdf(ni_pattern(Q_A), op, dtype=np.float64)
    _, g_ref, _ = pystog.Transformer().S_to_G(q, 1 + f / q, r, xmin=1.0, xmax=20.0)
    assert rel_max(res.G, g_ref) < 1e-3
    # Lorch window: PDFgetX3's sinc((Q - qmin)/(qmax - qmin)) is Lorch's sinc(Q/Qmax) for qmin = 0
    q0 = np.linspace(0.0, 20.0, 2001)
    s0 = 1 + np.interp(q0, q, f / q, left=0.0)
    _, g_ref, _ = pystog.Transformer().S_to_G(q0, s0.copy(), r, xmin=0.0, xmax=20.0, lorch=True)
    assert rel_max(g_from_sq(q0, s0, r, 0.0, 20.0, lorch=True), g_ref) < 1e-3


def test_two_theta_and_q_inputs_give_the_same_G():
    """The same Ni pattern integrated in 2theta (deg) and in q (1/nm): Q from pdf.radial_to_q_A;
    the dQ-weighted fit and trapezoid make the grid irrelevant up to interpolation (1 % of max G)."""
    from xrdct_dask.pdf import radial_to_q_A

    tth_max = 2 * np.degrees(np.arcsin(25.5 * WAVELENGTH_A / (4 * np.pi)))
    grids = [(np.linspace(0.5, tth_max, 2000), "2th_deg"), (np.linspace(8.0, 255.0, 2000), "q_nm^-1")]
    gs = []
    for radial, unit in grids:
        q = radial_to_q_A(radial, unit, WAVELENGTH_A)
        op = build_operator(q, **NI_ARGS, lorch=True)
        gs.append(compute_pdf(ni_pattern(q)[None], op, dtype=np.float64).G[0])
        np.testing.assert_allclose(g_peaks(op.r_A, gs[-1]), NI_SHELLS, atol=0.02)
    assert rel_max(gs[0], gs[1]) < 0.01


def test_batched_equals_one_by_one_and_float32_equals_float64():
    ni, fe = phase_library()[:2]
    q = np.linspace(0.9, 25, 1200)
    pats = np.stack([np.interp(q, p.q_A, p.intensity) for p in (ni, fe)])
    op = build_operator(q, "Ni", 1.0, 20.0, 0.9, 0.5, 10, 0.02)
    both = compute_pdf(pats, op, dtype=np.float64)
    for k in range(2):
        one = compute_pdf(pats[k], op, dtype=np.float64)
        np.testing.assert_allclose(both.G[k], one.G, rtol=1e-6, atol=1e-6 * np.abs(one.G).max())
        assert both.scale[k] == pytest.approx(float(one.scale), rel=1e-12)
    assert rel_max(compute_pdf(pats, op).G, both.G) < 1e-4  # float32 GEMM


def test_quality_figures_see_noise_at_high_q():
    """Gaussian noise sigma_I on I(Q) is noise Q sigma_I / (N <f>^2) on F(Q): the high-Q rms of F
    grows from the clean value F0 to sqrt(F0^2 + that^2) (20 %; the fit removes n/npts of the noise)."""
    op = build_operator(Q_A, **NI_ARGS)
    clean = ni_pattern(Q_A, flat=0.0)
    sigma = 300.0
    noisy = clean + np.random.default_rng(5).normal(0, sigma, (64, Q_A.size))
    res0 = compute_pdf(clean, op, dtype=np.float64)
    res = compute_pdf(noisy, op, dtype=np.float64, normalization="fixed", fixed_scale=float(res0.scale))
    q_top = op.q_top_A
    f2 = np.interp(q_top, op.q_A, op.f2avg)
    expected_noise = np.sqrt(np.mean((q_top * sigma / (float(res0.scale) * f2)) ** 2))
    measured = np.sqrt(np.mean(res.fq_highq_rms**2))
    assert measured == pytest.approx(np.hypot(float(res0.fq_highq_rms), expected_noise), rel=0.2)
    assert expected_noise > float(res0.fq_highq_rms)  # the test is about the noise, not the clean level


def test_weak_voxels_are_masked_per_pattern():
    op = build_operator(Q_A, **NI_ARGS)
    pats = np.stack([ni_pattern(Q_A, scale=37.0, flat=0.0), ni_pattern(Q_A, scale=0.5, flat=0.0)])
    res = compute_pdf(pats, op, min_scale=2.0)
    assert res.ok.tolist() == [True, False]
    assert not res.G[1].any() and np.isnan(res.lowr_residual[1]) and np.isfinite(res.lowr_residual[0])


# ------------------------------------------------------------------------------------------
# background
# ------------------------------------------------------------------------------------------
def test_background_file_with_bgscale_recovers_the_clean_G(tmp_path):
    """Sample + 0.7 x container (an amorphous Si pattern standing in for a glass capillary), the
    container measured separately and written in the integration unit (q in 1/nm): subtracting
    it with bgscale 0.7 gives the clean G (float32 level); without it G is visibly off."""
    asi = phase_library()[3]
    container = 40.0 * np.interp(Q_A, asi.q_A, asi.intensity)
    clean = ni_pattern(Q_A, flat=0.0)
    radial_nm = Q_A * 10
    path = tmp_path / "capillary.xy"
    np.savetxt(path, np.c_[radial_nm, container], header="q_nm^-1 intensity")
    bg = load_background(path, radial_nm)
    op = build_operator(Q_A, **NI_ARGS)
    g_clean = compute_pdf(clean, op).G
    g_sub = compute_pdf(clean + 0.7 * container, op, background=bg, bgscale=0.7).G
    assert rel_max(g_sub, g_clean) < 1e-4
    assert rel_max(compute_pdf(clean + 0.7 * container, op).G, g_clean) > 0.05


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
# both tomographic orders
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_scan():
    """Noise-free frames (nomega, nx, nq) of one phantom slice: the Radon transform of each phase
    map times its Debye pattern (the simulator's pencil-beam model), on a q grid of 700 bins."""
    nx, nomega = 24, 36
    q = np.linspace(0.9, 24.0, 700)
    maps = make_phantom(1, nx)[:, 0]  # (nphase, ny, nx)
    omega = omega_angles_deg(nomega)
    sinos = project(maps, omega)  # (nphase, nomega, nx)
    pats = np.stack([np.interp(q, p.q_A, p.intensity) for p in phase_library()])
    frames = np.einsum("pwx,pq->wxq", sinos, pats).astype(np.float32)
    return q, omega, frames


def test_pdf_then_recon_equals_recon_then_pdf(phantom_scan):
    """FBP and the transform act on different axes and, for a fixed scale, both are linear: the
    orders agree to 1e-3 of max |G| (here: float32 rounding).  With a per-voxel scale the frames'
    linear parts and N are reconstructed and divided per voxel, which is the same again."""
    from xrdct_dask.recon import fbp

    q, omega, frames = phantom_scan
    op = build_operator(q, "Ni", 1.0, 18.0, 0.9, 0.5, 10.0, 0.02, lorch=True)
    col = op.columns
    vol = fbp(frames, omega)  # recon of every q bin: (ny, nx, nq)
    # linear: fixed scale
    g_first = compute_pdf(vol, op, normalization="fixed", fixed_scale=50.0).G
    lin_frames = linear_transform(frames, op)
    g_second = fbp(lin_frames[..., col["G"]] / np.float32(50.0), omega)
    assert rel_max(g_second, g_first) < 1e-3
    # per-voxel scale: reconstruct N and the linear parts, divide per voxel
    res1 = compute_pdf(vol, op, min_scale=0.05 * float(np.max(vol[..., op.sel] @ op.matrix[:, col["scale"]])))
    parts = fbp(lin_frames, omega).astype(np.float64)
    n = parts[..., col["scale"]][..., 0]
    res2 = finish_parts(n, parts[..., col["G_low"]], parts[..., col["F_top"]], op, parts[..., col["G"]],
                        min_scale=0.05 * float(n.max()))
    assert (res1.ok == res2.ok).mean() > 0.99  # the threshold may flip a voxel sitting on it
    both = res1.ok & res2.ok
    assert rel_max(res2.G[both], res1.G[both]) < 1e-3
    np.testing.assert_allclose(res2.lowr_slope[both], res1.lowr_slope[both], rtol=1e-3, atol=1e-4)


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
# the workflow: pdf-then-recon as a branch of the same graph, errors before compute
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pdf_then_recon_run(sim_scan, tmp_path_factory):
    from distributed import LocalCluster

    from xrdct_dask import run
    from xrdct_dask.config import load_workflow

    out = tmp_path_factory.mktemp("pdf") / "run.zarr"
    # the order comparison is about the linear transform: no nonlinear sinogram correction (zingers)
    wf = load_workflow(sim_scan.workflow, {"store.path": str(out), "pdf.order": "pdf-then-recon", "pdf.rmax": 8.0,
                                           "pdf.r_chunk": 256, "sinogram.zingers": False})
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster:
        path = run(wf, cluster=cluster, progress=False, summary=False)
    return path, wf, sim_scan


def _figures(root):
    return {k: root[f"pdf/{k}"][:] for k in ("G", "scale", "ok", "fq_highq_rms", "lowr_slope", "lowr_residual")}


def test_workflow_pdf_then_recon_matches_recon_then_pdf(pdf_then_recon_run):
    """pdf-then-recon, a branch of the graph: the frames' G(r) sinograms reconstructed.  The Ni
    region shows the fcc shells; the recon-then-pdf stage on the same run's recon/ gives the same
    G (1e-3 of max |G|) and figures, for the fixed scale (a linear map) and per voxel."""
    import xarray as xr
    import zarr
    from scipy.ndimage import binary_erosion

    from xrdct_dask import stages, store
    from xrdct_dask.prepare import context_from_store

    path, wf, scan = pdf_then_recon_run
    pdf = xr.open_zarr(path, group="pdf")
    assert pdf["G"].dims == ("z", "y", "x", "r")
    assert pdf["G_sinogram"].dims == ("z", "omega", "x", "r") and pdf["G_sinogram"].shape[:3] == (2, 32, 24)
    for name in ("scale", "fq_highq_rms", "lowr_slope", "lowr_residual", "ok"):
        assert pdf[name].dims == ("z", "y", "x")
    assert pdf.attrs["order"] == "pdf-then-recon" and pdf.attrs["normalization"] == "per-pattern"
    assert pdf.attrs["poly_degree"] == pytest.approx(0.9 * 20.0 / np.pi) and pdf.attrs["qmaxinst"] == 20.0
    root = zarr.open_group(str(path), mode="r")
    assert root.attrs["stage_status"]["pdf"] == "done"
    ptr = _figures(root)
    ni = scan.load_truth()["phase_maps"][0] > 0.99
    core = np.stack([binary_erosion(m) for m in ni])
    assert ptr["ok"][core].all()
    np.testing.assert_allclose(g_peaks(root["r"][:], ptr["G"][core].mean(axis=0)), NI_SHELLS, atol=0.02)

    def context(normalization):
        w = wf.model_copy(update={"pdf": wf.pdf.model_copy(update={"normalization": normalization})})
        return context_from_store(w, path)

    def recon_then_pdf(z, ctx):  # the other order's tasks, on this store's volume: one block of all rows
        ctx = dataclasses.replace(ctx, layout=dataclasses.replace(ctx.layout, y_chunk=root["pdf/G"].shape[1]))
        ys = slice(0, root["pdf/G"].shape[1])  # (so that the done-marker is pdf (z, 0), which this store has)
        stages.pdf_rows(z, ys, ctx, stages.pdf_scale(z, ys, ctx))

    # the fixed scale: re-run the reconstruction steps of this order, then the other order's stage
    ctx = context("fixed")
    for z in range(2):
        center = stages.find_center(z, ctx)
        stages.reconstruct_pdf_aux(z, center, ctx)
        for rs in store.q_blocks(root["r"].shape[0], ctx.layout.r_chunk):
            stages.reconstruct_pdf_block(z, rs, center, ctx)
    fixed_ptr = _figures(root)
    for z in range(2):
        recon_then_pdf(z, ctx)
    fixed_rtp = _figures(root)
    assert rel_max(fixed_ptr["G"], fixed_rtp["G"]) < 1e-3
    for k in ("scale", "lowr_slope", "fq_highq_rms"):
        assert rel_max(fixed_ptr[k], fixed_rtp[k]) < 1e-3, k
    # per voxel: the per-pattern G written by the run against the recon-then-pdf stage
    for z in range(2):
        recon_then_pdf(z, context("per-pattern"))
    rtp = _figures(root)
    assert (rtp["ok"] == ptr["ok"]).mean() > 0.99  # a voxel right at the threshold may flip
    both = rtp["ok"] & ptr["ok"]
    assert rel_max(ptr["G"][both], rtp["G"][both]) < 1e-3


@pytest.mark.parametrize("override, msg", [
    ({"pdf.qmax": 400.0}, "pdf.qmax = 400.0 1/A is more than 10x the data's end"),
    ({"pdf.rpoly": 0.0}, "pdf.rpoly: Input should be greater than 0"),
    ({"pdf.composition": "NiQq"}, "unknown element 'Qq'"),
    ({"pdf.background": "file"}, "pdf: Value error, background: file needs background_file"),
    ({"pdf.background": "file", "pdf.background_file": "nowhere.xy"}, "nowhere.xy not found"),
])
def test_workflow_bad_pdf_parameters_fail_before_compute(sim_scan, tmp_path, override, msg):
    from xrdct_dask import run
    from xrdct_dask.config import WorkflowError, load_workflow

    out = tmp_path / "never.zarr"
    with pytest.raises(WorkflowError) as err:
        run(load_workflow(sim_scan.workflow, {"store.path": str(out), **override}), progress=False)
    assert msg.replace("Value error, ", "") in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# GPU: the same GEMM through cupy/cuBLAS
# ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
def test_cupy_equals_numpy(dtype, tol):
    cp = pytest.importorskip("cupy")
    from xrdct_dask.backend import gpu_available

    if not gpu_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(2)
    pats = np.stack([np.interp(Q_A, p.q_A, p.intensity) for p in phase_library()])
    mix = rng.uniform(0, 40, (3000, len(pats))) @ pats  # voxels holding several phases
    op = build_operator(Q_A, **NI_ARGS, lorch=True)
    ref = compute_pdf(mix, op, min_scale=10.0, dtype=dtype)
    got = compute_pdf(cp.asarray(mix), op, min_scale=10.0, dtype=dtype)
    assert isinstance(got.G, cp.ndarray)
    assert rel_max(cp.asnumpy(got.G), ref.G) < tol
    for name in ("scale", "fq_highq_rms", "lowr_slope", "lowr_residual"):
        np.testing.assert_allclose(cp.asnumpy(getattr(got, name)), getattr(ref, name), rtol=10 * tol)


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


CFG = """# a PDFgetX3 configuration
[DEFAULT]
dataformat = QA
composition = Ni
bgscale = 0.8
rpoly = 1.1
qmaxinst = 24.0
qmin = 1.2
qmax = 22.0
rmin = 0.0
rmax = 12.0
rstep = 0.02
outputtypes = gr

[nacl]
composition = NaCl
qmax = 20.0
"""


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


def test_workflow_pdf_config(sim_scan, tmp_path):
    """pdf.config in the workflow: the file's values for keys not written in the pdf section, the
    section's own keys win; a missing file is a one-line WorkflowError naming it."""
    import yaml

    from xrdct_dask.config import WorkflowError, load_workflow

    cfg = tmp_path / "pdfgetx3.cfg"
    cfg.write_text(CFG)
    raw = yaml.safe_load(Path(sim_scan.workflow).read_text())
    raw["pdf"] = {"config": str(cfg), "config_section": "nacl", "rmax": 8.0}
    wf_path = tmp_path / "wf.yaml"
    wf_path.write_text(yaml.safe_dump(raw))
    p = load_workflow(wf_path).pdf
    assert (p.composition, p.qmax, p.qmaxinst, p.rpoly, p.rmax, p.bgscale) == ("NaCl", 20.0, 24.0, 1.1, 8.0, 0.8)
    with pytest.raises(WorkflowError) as err:
        load_workflow(wf_path, {"pdf.config": str(tmp_path / "none.cfg")})
    assert "none.cfg not found" in str(err.value) and "\n" not in str(err.value)


def test_export_pdfgetx3_files(pdf_then_recon_run, tmp_path):
    """xrdct export RUN --pdf-files DIR: .iq .sq .fq .gr in PDFgetX3's layout (header readable as a
    PDFgetX3 configuration with the run's clipped limits, then two columns); a voxel's G is the
    run's pdf/G of that voxel (the two orders agree to 1e-3); S = 1 + F/Q; a region writes its mean;
    existing files are not replaced; no output option is a one-line error."""
    import zarr
    from typer.testing import CliRunner

    from xrdct_dask.cli import app
    from xrdct_dask.export import ExportError, export_pdf_files, parse_region
    from xrdct_dask.pdf.pdfgetx3 import read_config

    path, wf, scan = pdf_then_recon_run
    root = zarr.open_group(str(path), mode="r")
    ni = scan.load_truth()["phase_maps"][0] > 0.99
    z, y, x = (int(v[0]) for v in np.nonzero(ni & root["pdf/ok"][:]))
    out = tmp_path / "files"
    files = export_pdf_files(path, out, voxels=[(z, y, x)])
    assert sorted(f.suffix for f in files) == [".fq", ".gr", ".iq", ".sq"]
    gr = next(f for f in files if f.suffix == ".gr")
    text = gr.read_text()
    assert "#### start data\n#S 1\n#L r($\\AA$)  G($\\AA^{-2}$)\n" in text
    cfg = read_config(gr)
    attrs = dict(root["pdf"].attrs)
    assert cfg["composition"] == "Ni" and cfg["qmax"] == pytest.approx(attrs["qmax"], rel=1e-6)
    r, g = np.loadtxt(gr, comments="#", skiprows=text[:text.index("#### start")].count("\n")).T
    np.testing.assert_allclose(r, root["r"][:], atol=1e-9)
    assert rel_max(g, root["pdf/G"][z, y, x]) < 1e-3
    skip = text[:text.index("#### start")].count("\n")  # the header has the same lines in every file
    _, s = np.loadtxt(next(f for f in files if f.suffix == ".sq"), comments="#", skiprows=skip).T
    q_f, f = np.loadtxt(next(f for f in files if f.suffix == ".fq"), comments="#", skiprows=skip).T
    np.testing.assert_allclose(s, 1 + f / q_f, atol=1e-6)
    reg = export_pdf_files(path, out, region=parse_region(f"{z}:{z + 1},{y}:{y + 2},{x}:{x + 2}"))
    assert len(reg) == 4 and all("region_" in f.name for f in reg)
    with pytest.raises(FileExistsError, match="already exists; not overwritten"):
        export_pdf_files(path, out, voxels=[(z, y, x)])
    with pytest.raises(ExportError, match="outside the reconstruction"):
        export_pdf_files(path, tmp_path / "x", voxels=[(z, 999, x)])
    res = CliRunner().invoke(app, ["export", str(path)])
    assert res.exit_code == 2 and "nothing to do: give OUT.h5 (NeXus) and/or --pdf-files OUTDIR" in res.output
    res = CliRunner().invoke(app, ["export", str(path), "--pdf-files", str(tmp_path / "cli"), "--voxels", f"{z},{y},{x}"])
    assert res.exit_code == 0 and res.output.count(".gr") == 1


def test_exported_gr_file_loads_in_diffpy_srfit(pdf_then_recon_run, tmp_path):
    """diffpy.srfit (and PDFgui, which shares its reader) parses the exported .gr as a PDFgetX3
    file: its r grid and G are the run's, and the header gives the Q range it was computed with."""
    pdfparser = pytest.importorskip("diffpy.srfit.pdf.pdfparser", reason="diffpy.srfit not installed")
    import zarr

    from xrdct_dask.export import export_pdf_files

    path, wf, scan = pdf_then_recon_run
    root = zarr.open_group(str(path), mode="r")
    ni = scan.load_truth()["phase_maps"][0] > 0.99
    z, y, x = (int(v[0]) for v in np.nonzero(ni & root["pdf/ok"][:]))
    gr = next(f for f in export_pdf_files(path, tmp_path / "files", voxels=[(z, y, x)]) if f.suffix == ".gr")
    parser = pdfparser.PDFParser()
    parser.parseFile(str(gr))
    r, g = np.asarray(parser._x), np.asarray(parser._y)
    np.testing.assert_allclose(r, root["r"][:], atol=1e-6)
    assert rel_max(g, root["pdf/G"][z, y, x]) < 1e-3
    assert parser._meta["qmax"] == pytest.approx(root["pdf"].attrs["qmax"])
