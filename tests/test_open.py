"""Opening a run (:mod:`xrdct_dask.runs.open`, :mod:`xrdct_dask.runs.inputs`,
:mod:`xrdct_dask.runs.scanlayout`): bad inputs refused in one line before anything is written or
computed, the run's identity sampled from the frame template without listing a folder, and what a
rerun reopens.

The properties of opening that the shared suites hold stay there: overwrite, inputs changed since
the store was made, stores left half-created or by a full disk (tests/test_safety.py), a store left
while preparing and a store of other work (tests/test_resilience.py); so do the input checks of the
features that bring the inputs (tests/test_absorption.py, test_hdf5_inputs.py, test_scantable.py,
test_newcomer.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from xrdct_dask import run
from xrdct_dask.config import WorkflowError, load_workflow
from xrdct_dask.pipeline.frames import frame_path

from .conftest import Listings


# ------------------------------------------------------------------------------------------
# bad inputs: one line, before anything is written or computed
# ------------------------------------------------------------------------------------------
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
    from xrdct_dask.simulate import make_integrator

    make_integrator("pilatus2m").write(str(tmp_path / "big.poni"))
    msg = attempt({"inputs": {"poni": str(tmp_path / "big.poni")}})
    assert "detector is 1679 x 1475 pixels but the frames are 209 x 184" in msg


@pytest.mark.parametrize("override, msg", [
    ({"pdf.qmax": 400.0}, "pdf.qmax = 400.0 1/A is more than 10x the data's end"),
    ({"pdf.rpoly": 0.0}, "pdf.rpoly: Input should be greater than 0"),
    ({"pdf.composition": "NiQq"}, "unknown element 'Qq'"),
    ({"pdf.background": "file"}, "pdf: Value error, background: file needs background_file"),
    ({"pdf.background": "file", "pdf.background_file": "nowhere.xy"}, "nowhere.xy not found"),
])
def test_workflow_bad_pdf_parameters_fail_before_compute(sim_scan, tmp_path, override, msg):
    out = tmp_path / "never.zarr"
    with pytest.raises(WorkflowError) as err:
        run(load_workflow(sim_scan.workflow, {"store.path": str(out), **override}), progress=False)
    assert msg.replace("Value error, ", "") in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# the run's identity: frame files sampled from the template, no folder listed
# ------------------------------------------------------------------------------------------
def test_frame_sample_names_files_of_the_layout_without_listing(tiny_layouts, monkeypatch):
    """The run's identity samples at most 256 frame files, computed from the template: for an HDF5
    file per slice, each slice's file once."""
    from xrdct_dask.runs.inputs import FRAMES_SAMPLED, frame_sample, input_files

    listed = Listings(monkeypatch)
    layouts = tiny_layouts
    line = load_workflow(layouts["per_line"].workflow, {"scan.nz": 1000, "scan.nomega": 1571, "scan.nx": 1000})
    sample = frame_sample(line)
    assert len(sample["files"]) == FRAMES_SAMPLED
    assert sample["files"][-1].endswith("data/slice_0999/line_01570/frame_000999.cbf.bz2")
    h5 = load_workflow(layouts["per_slice_h5"].workflow)
    sample = frame_sample(h5)
    assert [os.path.basename(f) for f in sample["files"]] == ["slice_0000.h5", "slice_0001.h5"]
    assert all(b > 0 for b in sample["bytes"])
    assert input_files(h5)["inputs.frames (root)"] == layouts["per_slice_h5"].root / "data"
    roots = [str(layouts[k].root) for k in ("per_line", "per_slice_h5")]
    assert not [p for p in listed.paths if p.startswith(tuple(roots))]


# ------------------------------------------------------------------------------------------
# what a rerun reopens
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("live-files") / "scan", nz=1, nomega=8, nx=6, seed=11)


def test_frames_flagged_not_a_file_are_read_again_once_real_files_replace_them(small_scan, tmp_path):
    """A block whose frame was a folder (or a link to /dev/zero) when it was read has that frame
    flagged NOT_A_FILE.  Once a real, whole frame file is there, a rerun clears the block's
    done-marker and its slice's reconstruction (so they are redone), as for a missing or partly
    written frame; while the thing in its place is still not a file, nothing is reopened."""
    from xrdct_dask import store
    from xrdct_dask.io.status import FrameStatus
    from xrdct_dask.runs.open import open_run, reopen_retried

    wf = load_workflow(small_scan.workflow, {"store.path": str(tmp_path / "run.zarr"), "store.omega_chunk": 4})
    ctx = open_run(wf)
    path = ctx.store_path
    index = store.open_array(path, "reduced/frame_index", "r")[0]
    status = store.open_array(path, "reduced/frame_status")
    st = np.zeros(status.shape[1:], np.int8)
    w, x = 5, 2  # omega row 5: the second block of 4 rows
    st[w, x] = FrameStatus.NOT_A_FILE
    status[0] = st
    for b in range(2):
        store.mark_done(path, "integrate", (0, b), 1)
    store.mark_done(path, "center", (0,), 3.0)
    frame = frame_path(wf, int(index[w, x]))
    kept = frame.read_bytes()
    frame.unlink()
    frame.mkdir()  # still a folder: nothing to read again
    try:
        assert reopen_retried(ctx, store.task_state(path)) == (0, 0)
    finally:
        frame.rmdir()
        frame.write_bytes(kept)  # the real file is back
    assert reopen_retried(ctx, store.task_state(path)) == (1, 1)
    state = store.task_state(path)
    assert state["integrate"].tolist() == [[True, False]] and np.isnan(state.value("center")[0])
