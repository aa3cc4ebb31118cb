"""The whole workflow on a simulated scan, on a real LocalCluster and a zarr store on disk.

Physics checked against the simulator's ground truth: the reconstructed voxel patterns unmix
into the phantom's phase maps, and the PDF of the Ni region shows the fcc Ni shells, in both
tomographic orders (pdf-then-recon is a branch of the same graph); on a GPU the whole run equals
the CPU run.  The runs take 10-15 s each: ``slow`` (``make quick`` leaves them out).  Inputs
refused before compute are tests/test_open.py's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xrdct_dask import run
from xrdct_dask.backend import gpu_available
from xrdct_dask.config import load_workflow
from xrdct_dask.testing.references import NI_SHELLS, g_peaks, rel_max


@pytest.fixture(scope="module")
def result(sim_scan, tmp_path_factory):
    from distributed import LocalCluster

    out = tmp_path_factory.mktemp("run") / "run.zarr"
    wf = load_workflow(sim_scan.workflow, {"store.path": str(out)})
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster:
        path = run(wf, cluster=cluster, progress=False)
    return path, sim_scan


@pytest.mark.slow
def test_store_is_xarray_readable_with_named_dims(result):
    import xarray as xr

    path, scan = result
    red = xr.open_zarr(path, group="reduced")
    assert red["intensity"].dims == ("z", "omega", "x", "q")
    assert red["intensity"].shape == (2, 32, 24, 1000)
    assert set(red.coords) >= {"z", "omega", "x", "q"}
    rec = xr.open_zarr(path, group="recon")
    assert rec["intensity"].dims == ("z", "y", "x", "q")
    pdf = xr.open_zarr(path, group="pdf")
    assert pdf["G"].dims == ("z", "y", "x", "r")
    assert float(pdf["r"][1] - pdf["r"][0]) == pytest.approx(0.01)
    root = xr.open_zarr(path)
    attrs = root.attrs
    assert attrs["workflow"]["scan"]["nomega"] == 32 and "workflow_yaml" in attrs
    assert {"pyFAI", "zarr", "dask"} <= set(attrs["versions"])
    # the run's identity: the contents of every input file, and the sizes of sampled frames
    assert {"inputs.poni", "inputs.mask", "inputs.monitor"} <= set(attrs["input_contents"])
    assert all(len(v["sha256"]) == 64 for v in attrs["input_contents"].values())
    assert len(attrs["frame_sample"]["files"]) == len(attrs["frame_sample"]["bytes"]) == 256  # of 2 x 32 x 24
    assert attrs["stage_status"] == {"reduced": "done", "recon": "done", "pdf": "done", "view": "done"}
    assert bool(red["frame_ok"].all())
    assert (path.parent / "run-summary.png").stat().st_size > 10_000
    import zarr

    # data arrays are byte-shuffled LZ4 (fast to write at GPU rates), readable by any zarr v3: the
    # codec pipeline as the v3 spec writes it (zarr.json), read through zarr's metadata API
    arr = zarr.open_array(str(path / "reduced" / "intensity"), mode="r")
    codecs = [c if isinstance(c, dict) else c.to_dict() for c in arr.metadata.to_dict()["codecs"]]
    blosc = [c["configuration"] for c in codecs if c["name"] == "blosc"]
    assert len(blosc) == 1, codecs
    plain = {k: str(getattr(v, "value", v)) for k, v in blosc[0].items()}  # an enum or its JSON string
    assert (plain["cname"], plain["shuffle"]) == ("lz4", "shuffle"), codecs


@pytest.mark.slow
def test_reduced_patterns_equal_pyfai(result):
    """Frames land at their (z, omega, x) despite snake order, integrated as pyFAI does."""
    import fabio
    import pyFAI
    import zarr

    path, scan = result
    from xrdct_dask.io.scan import grid_index

    red = zarr.open_group(str(path / "reduced"), mode="r")
    monitor = np.loadtxt(scan.monitor)
    ref_monitor = zarr.open_group(str(path), mode="r").attrs["monitor_reference"]
    mask = fabio.open(str(scan.mask)).data != 0
    for iz, iw, ix in [(0, 0, 0), (0, 1, 3), (1, 31, 23), (1, 7, 11)]:
        idx = int(grid_index(iz, iw, ix, 32, 24, "x", "snake"))
        frame = fabio.open(str(scan.frame_path(idx))).data
        ai = pyFAI.load(str(scan.poni))
        ref = ai.integrate1d_ng(frame, 1000, unit="q_nm^-1", method=("full", "csr", "cython"), error_model="poisson",
                                polarization_factor=0.99, mask=mask | (frame < 0),
                                normalization_factor=monitor[idx] / ref_monitor)
        good = ref.sum_normalization > 0
        np.testing.assert_allclose(red["intensity"][iz, iw, ix][good], ref.intensity[good], rtol=1e-4)
        np.testing.assert_allclose(red["sigma"][iz, iw, ix][good], ref.sigma[good], rtol=1e-4)


def unmix(recon: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Least squares of every voxel's pattern ``(ny, nx, nq)`` onto phase patterns ``(nphase, nq)``."""
    flat = recon.reshape(-1, recon.shape[-1])
    sel = np.all(np.isfinite(flat), axis=0) & np.all(basis > 0, axis=0)
    coef, *_ = np.linalg.lstsq(basis[:, sel].T, flat[:, sel].T, rcond=None)
    return coef.reshape(len(basis), *recon.shape[:2])


