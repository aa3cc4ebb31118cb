"""Self-absorption correction in the workflow (``sinogram.absorption``): the transmission channel
(``inputs.transmission``) is checked before anything is written, stored per frame, reconstructed
into the slice's attenuation map (``recon/mu``) and used to correct every q block; on a dense
sample simulated with attenuation (``simulate_scan(mu_per_px=...)``) the phase maps come closer
to the truth.  The science is tested on every engine in ``SinogramPrepTests``."""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask.config import WorkflowError, load_workflow


def _bad_transmission(tmp_path, sim_scan, text: str | None):
    """open_run of the simulated scan with a transmission file holding ``text`` (None: absent):
    the one-line error, and whether anything was written where the store would be."""
    from xrdct_dask.runs.open import open_run

    path = tmp_path / "transmission.txt"
    if text is not None:
        path.write_text(text)
    wf = load_workflow(sim_scan.workflow, {"store.path": str(tmp_path / "run.zarr"),
                                           "inputs.transmission": str(path), "sinogram.absorption": "transmission"})
    with pytest.raises(WorkflowError) as err:
        open_run(wf)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run.zarr").exists() and not [p for p in tmp_path.iterdir() if p.name != path.name]
    return str(err.value)


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_bad_transmission_input_is_a_one_line_error_before_the_store(sim_scan, tmp_path):
    """A transmission file that is missing, of the wrong length, or holding a zero, a negative or a
    non-number reading stops the run with one line naming inputs.transmission, before the store
    (or anything beside it) is created; absorption: transmission without the file is refused when
    the workflow is read."""
    n = sim_scan.nz * sim_scan.nomega * sim_scan.nx
    good = np.full(n, 8e4)
    lines = lambda v: "\n".join(f"{x:.1f}" for x in v) + "\n"  # noqa: E731
    assert (_bad_transmission(tmp_path, sim_scan, None)
            == f"inputs.transmission: {tmp_path / 'transmission.txt'} not found")
    assert _bad_transmission(tmp_path, sim_scan, lines(good[:-1])).endswith(
        f"{n - 1} values for a scan of {n} frames (one reading per frame, in acquisition order)")
    v = good.copy()
    v[7] = 0.0
    assert _bad_transmission(tmp_path, sim_scan, lines(v)).endswith(
        "1 values are zero, negative or not a number (the first is value 8): a transmission reading must be > 0")
    # the same check without a store around it: more values, negative, not a number
    from xrdct_dask.runs.scanlayout import read_transmission

    wf = load_workflow(sim_scan.workflow, {"inputs.transmission": str(tmp_path / "t.txt")})
    for values, end in ((np.r_[good, 1.0], f"{n + 1} values for a scan of {n} frames"),
                        (np.where(np.arange(n) >= 100, -3.0, good), f"{n - 100} values are zero, negative or not a "
                                                                     f"number (the first is value 101)"),
                        (np.r_[good[:-1], np.nan], "1 values are zero, negative or not a number (the first is "
                                                   f"value {n})")):
        (tmp_path / "t.txt").write_text(lines(values))
        with pytest.raises(WorkflowError,
                           match=r"^inputs.transmission: .*" + end.replace("(", r"\(").replace(")", r"\)")):
            read_transmission(wf, tmp_path / "column.f8", n)
    with pytest.raises(WorkflowError, match="sinogram.absorption: transmission needs inputs.transmission"):
        load_workflow(sim_scan.workflow, {"sinogram.absorption": "transmission"})
    with pytest.raises(WorkflowError, match="sinogram.absorption: scattering needs sinogram.absorption_mu_max_per_mm"):
        load_workflow(sim_scan.workflow, {"sinogram.absorption": "scattering"})


