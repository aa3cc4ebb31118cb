"""PDFTests: the I(Q) -> G(r) transform against PyStoG and the fcc Ni shells."""

from __future__ import annotations

import dataclasses

import numpy as np
import pystog  # the test extra installs it: a missing oracle is a failure, not a skip
import pytest

from xrdct_dask.pdf import (
    build_operator,
    compute_pdf,
    finish_parts,
    g_from_sq,
    linear_transform,
    radial_to_q_A,
    structure_functions,
)
from xrdct_dask.pdf.background import load_background
from xrdct_dask.recon import fbp
from xrdct_dask.simulate import WAVELENGTH_A, make_phantom, omega_angles_deg, phase_library, project
from xrdct_dask.testing.conformance.base import EngineTests
from xrdct_dask.testing.references import NI_SHELLS, g_peaks, ni_pattern, rel_max

# ==========================================================================================
# pdf: I(Q) -> G(r), batched over voxels
# ==========================================================================================
Q_A = np.linspace(0.9, 25, 2400)


NI_ARGS = dict(composition="Ni", qmin=1.0, qmax=20.0, rpoly=0.9, rmin=0.5, rmax=12, rstep=0.01)


PDF_FIELDS = ("G", "scale", "ok", "fq_highq_rms", "lowr_slope", "lowr_residual")