@pytest.mark.slow
def test_phase_maps_correlate_with_ground_truth(result):
    """Pearson r >= 0.9 inside the sample for every phase, every slice."""
    import zarr

    from xrdct_dask.pipeline.integrator import integrator_for
    from xrdct_dask.simulate import phase_patterns_as_measured

    path, scan = result
    truth = scan.load_truth()
    recon = zarr.open_array(str(path / "recon" / "intensity"), mode="r")
    # the known phase patterns as this instrument records them (noise-free, same integrator)
    basis = phase_patterns_as_measured(integrator_for(load_workflow(scan.workflow)))
    for z in range(2):
        maps = unmix(recon[z], basis)
        gt = truth["phase_maps"][:, z]
        inside = gt.sum(axis=0) > 0
        for k, name in enumerate(truth["phase_names"]):
            r = np.corrcoef(maps[k][inside], gt[k][inside])[0, 1]
            assert r >= 0.9, f"slice {z} phase {name}: Pearson r = {r:.3f}"


@pytest.mark.slow
def test_ni_region_pdf_shows_fcc_shells(result):
    import zarr

    path, scan = result
    truth = scan.load_truth()
    g = zarr.open_array(str(path / "pdf" / "G"), mode="r")[:]
    r = zarr.open_array(str(path / "r"), mode="r")[:]
    ni = truth["phase_maps"][0] > 0.99  # (nz, ny, nx)
    # keep away from the region's edge, where FBP mixes in the neighbours
    from scipy.ndimage import binary_erosion

    core = np.stack([binary_erosion(m) for m in ni])
    mean_g = g[core].mean(axis=0)
    np.testing.assert_allclose(g_peaks(r, mean_g), NI_SHELLS, atol=0.02)


# ------------------------------------------------------------------------------------------
# pdf-then-recon: a branch of the same graph
# ------------------------------------------------------------------------------------------
def _figures(root):
    return {k: root[f"pdf/{k}"][:] for k in ("G", "scale", "ok", "fq_highq_rms", "lowr_slope", "lowr_residual")}


@pytest.mark.slow
def test_workflow_pdf_then_recon_matches_recon_then_pdf(pdf_then_recon_run):
    """pdf-then-recon, a branch of the graph: the frames' G(r) sinograms reconstructed.  The Ni
    region shows the fcc shells; the recon-then-pdf stage on the same run's recon/ gives the same
    G (1e-3 of max |G|) and figures, for the fixed scale (a linear map) and per voxel."""
    import xarray as xr
    import zarr
    from scipy.ndimage import binary_erosion

    from xrdct_dask import store
    from xrdct_dask.pipeline.tasks_pdf import pdf_rows, pdf_scale, reconstruct_pdf_aux, reconstruct_pdf_block
    from xrdct_dask.pipeline.tasks_recon import find_center
    from xrdct_dask.runs.open import context_from_store

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
        pdf_rows(z, ys, ctx, pdf_scale(z, ys, ctx))

    # the fixed scale: re-run the reconstruction steps of this order, then the other order's stage
    ctx = context("fixed")
    for z in range(2):
        center = find_center(z, ctx)
        reconstruct_pdf_aux(z, center, ctx)
        for rs in store.q_blocks(root["r"].shape[0], ctx.layout.r_chunk):
            reconstruct_pdf_block(z, rs, center, ctx)
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


# ------------------------------------------------------------------------------------------
# the whole run on a GPU
# ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not gpu_available(), reason="needs cupy and a CUDA GPU")
def test_workflow_on_gpu_equals_cpu_run(sim_scan, tmp_path):
    """The whole simulated workflow with the cupy engine gives the CPU run's store to 1e-5."""
    import zarr

    from xrdct_dask import run
    from xrdct_dask.config import load_workflow

    stores = {}
    for engine in ("numpy", "cupy"):
        wf = load_workflow(sim_scan.workflow, {"store.path": str(tmp_path / f"{engine}.zarr"),
                                               "integrate.engine": engine, "compute.n_workers": 1,
                                               "compute.threads_per_worker": 2})
        stores[engine] = run(wf, progress=False, summary=False)
    a = zarr.open_group(str(stores["numpy"]), mode="r")
    b = zarr.open_group(str(stores["cupy"]), mode="r")
    assert b.attrs["engine"] == "cupy"
    # the workers see the GPU: reconstruction and G(r) ran there too (recon.engine, pdf.engine auto)
    engines = b.attrs["run_summary"]["stage_engines"]
    assert engines["integrate"] == engines["recon"] == engines["pdf"] == ["cupy"], engines
    for name in ("reduced/intensity", "reduced/sigma", "recon/intensity", "pdf/G"):
        x, y = a[name][:], b[name][:]
        scale = np.nanmax(np.abs(x))
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


@pytest.mark.slow  # a whole (small) run
def test_the_library_writes_nothing_to_stdout_and_its_messages_go_to_the_console_logger(tmp_path, capsys, caplog):
    """Issue 19: the library returns data and the command line prints.  A library run with progress on
    prints nothing itself (the progress bars are dask's, on stderr-like widgets); the summary it used
    to print reaches the ``xrdct_dask.view.console`` logger."""
    import logging

    from distributed import LocalCluster

    from xrdct_dask import load_workflow, run
    from xrdct_dask.simulate import simulate_scan

    scan = simulate_scan(tmp_path / "scan", nz=1, nomega=8, nx=8, seed=5)
    wf = load_workflow(scan.workflow, {"store.path": str(tmp_path / "quiet.zarr"), "pdf.enabled": False})
    with caplog.at_level(logging.INFO, logger="xrdct_dask.view.console"), \
            LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0", host="127.0.0.1") as lc:
        run(wf, cluster=lc, progress=True, summary=False)
    said = [r.getMessage() for r in caplog.records if r.name == "xrdct_dask.view.console"]
    assert any(m.startswith("dask dashboard: ") for m in said), said
    assert any("frames integrated in" in m for m in said), said
    out = capsys.readouterr().out
    assert "dask dashboard" not in out and "frames integrated" not in out, out
