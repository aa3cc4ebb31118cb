"""The whole workflow on a simulated scan, on a real LocalCluster and a zarr store on disk.

Physics checked against the simulator's ground truth: the reconstructed voxel patterns unmix
into the phantom's phase maps, and the PDF of the Ni region shows the fcc Ni shells.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from xrdct_dask import run
from xrdct_dask.config import WorkflowError, load_workflow

from .test_pdf import NI_SHELLS, g_peaks


@pytest.fixture(scope="module")
def result(sim_scan, tmp_path_factory):
    from distributed import LocalCluster

    out = tmp_path_factory.mktemp("run") / "run.zarr"
    wf = load_workflow(sim_scan.workflow, {"store.path": str(out)})
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster:
        path = run(wf, cluster=cluster, progress=False)
    return path, sim_scan


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
    assert attrs["stage_status"] == {"reduced": "done", "recon": "done", "pdf": "done"}
    assert bool(red["frame_ok"].all())
    assert (path.parent / "run-summary.png").stat().st_size > 10_000
    import zarr

    # data arrays are byte-shuffled LZ4 (fast to write at GPU rates), readable by any zarr v3
    codec = zarr.open_array(str(path / "reduced" / "intensity"), mode="r").compressors[0]
    assert (codec.cname.value, str(codec.shuffle.value)) == ("lz4", "shuffle")


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


def test_phase_maps_correlate_with_ground_truth(result):
    """Pearson r >= 0.9 inside the sample for every phase, every slice."""
    import zarr

    from xrdct_dask.stages import integrator_for
    from xrdct_dask.testing.synthetic import phase_patterns_as_measured

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


def test_bad_inputs_fail_before_compute_with_one_line(sim_scan, tmp_path):
    wf_text = yaml.safe_load(sim_scan.workflow.read_text())

    def attempt(patch, where=tmp_path):
        data = {**wf_text, **patch, "store": {"path": str(where / "never.zarr")}}
        data["inputs"] = {k: (str(sim_scan.root / v) if isinstance(v, str) else v) for k, v in
                          {**wf_text["inputs"], **patch.get("inputs", {})}.items()}
        p = where / "wf.yaml"
        p.write_text(yaml.safe_dump(data))
        with pytest.raises(WorkflowError) as err:
            run(p, progress=False)
        assert "\n" not in str(err.value)
        assert not (where / "never.zarr").exists()  # nothing was created
        return str(err.value)

    assert "integrate.nbins: unknown key" in attempt({"integrate": {"nbins": 10}})
    assert "does not exist" in attempt({"inputs": {"frames": str(tmp_path / "nowhere" / "f_{index:06d}.cbf")}})
    # a PONI for the full-size Pilatus against frames of the binned detector
    from xrdct_dask.testing.synthetic import make_integrator

    make_integrator("pilatus2m").write(str(tmp_path / "big.poni"))
    msg = attempt({"inputs": {"poni": str(tmp_path / "big.poni")}})
    assert "detector is 1679 x 1475 pixels but the frames are 209 x 184" in msg


def test_open_array_is_reused_until_the_array_is_recreated(tmp_path):
    """Tasks open the same arrays again and again: one open per process while the array's
    metadata file is unchanged, a fresh open when the store is recreated in its place."""
    import zarr

    from xrdct_dask import store

    zarr.create_array(str(tmp_path / "a"), shape=(4,), dtype="f4", fill_value=0)
    first = store.open_array(tmp_path, "a")
    assert store.open_array(tmp_path, "a") is first
    assert store.open_array(tmp_path, "a", "r") is not first  # read-only is its own entry
    first[:] = 1
    import shutil

    shutil.rmtree(tmp_path / "a")
    zarr.create_array(str(tmp_path / "a"), shape=(6,), dtype="f4", fill_value=2)
    again = store.open_array(tmp_path, "a")
    assert again is not first and again.shape == (6,) and again[:].tolist() == [2.0] * 6
