"""The ready workflows of workflows/ (issue 25 item 9), each loaded as a user would copy it beside
a scan (its relative paths resolved against a simulated folder of its kind) and run on that scan:
an ID15-style Pilatus CBF scan with a folder per slice, an Eiger/BLISS HDF5 scan placed by its
motors, PDF-CT, live mode following an acquisition, and a reprocess of a finished run.

Only the scan's size (and the store's path) is set for the small simulated scans; every other key
is the file's own.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from xrdct_dask import store
from xrdct_dask.config import load_changes, workflow_from_dict
from xrdct_dask.io.status import FrameStatus

REPO = Path(__file__).resolve().parents[1]
READY = REPO / "workflows"
FILES = ["eiger-bliss-hdf5.yaml", "id15-pilatus-cbf.yaml", "live.yaml", "pdf-ct.yaml", "reprocess.yaml"]
NZ, NW, NX = 2, 8, 10


def ready(name: str, folder: Path, store_path: Path):
    """workflows/``name`` as if it sat in ``folder`` (its relative paths resolved there), with the
    simulated scan's size and ``store_path``."""
    raw = yaml.safe_load((READY / name).read_text())
    return workflow_from_dict(raw, base_dir=folder, source=str(READY / name), overrides={
        "scan.nz": NZ, "scan.nomega": NW, "scan.nx": NX, "store.path": str(store_path)})


def simulated(tmp_path_factory, name: str, **kw):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp(name) / "scan", nz=NZ, nomega=NW, nx=NX, seed=6, **kw)


@pytest.fixture(scope="module")
def flat_scan(tmp_path_factory):
    return simulated(tmp_path_factory, "flat")


@pytest.fixture(scope="module")
def pdf_ct_run(flat_scan, cluster, tmp_path_factory):
    """workflows/pdf-ct.yaml run on the flat CBF scan: ``(workflow, store)``."""
    from xrdct_dask import run

    wf = ready("pdf-ct.yaml", flat_scan.root, tmp_path_factory.mktemp("pdfct") / "run.zarr")
    return wf, run(wf, cluster=cluster, progress=False, summary=False)


def complete_and_ok(path: Path) -> np.ndarray:
    assert store.task_state(path).complete
    status = store.open_array(path, f"{store.REDUCED}/frame_status", "r")[...]
    assert (status == FrameStatus.OK).all(), np.unique(status, return_counts=True)
    return status


def test_the_ready_workflows_are_documented_and_valid():
    """Each file says what it is for and how to run it (a comment header naming the xrdct command)
    and validates as a workflow (the changes file: as changes of the simulated scan's workflow)."""
    assert sorted(p.name for p in READY.glob("*.yaml")) == FILES
    for name in FILES:
        text = (READY / name).read_text()
        lines = text.splitlines()
        header = "\n".join(lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])
        assert "xrdct " in header and "tests/" in header, name
        if name != "reprocess.yaml":
            ready(name, READY, READY / "run.zarr")  # validates (paths are not opened)
    assert load_changes(READY / "reprocess.yaml")["recon.filter"] == "hann"


@pytest.mark.slow  # a simulation and a run: ~15-30 s
def test_id15_pilatus_cbf_workflow_runs_on_a_scan_of_its_layout(cluster, tmp_path_factory, tmp_path):
    """A folder of CBF files per slice (``slice_{z:04d}/frame_{index:07d}.cbf``), scan file and
    monitor: every frame read and used, every stage done, no PDF; the store keeps the file's own
    choices (sigma-clip, Hann filter, stripe and air corrections)."""
    from xrdct_dask import run

    sc = simulated(tmp_path_factory, "id15", frames="slice_{z:04d}/frame_{index:07d}.cbf")
    wf = ready("id15-pilatus-cbf.yaml", sc.root, tmp_path / "run.zarr")
    path = run(wf, cluster=cluster, progress=False, summary=False)
    complete_and_ok(path)
    kept = store.read_attrs(path)["workflow"]
    assert (kept["integrate"]["outlier"], kept["recon"]["filter"], kept["sinogram"]["stripes"],
            kept["sinogram"]["background"]) == ("sigma-clip", "hann", True, True)
    assert not (path / store.PDF).exists() or not any((path / store.PDF).iterdir())
    rec = store.open_array(path, f"{store.RECON}/intensity", "r")[...]
    assert np.isfinite(rec).all() and rec.max() > 0