MU_PER_PX = (0.12, 0.10, 0.06, 0.04)  # Ni, Fe, NaCl, aSi over a 24 px slice: transmission down to ~0.15


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """A dense sample (1 slice, 24 angles x 24 steps) simulated with self-absorption and its
    transmission channel, integrated once into a store made for the correction: ``(path, scan)``."""
    from xrdct_dask import store
    from xrdct_dask.pipeline.tasks_integrate import integrate_block
    from xrdct_dask.runs.open import open_run
    from xrdct_dask.simulate import simulate_scan

    scan = simulate_scan(tmp_path_factory.mktemp("dense"), nz=1, nomega=24, nx=24, seed=5, zinger_rate=0.0,
                         spot_rate=0.0, peak_counts=1e6, npt_rad=300, mu_per_px=MU_PER_PX)
    wf = load_workflow(scan.workflow, {"store.path": str(scan.root / "run.zarr"), "pdf.enabled": False,
                                       "sinogram.absorption": "transmission"})
    ctx = open_run(wf)
    for block in store.frame_blocks(1, 24, ctx.layout.omega_chunk):
        integrate_block(block, ctx)
    return ctx.store_path, scan


def _reconstruct(path, overrides: dict) -> np.ndarray:
    """Centre (and attenuation map) and every q block of slice 0 of the store at ``path`` with the
    stored workflow changed by ``overrides``; the volume (ny, nx, nq)."""
    from xrdct_dask import store
    from xrdct_dask.config import workflow_from_dict
    from xrdct_dask.pipeline.tasks_recon import find_center, reconstruct_block
    from xrdct_dask.runs.open import context_from_store

    ctx = context_from_store(workflow_from_dict(store.read_attrs(path)["workflow"], overrides=overrides), path)
    geo = find_center(0, ctx)
    nq = store.open_array(path, "q", "r").shape[0]
    for qs in store.q_blocks(nq, ctx.layout.q_chunk):
        reconstruct_block(0, qs, geo, ctx)
    return store.open_array(path, "recon/intensity", "r")[0]


@pytest.mark.slow
def test_dense_sample_phase_maps_come_closer_to_the_truth(dense_run):
    """The transmission channel is stored per frame and reconstructed into the slice's attenuation
    map (within 15 % RMS of the simulated one); the phase fractions unmixed from every voxel's
    pattern are at least 2x closer to the truth (RMS inside the sample) with sinogram.absorption:
    transmission than without, and also with the attenuation estimated from the total scattering
    (absorption: scattering, the densest voxels' mu given) at least 1.5x closer."""
    from xrdct_dask import store
    from xrdct_dask.pipeline.integrator import integrator_for
    from xrdct_dask.simulate import phase_patterns_as_measured

    path, scan = dense_run
    truth = scan.load_truth()
    gt = truth["phase_maps"][:, 0]
    inside = gt.sum(axis=0) > 0
    trans = store.open_array(path, "reduced/transmission", "r")[0]
    assert np.isfinite(trans).all() and trans.min() > 0
    basis = phase_patterns_as_measured(integrator_for(load_workflow(scan.workflow)))

    def error(vol):
        flat = vol.reshape(-1, vol.shape[-1])
        sel = np.all(np.isfinite(flat), axis=0) & np.all(basis > 0, axis=0)
        coef = np.linalg.lstsq(basis[:, sel].T, flat[:, sel].T, rcond=None)[0].reshape(len(basis), *vol.shape[:2])
        fractions = coef / float(truth["intensity_scale"])  # the simulator's counts per unit of pattern
        return float(np.sqrt(np.mean((fractions - gt)[:, inside] ** 2)))

    corrected = error(_reconstruct(path, {}))
    mu = store.open_array(path, "recon/mu", "r")[0]
    assert np.sqrt(np.mean((mu - truth["mu"][0])[inside] ** 2)) < 0.15 * truth["mu"].max()
    estimated = error(_reconstruct(path, {"sinogram.absorption": "scattering",
                                          "sinogram.absorption_mu_max_per_mm": max(MU_PER_PX)}))
    plain = error(_reconstruct(path, {"sinogram.absorption": "off"}))
    assert 2 * corrected < plain and 1.5 * estimated < plain, (corrected, estimated, plain)
