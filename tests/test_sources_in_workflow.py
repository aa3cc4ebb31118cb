"""The frame sources of inputs.frames, through the whole workflow (issue 16).

The same simulated scan written as CBF files, as gzip-compressed CBF files and as an Eiger-like
HDF5 scan (master + data files, bitshuffle-LZ4 chunks of one frame) gives the same store, bit for
bit: the source changes how frames are read, never what they integrate to.  An HDF5 data file
that is missing flags its frames MISSING, and they are read once the file is there.
"""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.config import load_workflow
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.workflow import run

ARRAYS = ("reduced/intensity", "reduced/sigma", "reduced/frame_status", "recon/intensity", "pdf/G")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from xrdct_dask.testing.synthetic import simulate_scan

    root = tmp_path_factory.mktemp("sources")
    cbf = simulate_scan(root / "cbf", nz=1, nomega=8, nx=8, seed=7)
    h5 = simulate_scan(root / "h5", nz=1, nomega=8, nx=8, seed=7, fmt="h5", frames_per_file=20)
    gz = root / "gz"
    shutil.copytree(cbf.root, gz, ignore=shutil.ignore_patterns("*.zarr", "*.png"))
    for f in sorted((gz / "frames").glob("*.cbf")):
        f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    return cbf, h5, gz


def same_arrays(a, b):
    for name in ARRAYS:
        x = zarr.open_array(str(a / name), mode="r")[...]
        y = zarr.open_array(str(b / name), mode="r")[...]
        assert np.array_equal(x, y, equal_nan=True), name


def test_cbf_gzip_and_hdf5_scans_give_the_same_store(scans, cluster, tmp_path):
    cbf, h5, gz = scans
    assert str(load_workflow(h5.workflow).inputs.frames).endswith("scan_master.h5::/entry/data/data")
    a = run(load_workflow(cbf.workflow, {"store.path": str(tmp_path / "cbf.zarr")}), cluster=cluster,
            progress=False, summary=False)
    b = run(load_workflow(h5.workflow, {"store.path": str(tmp_path / "h5.zarr")}), cluster=cluster,
            progress=False, summary=False)
    c = run(load_workflow(gz / "workflow.yaml", {"store.path": str(tmp_path / "gz.zarr"),
                                                 "inputs.frames": "frames/frame_{index:06d}.cbf.gz"}),
            cluster=cluster, progress=False, summary=False)
    assert (zarr.open_array(str(a / "reduced/frame_status"), mode="r")[...] == FrameStatus.OK).all()
    same_arrays(b, a)
    same_arrays(c, a)


def test_a_missing_hdf5_data_file_is_flagged_then_read_when_it_arrives(scans, cluster, tmp_path):
    _, h5, _ = scans
    work = tmp_path / "scan"
    shutil.copytree(h5.root, work, ignore=shutil.ignore_patterns("*.zarr", "*.png"))
    data = sorted((work / "frames").glob("scan_data_*.h5"))
    away = data[1].rename(tmp_path / data[1].name)  # frames 20..39 of the scan
    wf = load_workflow(work / "workflow.yaml", {"store.path": str(tmp_path / "run.zarr")})
    path = run(wf, cluster=cluster, progress=False, summary=False)
    index = zarr.open_array(str(path / "reduced/frame_index"), mode="r")[...]
    status = zarr.open_array(str(path / "reduced/frame_status"), mode="r")[...]
    gone = (index >= 20) & (index < 40)
    assert (status[gone] == FrameStatus.MISSING).all() and (status[~gone] == FrameStatus.OK).all()
    away.rename(data[1])
    path = run(wf, cluster=cluster, progress=False, summary=False)
    assert (zarr.open_array(str(path / "reduced/frame_status"), mode="r")[...] == FrameStatus.OK).all()
    assert store.task_state(path).complete


def test_an_hdf5_source_that_cannot_be_opened_is_one_line(scans, tmp_path):
    from xrdct_dask.config import WorkflowError
    from xrdct_dask.prepare import open_run

    _, h5, _ = scans
    with pytest.raises(WorkflowError) as err:
        open_run(load_workflow(h5.workflow, {"store.path": str(tmp_path / "x.zarr"),
                                             "inputs.frames": str(tmp_path / "none.h5")}))
    assert str(err.value).startswith("inputs.frames:") and "\n" not in str(err.value)
