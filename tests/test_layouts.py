"""Input layouts of real beamlines (issue 18, item 4): ``{z}``, ``{line}``, ``{omega}`` and
``{index}`` fields in ``inputs.frames``.

A folder per slice and a folder or file per line only rename where each acquired frame is kept:
the same scan written in the flat ``{index}`` layout and in a per-slice / per-line layout (CBF,
compressed CBF, an HDF5 file per slice) must give the same store, bit for bit.  The paths are
computed from the template and the scan's shape, so nothing on the client lists the frame folders.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from xrdct_dask.config import WorkflowError, load_workflow, workflow_from_dict
from xrdct_dask.io.layout import FrameTemplate, ScanShape, check_template
from xrdct_dask.io.scan import acquisition_order, interlaced_lines
from xrdct_dask.pipeline.frames import frame_source

from .conftest import Listings


# ---------------------------------------------------------------------------------------------
# the fields, computed from the acquisition index
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast_axis,order", [("x", "raster"), ("x", "snake"), ("omega", "snake"),
                                             ("x", "interlaced")])
def test_fields_count_slices_lines_and_frames_in_recording_order(fast_axis, order):
    """Frame i of a (nz, nomega, nx) scan is in slice i // (nomega nx), line (i // nfast) % nslow,
    and is frame i % nfast of its line; {omega} is the angle the line was recorded at (the grid's
    iomega of every frame of the line, interlaced too)."""
    s = ScanShape(3, 5, 4, fast_axis, order)
    grid = acquisition_order(3, 5, 4, fast_axis, order)  # (nframes, 3): iz, iomega, ix of frame i
    t = FrameTemplate("s{z}/l{line}/f{index}.cbf", s)
    nfast = 4 if fast_axis == "x" else 5
    for i in range(s.nz * s.per_slice):
        v = t.values(i)
        assert v["z"] == grid[i, 0]
        assert v["index"] == i % nfast and v["line"] == (i // nfast) % (s.per_slice // nfast)
        if fast_axis == "x":
            w = FrameTemplate("s{z}/w{omega}/f{index}.cbf", s).values(i)["omega"]
            assert w == grid[i, 1]
    if order == "interlaced":
        t = FrameTemplate("s{z}/w{omega:03d}/f{index}.cbf", s)
        assert [t.values(k * 4)["omega"] for k in range(5)] == list(interlaced_lines(5))


def test_index_counts_within_the_innermost_unit_named():
    s = ScanShape(2, 6, 5)
    assert FrameTemplate("f_{index:06d}.cbf", s).format(37) == "f_000037.cbf"  # the flat layout: global index
    assert FrameTemplate("z{z}/f_{index:04d}.cbf", s).format(37) == "z1/f_0007.cbf"  # within the slice (30 frames)
    assert FrameTemplate("z{z}/l{line}_{index}.cbf", s).format(37) == "z1/l1_2.cbf"  # within the line (5 frames)
    assert FrameTemplate("z{z}/w{omega}/{z}_{index}.cbf", s).format(59) == "z1/w5/1_4.cbf"  # a field twice
    assert FrameTemplate("slice_{z:02d}.h5", s, hdf5=True).local(37) == 7


def test_every_frame_has_its_own_file():
    s = ScanShape(3, 7, 6, "x", "snake")
    for tpl in ("f{index}.cbf", "z{z}/f{index}.cbf", "z{z}/l{line}/f{index}.cbf", "z{z}_w{omega}_{index}.cbf"):
        t = FrameTemplate(tpl, s)
        assert len({t.format(i) for i in range(3 * 7 * 6)}) == 3 * 7 * 6, tpl


@pytest.mark.parametrize("frames,message", [
    ("f_{frame}.cbf", "unknown field {frame}"),
    ("z{z}/f.cbf", "must contain an {index} field"),
    ("z{z}/f_{index:.2f}.cbf", "the {index} field must have an integer format"),
    ("z{z:>999}/f_{index}.cbf", "width 999 is above 32"),
    ("z{z}_{index}.h5::/entry/data/data", "an HDF5 template names a file per slice or line"),
    ("l{line}/f_{index}.cbf", "a scan of 2 slices needs {z}"),
])
def test_a_bad_template_is_a_one_line_error_naming_inputs_frames(frames, message):
    raw = {"inputs": {"frames": frames, "poni": "g.poni"}, "scan": {"nz": 2, "nomega": 8, "nx": 8},
           "store": "run.zarr"}
    with pytest.raises(WorkflowError, match=r"inputs\.frames") as err:
        workflow_from_dict(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_omega_needs_lines_of_one_angle():
    raw = {"inputs": {"frames": "z{z}/w{omega}/f{index}.cbf", "poni": "g.poni"},
           "scan": {"nz": 2, "nomega": 8, "nx": 8, "fast_axis": "omega"}, "store": "run.zarr"}
    with pytest.raises(WorkflowError, match=r"\{omega\} names a line's angle"):
        workflow_from_dict(raw)
    check_template("l{line}/f{index}.cbf", hdf5=False)  # one slice: {line} alone names its lines


# ---------------------------------------------------------------------------------------------
# the same scan in other layouts gives the same store
# ---------------------------------------------------------------------------------------------
SHAPE = dict(nz=2, nomega=8, nx=6, seed=11)
ARRAYS = ("reduced/intensity", "reduced/sigma", "reduced/frame_status", "reduced/monitor", "recon/intensity",
          "pdf/G")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    root = tmp_path_factory.mktemp("layouts")
    return {
        "flat": simulate_scan(root / "flat", **SHAPE),
        "per_line": simulate_scan(root / "per_line", **SHAPE,
                                  frames="data/slice_{z:04d}/line_{line:05d}/frame_{index:06d}.cbf.bz2"),
        "per_slice_h5": simulate_scan(root / "per_slice_h5", **SHAPE, fmt="h5",
                                      frames="data/slice_{z:04d}.h5::/entry/data/data"),
    }


@pytest.mark.slow
def test_per_slice_and_per_line_layouts_give_the_flat_layouts_store(layouts, cluster, tmp_path, monkeypatch):
    from xrdct_dask.runs.execute import run

    per_line, h5 = layouts["per_line"], layouts["per_slice_h5"]
    assert (per_line.root / "data/slice_0001/line_00007/frame_000005.cbf.bz2").is_file()
    assert sorted(p.name for p in (h5.root / "data").iterdir()) == ["slice_0000.h5", "slice_0001.h5"]
    stores = {}
    for name, scan in layouts.items():
        listed = Listings(monkeypatch)
        stores[name] = run(load_workflow(scan.workflow, {"store.path": str(tmp_path / f"{name}.zarr")}),
                           cluster=cluster, progress=False, summary=False)
        frames_root = str(scan.root / ("frames" if name == "flat" else "data"))
        assert not [p for p in listed.paths if p.startswith(frames_root)], f"{name}: the client listed its frames"
        monkeypatch.undo()
    status = zarr.open_array(str(stores["flat"] / "reduced/frame_status"), mode="r")[...]
    assert (status == 0).all()
    for name in ("per_line", "per_slice_h5"):
        for arr in ARRAYS:
            a = zarr.open_array(str(stores["flat"] / arr), mode="r")[...]
            b = zarr.open_array(str(stores[name] / arr), mode="r")[...]
            assert np.array_equal(a, b, equal_nan=True), f"{name}: {arr}"


def test_a_missing_slice_file_flags_its_frames_missing(tiny_layouts):
    """An HDF5 file per slice that is absent: its frames are MISSING, the others read (never raises)."""
    from xrdct_dask.io.source import read_batch
    from xrdct_dask.io.status import FrameStatus

    h5 = tiny_layouts["per_slice_h5"]
    wf = load_workflow(h5.workflow)
    src = frame_source(wf)
    per_slice = 4 * 3
    idx = np.array([0, 5, per_slice + 3, 2 * per_slice + 1, -1])  # slice 2 does not exist
    frames, status = read_batch(src, idx)
    assert list(status) == [FrameStatus.OK, FrameStatus.OK, FrameStatus.OK, FrameStatus.MISSING, FrameStatus.MISSING]
    assert np.array_equal(frames[2], src.unit(h5.root / "data/slice_0001.h5").read_frames([3])[0])
    assert (frames[3:] == 0).all()