@pytest.mark.slow  # a simulation and a run: ~15-30 s
def test_eiger_bliss_hdf5_workflow_places_frames_by_their_motors(cluster, tmp_path_factory, tmp_path):
    """An Eiger-like master with bitshuffle-LZ4 data files and the motors and I0 counter in
    /entry/measurement: every frame used, placed by its measured omega, x and z, the monitor read
    from the counter (the store's monitor equals the simulated I0 / its median, to float32)."""
    from xrdct_dask import run

    sc = simulated(tmp_path_factory, "eiger", fmt="h5", frames_per_file=32)
    wf = ready("eiger-bliss-hdf5.yaml", sc.root, tmp_path / "run.zarr")
    path = run(wf, cluster=cluster, progress=False, summary=False)
    complete_and_ok(path)
    positions = store.read_attrs(path)["positions"]
    assert positions["frames placed by"].startswith("measured positions (0 frames")
    assert all("measurement/" in positions[k] for k in ("omega_deg", "x_mm", "z_mm")), positions
    i0 = np.loadtxt(sc.monitor)
    index = store.open_array(path, f"{store.REDUCED}/frame_index", "r")[...]
    monitor = store.open_array(path, f"{store.REDUCED}/monitor", "r")[...]
    np.testing.assert_allclose(monitor, i0[index], rtol=1e-6)


@pytest.mark.slow  # uses the module's PDF-CT run: ~20-40 s
def test_pdf_ct_workflow_gives_g_of_r_in_every_voxel(pdf_ct_run):
    """G(r) from 0.5 to 30 A in every voxel that scatters, finite; in the Ni disk of the phantom the
    mean G peaks at Ni's first shell, a / sqrt(2) = 2.49 A (within 0.1 A)."""
    wf, path = pdf_ct_run
    complete_and_ok(path)
    r = store.open_array(path, "r", "r")[...]
    assert r[0] == pytest.approx(0.5) and r[-1] == pytest.approx(30.0, abs=0.011)
    G = store.open_array(path, f"{store.PDF}/G", "r")[...]
    ok = store.open_array(path, f"{store.PDF}/ok", "r")[...]
    assert ok.any() and np.isfinite(G[ok]).all()
    truth = np.load(Path(wf.inputs.poni).parent / "truth.npz")
    ni = list(truth["phase_names"]).index("Ni")
    inside = (truth["phase_maps"][ni] > 0.99) & ok
    assert inside.sum() >= 3
    g = G[inside].mean(axis=0)
    near = (r > 1.8) & (r < 3.2)
    assert abs(r[near][np.argmax(g[near])] - 3.524 / np.sqrt(2)) < 0.1


@pytest.mark.slow  # a watch following a simulated acquisition: ~20-40 s
@pytest.mark.timeout(300)
def test_live_workflow_follows_an_acquisition(flat_scan, cluster, tmp_path):
    """Frames renamed into place at 40 Hz in an empty copy of the scan's folder: ``watch`` with
    workflows/live.yaml follows them to the end (no idle timeout, no frame missing), every slice
    reconstructed and its G(r) computed, every frame used."""
    from xrdct_dask.runs.live import watch
    from xrdct_dask.simulate import stream_frames

    folder = tmp_path / "acq"
    shutil.copytree(flat_scan.root, folder, ignore=shutil.ignore_patterns("frames", "*.zarr", "*.png"))
    (folder / "frames").mkdir()
    src = [flat_scan.frame_path(i) for i in range(NZ * NW * NX)]
    writer = threading.Thread(target=stream_frames, args=(src, [folder / "frames" / p.name for p in src], 40.0),
                              daemon=True)
    wf = ready("live.yaml", folder, folder / "run.zarr")
    writer.start()
    res = watch(wf, scheduler_address=cluster.scheduler_address, idle_timeout_s=60, png_every_s=0, progress=False,
                summary=False)
    writer.join()
    assert not res.timed_out and res.missing == 0 and sorted(res.slices) == list(range(NZ))
    complete_and_ok(res.store)


@pytest.mark.slow  # uses the module's PDF-CT run, then reprocesses it: ~15-30 s
def test_reprocess_changes_rerun_only_what_they_change(pdf_ct_run, cluster):
    """workflows/reprocess.yaml on the PDF-CT run: a new store beside it with the file's changes,
    started at the reconstruction (its sinogram and recon keys), reduced/ hard-linked from the
    parent (same inodes: not integrated again), G(r) to the new rmax (25 A)."""
    import os

    from xrdct_dask.runs.reprocess import reprocess

    wf, parent = pdf_ct_run
    (child,) = reprocess([parent], load_changes(READY / "reprocess.yaml"), cluster=cluster, progress=False,
                         summary=False)
    assert child != parent and child.parent == parent.parent and store.task_state(child).complete
    attrs = store.read_attrs(child)
    assert attrs["reprocess"]["from"] == "recon" and attrs["parent"]["path"] == str(parent.resolve())
    kept = attrs["workflow"]
    assert (kept["recon"]["filter"], kept["sinogram"]["stripes"], kept["pdf"]["rmax"], kept["pdf"]["lorch"]) == \
        ("hann", True, 25.0, True)
    chunk = next(p for p in (parent / store.REDUCED / "intensity").rglob("*") if p.is_file() and p.name.isdigit())
    twin = child / chunk.relative_to(parent)
    assert os.stat(chunk).st_ino == os.stat(twin).st_ino
    assert store.open_array(child, "r", "r")[-1] == pytest.approx(25.0, abs=0.011)