class PDFTests(EngineTests):
    """G(r) the PDFgetX3 way, batched: physics from the project's Debye simulator (the fcc Ni
    shells), PyStoG as an oracle for S(Q) -> G(r), 2theta vs q input, both tomographic orders;
    another engine equals the numpy one (float32 1e-4, float64 1e-10)."""

    def pdf(self, intensity, op, **kw):
        """:func:`xrdct_dask.pdf.compute_pdf` of host patterns on the engine, the result on the host."""

        return self.host_result(compute_pdf(self.asarray(intensity), op, **kw))

    def host_result(self, res):

        return dataclasses.replace(res, **{k: None if getattr(res, k) is None else self.asnumpy(getattr(res, k))
                                           for k in PDF_FIELDS})

    @pytest.fixture(scope="class")
    @classmethod
    def phantom_frames(cls):
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

    def test_ni_debye_pattern_gives_fcc_shells_and_falling_low_r(self):

        # unknown scale and a flat background: the ad hoc corrections absorb both
        op = build_operator(Q_A, **NI_ARGS, lorch=True)
        res = self.pdf(ni_pattern(Q_A)[None], op)
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

    def test_correction_removes_any_polynomial_of_its_degree_exactly(self):
        """PDFgetX3's correction: F(Q) minus its best polynomial sum_{k=1..n} c_k Q^k (n = rpoly qmaxinst/pi).

        Adding such a polynomial to F (in intensity: N <f>^2 P(Q)/Q) must not change G at all (float64,
        1e-9 of max |G|), while an unknown smooth background changes it little."""

        op = build_operator(Q_A, **NI_ARGS)
        i = ni_pattern(Q_A, flat=0.0)
        n = float(self.pdf(i[None], op, dtype=np.float64).scale[0])
        f2avg = op.f2avg
        q = op.q_A
        poly = 0.3 * q - 0.02 * q**2 + 4e-4 * q ** int(np.floor(op.degree))  # degree <= floor(n)
        extra = np.zeros_like(Q_A)
        extra[op.sel] = n * f2avg * poly / q
        common = dict(dtype=np.float64, normalization="fixed", fixed_scale=n)
        g0 = self.pdf(i, op, **common).G
        assert rel_max(self.pdf(i + extra, op, **common).G, g0) < 1e-6  # G itself is float32
        _, f_raw, f = structure_functions(i, op, scale=n)
        _, f_raw2, f2 = structure_functions(i + extra, op, scale=n)
        assert rel_max(f2, f) < 1e-9 and rel_max(f_raw2 - f_raw, poly) < 1e-9

    @pytest.mark.filterwarnings("ignore:'where' used without 'out':UserWarning")  # inside PyStoG's Lorch
    def test_sq_to_gr_agrees_with_pystog(self):
        """Same S(Q), two implementations of G(r) = 2/pi int_qmin^qmax Q [S(Q) - 1] W(Q) sin(Qr) dQ: 1e-3 relative."""


        op = build_operator(Q_A, **NI_ARGS)
        s, _, f = structure_functions(ni_pattern(Q_A), op)
        q, r = op.q_A, op.r_A
        _, g_ref, _ = pystog.Transformer().S_to_G(q, s.copy(), r, xmin=1.0, xmax=20.0)
        assert rel_max(g_from_sq(q, s, r, 1.0, 20.0), g_ref) < 1e-3
        # the batched operator (one GEMM on I(Q)) equals PyStoG on the corrected S(Q) = 1 + F/Q
        res = self.pdf(ni_pattern(Q_A), op, dtype=np.float64)
        _, g_ref, _ = pystog.Transformer().S_to_G(q, 1 + f / q, r, xmin=1.0, xmax=20.0)
        assert rel_max(res.G, g_ref) < 1e-3
        # Lorch window: PDFgetX3's sinc((Q - qmin)/(qmax - qmin)) is Lorch's sinc(Q/Qmax) for qmin = 0
        q0 = np.linspace(0.0, 20.0, 2001)
        s0 = 1 + np.interp(q0, q, f / q, left=0.0)
        _, g_ref, _ = pystog.Transformer().S_to_G(q0, s0.copy(), r, xmin=0.0, xmax=20.0, lorch=True)
        assert rel_max(g_from_sq(q0, s0, r, 0.0, 20.0, lorch=True), g_ref) < 1e-3

    def test_two_theta_and_q_inputs_give_the_same_G(self):
        """The same Ni pattern integrated in 2theta (deg) and in q (1/nm): Q from pdf.radial_to_q_A;
        the dQ-weighted fit and trapezoid make the grid irrelevant up to interpolation (1 % of max G)."""

        tth_max = 2 * np.degrees(np.arcsin(25.5 * WAVELENGTH_A / (4 * np.pi)))
        grids = [(np.linspace(0.5, tth_max, 2000), "2th_deg"), (np.linspace(8.0, 255.0, 2000), "q_nm^-1")]
        gs = []
        for radial, unit in grids:
            q = radial_to_q_A(radial, unit, WAVELENGTH_A)
            op = build_operator(q, **NI_ARGS, lorch=True)
            gs.append(self.pdf(ni_pattern(q)[None], op, dtype=np.float64).G[0])
            np.testing.assert_allclose(g_peaks(op.r_A, gs[-1]), NI_SHELLS, atol=0.02)
        assert rel_max(gs[0], gs[1]) < 0.01

    def test_batched_equals_one_by_one_and_float32_equals_float64(self):

        ni, fe = phase_library()[:2]
        q = np.linspace(0.9, 25, 1200)
        pats = np.stack([np.interp(q, p.q_A, p.intensity) for p in (ni, fe)])
        op = build_operator(q, "Ni", 1.0, 20.0, 0.9, 0.5, 10, 0.02)
        both = self.pdf(pats, op, dtype=np.float64)
        for k in range(2):
            one = self.pdf(pats[k], op, dtype=np.float64)
            np.testing.assert_allclose(both.G[k], one.G, rtol=1e-6, atol=1e-6 * np.abs(one.G).max())
            assert both.scale[k] == pytest.approx(float(one.scale), rel=1e-12)
        assert rel_max(self.pdf(pats, op).G, both.G) < 1e-4  # float32 GEMM

    def test_quality_figures_see_noise_at_high_q(self):
        """Gaussian noise sigma_I on I(Q) is noise Q sigma_I / (N <f>^2) on F(Q): the high-Q rms of F
        grows from the clean value F0 to sqrt(F0^2 + that^2) (20 %; the fit removes n/npts of the noise)."""

        op = build_operator(Q_A, **NI_ARGS)
        clean = ni_pattern(Q_A, flat=0.0)
        sigma = 300.0
        noisy = clean + np.random.default_rng(5).normal(0, sigma, (64, Q_A.size))
        res0 = self.pdf(clean, op, dtype=np.float64)
        res = self.pdf(noisy, op, dtype=np.float64, normalization="fixed", fixed_scale=float(res0.scale))
        q_top = op.q_top_A
        f2 = np.interp(q_top, op.q_A, op.f2avg)
        expected_noise = np.sqrt(np.mean((q_top * sigma / (float(res0.scale) * f2)) ** 2))
        measured = np.sqrt(np.mean(res.fq_highq_rms**2))
        assert measured == pytest.approx(np.hypot(float(res0.fq_highq_rms), expected_noise), rel=0.2)
        assert expected_noise > float(res0.fq_highq_rms)  # the test is about the noise, not the clean level

    def test_weak_voxels_are_masked_per_pattern(self):

        op = build_operator(Q_A, **NI_ARGS)
        pats = np.stack([ni_pattern(Q_A, scale=37.0, flat=0.0), ni_pattern(Q_A, scale=0.5, flat=0.0)])
        res = self.pdf(pats, op, min_scale=2.0)
        assert res.ok.tolist() == [True, False]
        assert not res.G[1].any() and np.isnan(res.lowr_residual[1]) and np.isfinite(res.lowr_residual[0])

    def test_background_file_with_bgscale_recovers_the_clean_G(self, tmp_path):
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
        g_clean = self.pdf(clean, op).G
        g_sub = self.pdf(clean + 0.7 * container, op, background=bg, bgscale=0.7).G
        assert rel_max(g_sub, g_clean) < 1e-4
        assert rel_max(self.pdf(clean + 0.7 * container, op).G, g_clean) > 0.05

    def test_pdf_then_recon_equals_recon_then_pdf(self, phantom_frames):
        """FBP and the transform act on different axes and, for a fixed scale, both are linear: the
        orders agree to 1e-3 of max |G| (here: float32 rounding).  With a per-voxel scale the frames'
        linear parts and N are reconstructed and divided per voxel, which is the same again."""

        q, omega, frames_h = phantom_frames
        frames = self.asarray(frames_h)
        op = build_operator(q, "Ni", 1.0, 18.0, 0.9, 0.5, 10.0, 0.02, lorch=True)
        col = op.columns
        vol = fbp(frames, omega)  # recon of every q bin: (ny, nx, nq)
        # linear: fixed scale
        g_first = self.asnumpy(compute_pdf(vol, op, normalization="fixed", fixed_scale=50.0).G)
        lin_frames = linear_transform(frames, op)
        g_second = self.asnumpy(fbp(lin_frames[..., col["G"]] / np.float32(50.0), omega))
        assert rel_max(g_second, g_first) < 1e-3
        # per-voxel scale: reconstruct N and the linear parts, divide per voxel
        vol_h = self.asnumpy(vol)
        res1 = self.host_result(compute_pdf(
            vol, op, min_scale=0.05 * float(np.max(vol_h[..., op.sel] @ op.matrix[:, col["scale"]]))))
        parts = fbp(lin_frames, omega).astype(np.float64)
        n = parts[..., col["scale"]][..., 0]
        res2 = self.host_result(finish_parts(n, parts[..., col["G_low"]], parts[..., col["F_top"]], op,
                                             parts[..., col["G"]], min_scale=0.05 * float(n.max())))
        assert (res1.ok == res2.ok).mean() > 0.99  # the threshold may flip a voxel sitting on it
        both = res1.ok & res2.ok
        assert rel_max(res2.G[both], res1.G[both]) < 1e-3
        np.testing.assert_allclose(res2.lowr_slope[both], res1.lowr_slope[both], rtol=1e-3, atol=1e-4)

    @pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
    def test_equals_numpy_twin(self, dtype, tol):
        """3000 voxels holding several phases: G and every quality figure equal the numpy engine's
        (G to ``tol`` of its maximum, the figures to 10 ``tol``)."""

        self.skip_on_twin()
        rng = np.random.default_rng(2)
        pats = np.stack([np.interp(Q_A, p.q_A, p.intensity) for p in phase_library()])
        mix = rng.uniform(0, 40, (3000, len(pats))) @ pats  # voxels holding several phases
        op = build_operator(Q_A, **NI_ARGS, lorch=True)
        ref = compute_pdf(mix, op, min_scale=10.0, dtype=dtype)
        got = compute_pdf(self.asarray(mix), op, min_scale=10.0, dtype=dtype)
        assert isinstance(got.G, self.xp.ndarray)
        assert rel_max(self.asnumpy(got.G), ref.G) < tol
        for name in ("scale", "fq_highq_rms", "lowr_slope", "lowr_residual"):
            np.testing.assert_allclose(self.asnumpy(getattr(got, name)), getattr(ref, name), rtol=10 * tol)
