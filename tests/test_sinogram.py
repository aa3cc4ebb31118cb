"""Sinogram preparation on simulated sinograms with ground truth (the simulator's phantom and its
skimage Radon transform): each correction undoes the artefact it is for, measured on the
reconstruction against the clean one, and leaves clean data alone."""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask import sinogram as sg
from xrdct_dask.recon import fbp
from xrdct_dask.testing.synthetic import make_phantom, omega_angles_deg, project

NX = 64


def phantom_block(nx: int = NX, nomega: int = 100, omega_range_deg: float = 180.0):
    """(sinogram (nomega, nx, nq), truth (nx, nx, nq), omega_deg): one q bin per phase map of the
    simulator's phantom, plus one q bin of their sum (a peak shared by all phases)."""
    maps = make_phantom(1, nx)[:, 0]
    maps = np.concatenate([maps, maps.sum(axis=0, keepdims=True)])
    omega = omega_angles_deg(nomega, omega_range_deg)
    sino = np.moveaxis(project(maps, omega), 0, -1).astype(np.float32)
    return sino, np.moveaxis(maps, 0, -1), omega


def circle(n: int) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= (n // 2 - 1) ** 2


def rms(a, mask=None):
    a = a[mask] if mask is not None else a
    return float(np.sqrt(np.mean(np.square(a))))


def poisson(sino, counts: float, rng):
    """Poisson noise at ``counts`` for the brightest value, back in the sinogram's units."""
    scale = counts / sino.max()
    return (rng.poisson(np.clip(sino, 0, None) * scale) / scale).astype(np.float32)


def ring_amplitude(diff: np.ndarray, radii) -> float:
    """Largest |azimuthal mean| of a difference image on the 1-pixel annuli of the given radii
    around the centre: a stripe at column x back-projects to a ring of radius |x - nx // 2|."""
    n = diff.shape[0]
    yy, xx = np.mgrid[:n, :n]
    rad = np.rint(np.hypot(yy - n // 2, xx - n // 2)).astype(int)
    return max(abs(float(diff[rad == r].mean())) for r in radii)


# ------------------------------------------------------------------------------------------ I0
def test_monitor_normalisation_undoes_beam_decay(rng):
    """A sinogram recorded with a drifting I0 (x monitor / reference) is restored exactly (float32)."""
    sino, _, _ = phantom_block(nomega=40)
    monitor = 1e5 * (1 + 0.2 * np.sin(np.arange(sino.shape[0] * NX) / 37.0)).reshape(sino.shape[:2])
    recorded = sino * (monitor / 1e5)[..., None]
    np.testing.assert_allclose(sg.normalize_monitor(recorded, monitor, reference=1e5), sino, rtol=1e-5, atol=1e-6)
    monitor[3, 5] = 0  # a dead monitor reading: the frame becomes missing
    assert np.isnan(sg.normalize_monitor(recorded, monitor)[3, 5]).all()
    with pytest.raises(ValueError, match=r"the monitor is \(2, 2\) but the sinogram's frames are \(40, 64\)"):
        sg.normalize_monitor(sino, np.ones((2, 2)))


# ------------------------------------------------------------------------------------------ bad frames
def test_bad_frames_are_filled_from_neighbours_and_recorded(rng):
    """5% of frames lost (NaN or flagged) plus one whole projection: filling from neighbours keeps the
    reconstruction within 2% (RMS, of the phase fraction 1) of the clean one, and the returned
    mask names exactly the frames that were filled."""
    sino, truth, omega = phantom_block()
    ok = rng.random(sino.shape[:2]) > 0.05
    ok[37] = False
    damaged = sino.copy()
    damaged[~ok] = np.nan
    damaged[5, 7] = 1e6  # flagged bad but with finite garbage: frame_ok wins
    ok[5, 7] = False
    filled, mask = sg.fill_bad_frames(damaged, ok)
    np.testing.assert_array_equal(mask, ~ok)
    assert np.isfinite(filled).all()
    np.testing.assert_array_equal(filled[ok], sino[ok])  # good frames untouched
    inside = circle(NX)
    clean = fbp(sino, omega)
    assert rms(fbp(filled, omega) - clean, inside) < 0.02
    zeroed = np.where(ok[..., None], sino, 0)  # what not filling does: 5% missing rays
    assert rms(fbp(zeroed, omega) - clean, inside) > 3 * rms(fbp(filled, omega) - clean, inside)


def test_prepare_records_filled_frames_and_can_switch_filling_off():
    sino, _, omega = phantom_block(nomega=30)
    ok = np.ones(sino.shape[:2], bool)
    ok[[2, 9], [10, 11]] = False
    out, info = sg.prepare_sinogram(np.where(ok[..., None], sino, np.nan), ok, omega, center=NX // 2)
    assert info["filled"] == 2 and info["steps"] == ["fill_bad"] and info["center"] == NX // 2
    out, info = sg.prepare_sinogram(np.where(ok[..., None], sino, np.nan), ok, omega, fill_bad=False, center=32)
    assert info["filled"] == 0 and (out[~ok] == 0).all() and np.isfinite(out).all()


# ------------------------------------------------------------------------------------------ centre
@pytest.mark.parametrize("omega_range", [180, 360])
@pytest.mark.parametrize("offset_px", [-2.63, 0.37, 3.1])
def test_center_of_rotation_found_to_a_quarter_pixel(omega_range, offset_px, rng):
    """The axis displaced by a known fraction of a pixel (cubic-spline shift of the sinogram, Poisson
    noise at 2000 counts) is found within 0.25 px, and reconstructing with it recovers the phantom
    as well as the centred scan does."""
    from scipy.ndimage import shift

    sino, truth, omega = phantom_block(nomega=90 if omega_range == 180 else 180, omega_range_deg=omega_range)
    moved = shift(sino, (0, offset_px, 0), order=3, mode="constant")
    noisy = poisson(moved, 2000, rng)
    c = sg.estimate_center(noisy, omega)
    assert abs(c - (NX // 2 + offset_px)) <= 0.25, c
    inside = circle(NX) & (np.hypot(*np.mgrid[-NX // 2:NX // 2, -NX // 2:NX // 2]) < NX // 2 - 5)
    err_found = rms(fbp(noisy, omega, center=c)[..., 4] - truth[..., 4], inside)
    err_centred = rms(fbp(poisson(sino, 2000, rng), omega)[..., 4] - truth[..., 4], inside)
    assert err_found < 1.2 * err_centred


def test_manual_center_overrides_the_estimate():
    sino, _, omega = phantom_block(nomega=30)
    ok = np.ones(sino.shape[:2], bool)
    _, auto = sg.prepare_sinogram(sino, ok, omega)
    _, manual = sg.prepare_sinogram(sino, ok, omega, center=30.5)
    assert abs(auto["center"] - NX // 2) < 0.25 and manual["center"] == 30.5 and "center" not in manual["steps"]


# ------------------------------------------------------------------------------------------ jitter
def test_jitter_is_measured_and_removed(rng):
    """Random projection shifts (sd 1 px, without the part that is a sinusoid of omega, which is
    indistinguishable from where the sample sits) are measured to 0.1 px RMS, and correcting them
    cuts the reconstruction error against the jitter-free scan at least 4x."""
    from scipy.ndimage import shift

    sino, truth, omega = phantom_block()
    _, true_shift = sg.fit_sinusoid(rng.normal(0, 1.0, sino.shape[0]), omega)
    jittered = np.stack([shift(p, (s, 0), order=3, mode="constant") for p, s in zip(sino, true_shift)])
    measured = sg.estimate_jitter(jittered, omega, max_shift_px=4)
    assert rms(measured - true_shift) < 0.1
    corrected = sg.shift_projections(jittered, measured)
    inside = circle(NX)
    clean = fbp(sino, omega)
    assert rms(fbp(corrected, omega) - clean, inside) * 4 < rms(fbp(jittered, omega) - clean, inside)


def test_shift_projections_moves_each_row():
    s = np.zeros((2, 10, 1), np.float32)
    s[:, 4] = 1
    out = sg.shift_projections(s, [0.5, -2.0])
    np.testing.assert_allclose(out[0, 2:6, 0], [-0.0625, 0.5625, 0.5625, -0.0625])  # Keys cubic, half a pixel
    np.testing.assert_allclose(out[1, :, 0], np.eye(10)[6], atol=1e-7)  # whole pixels: an exact move by +2
    ramp = np.tile(np.arange(10, dtype=np.float32)[None, :, None], (1, 1, 2))
    np.testing.assert_allclose(sg.shift_projections(ramp, [0.3])[0, 1:8, 0], np.arange(1, 8) + 0.3, rtol=1e-6)


# ------------------------------------------------------------------------------------------ background
@pytest.mark.parametrize("per_projection", [False, True])
def test_air_background_from_edge_columns(per_projection, rng):
    """Air scattering b(q) (different per q, drifting 10% over the scan) recorded at every x is
    removed by subtracting the sample-free edge columns: the reconstruction's error against the
    clean one drops at least 10x (per projection) or 4x (one background for the whole scan)."""
    sino, _, omega = phantom_block()
    air_q = np.array([0.3, 0.1, 0.5, 0.2, 0.4], np.float32) * sino.max()
    drift = 1 + 0.1 * np.linspace(0, 1, sino.shape[0])[:, None, None]
    recorded = sino + (air_q[None, None, :] * drift).astype(np.float32)
    corrected, bg = sg.subtract_background(recorded, edge_columns=2, per_projection=per_projection)
    assert bg.shape == ((sino.shape[0] if per_projection else 1), 1, 5)
    inside = circle(NX)
    clean = fbp(sino, omega)
    gain = rms(fbp(recorded, omega) - clean, inside) / rms(fbp(corrected, omega) - clean, inside)
    assert gain > (10 if per_projection else 4), gain
    with pytest.raises(ValueError, match="edge_columns"):
        sg.subtract_background(recorded, edge_columns=40)


# ------------------------------------------------------------------------------------------ stripes
def test_stripe_filter_suppresses_rings_and_keeps_the_phase_maps(rng):
    """Hot and miscalibrated detector bins (columns with a gain error of 8-12% or an offset of 3% of
    the maximum, at every angle and q) ring in every q bin's map; the stripe filter finds those
    columns and cuts each map's ring amplitude at least 5x, and every map still correlates with
    the phantom at r >= 0.9.  (128 px: the filter interpolates a stripe from its neighbouring
    columns, which needs features wider than a couple of pixels.)"""
    n = 128
    sino, truth, omega = phantom_block(nx=n, nomega=200)
    noisy = poisson(sino, 5000, rng)
    striped = noisy.copy()
    stripes = [(28, 1.10, 0.0), (43, 0.92, 0.0), (81, 1.12, 0.0), (93, 1.0, 0.03)]
    for x, gain, offset in stripes:
        striped[:, x] = striped[:, x] * gain + offset * sino.max()
    filtered, found = sg.remove_stripes(striped)
    assert {x for x, *_ in stripes} <= set(found)
    clean, rec_striped, rec_filtered = fbp(noisy, omega), fbp(striped, omega), fbp(filtered, omega)
    radii = [abs(x - n // 2) for x, *_ in stripes]
    inside = circle(n)
    for k in range(sino.shape[-1]):
        before = ring_amplitude(rec_striped[..., k] - clean[..., k], radii)
        after = ring_amplitude(rec_filtered[..., k] - clean[..., k], radii)
        assert before > 5 * after, (k, before, after)
        r = np.corrcoef(rec_filtered[..., k][inside], truth[..., k][inside])[0, 1]
        assert r >= 0.9, (k, r)
    # columns given (as the workflow passes them from the slice's q-summed sinogram) act the same
    again, cols = sg.remove_stripes(striped, columns=found)
    assert cols == found and np.array_equal(again, filtered)


# ------------------------------------------------------------------------------------------ zingers
def test_zingers_are_removed_and_clean_data_left_alone(rng):
    """Spikes of 5-50x the local value in single (omega, x, q) points (zingers, single-frame spots)
    are found (>= 95%) and replaced; the reconstruction error they cause drops at least 5x; on
    the same data without spikes (Poisson noise at 2000 counts) fewer than 0.05% of the points
    are touched."""
    sino, _, omega = phantom_block()
    noisy = poisson(sino, 2000, rng)
    _, n_clean = sg.suppress_zingers(noisy)
    assert n_clean < 5e-4 * noisy.size, n_clean
    spiky = noisy.copy()
    inside = np.argwhere(sino > 0.3 * sino.max())
    picks = inside[rng.choice(len(inside), 60, replace=False)]
    w, x, q = picks.T
    spiky[w, x, q] *= rng.uniform(5, 50, len(picks)).astype(np.float32)
    cleaned, n = sg.suppress_zingers(spiky)
    found = np.abs(cleaned[w, x, q] - noisy[w, x, q]) < 0.5 * np.abs(spiky[w, x, q] - noisy[w, x, q])
    assert found.mean() >= 0.95 and n < len(picks) + 2 * n_clean + 5
    ref = fbp(noisy, omega)
    assert rms(fbp(spiky, omega) - ref) > 5 * rms(fbp(cleaned, omega) - ref)


def test_noise_free_sinogram_has_no_zingers():
    """The trace of a real object is continuous along omega: nothing in a clean phantom sinogram is
    an isolated spike (also not the single-voxel objects' traces)."""
    sino, _, _ = phantom_block()
    dots = np.zeros((1, NX, NX))
    dots[0, 20, 40] = dots[0, 45, 30] = 1.0
    dot_sino = np.moveaxis(project(dots, omega_angles_deg(100)), 0, -1).astype(np.float32)
    for s in (sino, dot_sino):
        out, n = sg.suppress_zingers(s)
        assert n == 0 and np.array_equal(out, s)


# ------------------------------------------------------------------------------------------ 180 / 360
def test_full_turn_scan_reconstructs_as_the_half_turn():
    """A 360 degree scan (each ray measured twice, mirrored) gives the same FBP image as a 180
    degree scan of the same angular step, to 2% of the phase fraction."""
    s180, truth, om180 = phantom_block(nomega=90, omega_range_deg=180)
    s360, _, om360 = phantom_block(nomega=180, omega_range_deg=360)
    inside = circle(NX)
    r180, r360 = fbp(s180, om180), fbp(s360, om360)
    assert rms(r360 - r180, inside) < 0.02
    assert rms(r360 - truth, inside) < rms(r180 - truth, inside) * 1.05


# ------------------------------------------------------------------------------------------ chain
def test_prepare_chain_applies_switched_on_steps_in_order(rng):
    sino, _, omega = phantom_block(nomega=60)
    ok = np.ones(sino.shape[:2], bool)
    recorded = sino + 0.1 * sino.max()
    recorded[10, 30, 2] *= 40
    out, info = sg.prepare_sinogram(recorded, ok, omega, zingers=True, background=True, stripes=True, jitter=True)
    assert info["steps"] == ["fill_bad", "zingers", "background", "stripes", "jitter", "center"]
    assert [k for k in sg.PREP_STEPS if k in info["steps"]] == info["steps"]  # the documented order
    assert info["zingers"] >= 1 and isinstance(info["stripe_columns"], list) and len(info["shifts_px"]) == 60 and abs(info["center"] - NX // 2) < 0.25
    assert out.dtype == np.float32 and out.shape == sino.shape
    with pytest.raises(ValueError, match="omega has 3 angles but the sinogram has 60 rows"):
        sg.prepare_sinogram(sino, ok, omega[:3])


# ------------------------------------------------------------------------------------------ GPU twin
@pytest.mark.gpu
def test_prep_functions_on_cupy_equal_numpy(rng):
    cp = pytest.importorskip("cupy")
    from xrdct_dask.backend import gpu_available

    if not gpu_available():
        pytest.skip("no CUDA device")
    sino, _, omega = phantom_block(nomega=60)
    noisy = poisson(sino, 2000, rng)
    noisy[7, 20, 1] *= 30
    ok = rng.random(sino.shape[:2]) > 0.05
    noisy[~ok] = np.nan
    kw = dict(zingers=True, background=True, stripes=True, jitter=True)
    ref, ref_info = sg.prepare_sinogram(noisy, ok, omega, **kw)
    out, info = sg.prepare_sinogram(cp.asarray(noisy), cp.asarray(ok), omega, **kw)
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    assert info["filled"] == ref_info["filled"] and info["zingers"] == ref_info["zingers"]
    assert abs(info["center"] - ref_info["center"]) < 1e-3


# ------------------------------------------------------------------------------------------ scan orders
@pytest.mark.parametrize("order,fast_axis", [("raster", "x"), ("snake", "x"), ("raster", "omega"),
                                              ("snake", "omega"), ("interlaced", "x")])
@pytest.mark.parametrize("passes", [2, 3])
def test_scan_layout_is_a_bijection(order, fast_axis, passes):
    """Every grid point (iz, iomega, ix) is acquired exactly once and grid_index inverts the order."""
    from xrdct_dask.io.scan import acquisition_order, grid_index

    grid = acquisition_order(2, 7, 5, fast_axis, order, passes)
    assert len({tuple(g) for g in grid}) == 2 * 7 * 5
    np.testing.assert_array_equal(grid_index(*grid.T, 7, 5, fast_axis, order, passes), np.arange(len(grid)))


def test_interlaced_order_visits_omega_in_interleaved_passes():
    """Pass p of an interlaced scan takes iomega = p, p + passes, ...; x snakes line by line."""
    from xrdct_dask.io.scan import acquisition_order

    grid = acquisition_order(1, 6, 3, "x", "interlaced", passes=3)
    np.testing.assert_array_equal(grid[::3, 1], [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(grid[:6, 2], [0, 1, 2, 2, 1, 0])


def test_interlaced_config_is_validated():
    from xrdct_dask.config import WorkflowError, workflow_from_dict

    base = {"inputs": {"frames": "f_{index}.cbf", "poni": "g.poni"}, "store": "run.zarr",
            "scan": {"nz": 1, "nomega": 8, "nx": 4, "order": "interlaced"}}
    assert workflow_from_dict(base).scan.interlace_passes == 2
    with pytest.raises(WorkflowError, match="interlaced interleaves omega lines: it needs fast_axis x"):
        workflow_from_dict(base, overrides={"scan.fast_axis": "omega"})
    with pytest.raises(WorkflowError, match="scan.interlace_passes: 4 passes need inputs.scan_file"):
        workflow_from_dict(base, overrides={"scan.interlace_passes": 4})
    assert workflow_from_dict(base, overrides={"scan.interlace_passes": 4, "inputs.scan_file": "s.csv"})


def _reduce_and_reconstruct(scan, tmp_path, overrides: dict):
    """The workflow's stages in this process (no cluster): store, integrate, centre, reconstruct."""
    from xrdct_dask import stages, store
    from xrdct_dask.config import load_workflow
    from xrdct_dask.prepare import open_run

    wf = load_workflow(scan.workflow, {"store.path": str(tmp_path / "run.zarr"), "pdf.enabled": False} | overrides)
    ctx = open_run(wf)
    for block in store.frame_blocks(wf.scan.nz, wf.scan.nomega, ctx.layout.omega_chunk):
        stages.integrate_block(block, ctx)
    geo = stages.find_center(0, ctx)
    nq = store.open_array(ctx.store_path, "q", "r").shape[0]
    results = [stages.reconstruct_block(0, qs, geo, ctx) for qs in store.q_blocks(nq, ctx.layout.q_chunk)]
    return store.open_array(ctx.store_path, "recon/intensity", "r")[0], geo, results


@pytest.fixture(scope="module")
def order_scans(tmp_path_factory):
    """The same phantom acquired in raster, snake and interlaced order (1 slice, 24 angles x 16 steps,
    no zingers or spots, 1e6 counts at the brightest pixel, a fresh Poisson draw per frame)."""
    from xrdct_dask.testing.synthetic import simulate_scan

    return {order: simulate_scan(tmp_path_factory.mktemp(order), nz=1, nomega=24, nx=16, order=order, seed=3,
                                 zinger_rate=0.0, spot_rate=0.0, peak_counts=1e6, npt_rad=200)
            for order in ("raster", "snake", "interlaced")}


def test_raster_snake_and_interlaced_scans_reconstruct_to_the_same_volume(order_scans, tmp_path):
    """Frames land on the (omega, x) grid whatever the acquisition order (from the scan file, or
    from the scan section's arithmetic when there is none): the three volumes agree to 0.5% RMS
    (Poisson noise at >= 1e4 counts per q bin and frame; monitor drift differs per order and is
    normalised) and their axes to 0.05 px."""
    vols, centres = {}, {}
    for order, scan in order_scans.items():
        arithmetic = {"inputs.scan_file": None} if order != "snake" else {}
        vols[order], geo, results = _reduce_and_reconstruct(scan, tmp_path / order, arithmetic)
        centres[order] = geo["center"]
        assert all(r["steps"][:2] == ["fill_bad", "zingers"] for r in results)
    ref = vols["raster"]
    for order in ("snake", "interlaced"):
        diff = np.sqrt(np.mean((vols[order] - ref) ** 2)) / np.sqrt(np.mean(ref**2))
        assert diff < 5e-3, (order, diff)
        assert abs(centres[order] - centres["raster"]) < 0.05
    # and a scrambled grid would not pass: the test can fail
    assert np.sqrt(np.mean((vols["raster"][::-1] - ref) ** 2)) / np.sqrt(np.mean(ref**2)) > 0.1


def test_workflow_applies_every_switched_on_correction(order_scans, tmp_path):
    """With background, stripes and jitter switched on, the slice's centre, shifts and stripe columns
    come from find_center and every q block applies them.  The scan is clean, so stripes and
    jitter must leave it alone: the volume stays within 1% RMS of the background-only one (no
    stripe found, shifts < 0.1 px)."""
    scan = order_scans["snake"]
    bg = {"sinogram.background": True, "sinogram.background_columns": 1}
    ref, _, _ = _reduce_and_reconstruct(scan, tmp_path / "background", bg)
    vol, geo, results = _reduce_and_reconstruct(scan, tmp_path / "all", bg | {"sinogram.stripes": True,
                                                                               "sinogram.jitter": True})
    assert len(geo["shifts_px"]) == 24 and np.abs(geo["shifts_px"]).max() < 0.1 and geo["stripe_columns"] == []
    assert all(r["steps"] == ["fill_bad", "zingers", "background", "stripes", "jitter"] for r in results)
    assert np.sqrt(np.mean((vol - ref) ** 2)) < 0.01 * np.sqrt(np.mean(ref**2))
    manual, geo, results = _reduce_and_reconstruct(scan, tmp_path / "manual", {"sinogram.center": 7.5})
    assert geo["center"] == 7.5 and results[0]["center"] == 7.5
