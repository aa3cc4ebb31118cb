"""TIFF and EDF frame series through fabio on the CPU path (issue 27 item 5): the simulator's frames
written by fabio as TIFF and EDF files, one per frame, named by the same templates as CBF files."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from xrdct_dask.config import load_workflow
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.pipeline.frames import frame_source

SHAPE = dict(nz=1, nomega=4, nx=3, npt_rad=300, seed=2)
SERIES = {"tif": "frames/frame_{index:06d}.tif",  # a flat panel's series
          "edf": "data/slice_{z:04d}/line_{line:05d}/frame_{index:06d}.edf",  # an older beamline's, per line
          "edf.gz": "frames/frame_{index:06d}.edf.gz"}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """The same simulated frames as CBF files and as each of SERIES."""
    from xrdct_dask.simulate import simulate_scan

    root = tmp_path_factory.mktemp("series")
    out = {"cbf": simulate_scan(root / "cbf", **SHAPE)}
    for name, template in SERIES.items():
        out[name] = simulate_scan(root / name.replace(".", "_"), **SHAPE, frames=template)
    return out


@pytest.mark.parametrize("name", sorted(SERIES))
def test_series_integrate_exactly_as_the_cbf_frames(series, name):
    """A TIFF / EDF series of the same pixels gives the CBF scan's patterns bit for bit on the CPU
    engine (same counts, same plan), every frame OK; its shape is checked and its files sampled as a
    CBF scan's are (each whole: its size recorded)."""
    from xrdct_dask.integrate import Integrator  # noqa: F401  (the engine the integrator_for builds)
    from xrdct_dask.io.fabio_frames import FabioTemplate
    from xrdct_dask.pipeline.integrator import integrator_for
    from xrdct_dask.runs.inputs import check_inputs, frame_sample, frames_present

    ref = load_workflow(series["cbf"].workflow, {"integrate.engine": "numpy"})
    wf = load_workflow(series[name].workflow, {"integrate.engine": "numpy"})
    src = frame_source(wf)
    assert isinstance(src, FabioTemplate)
    n = ref.scan.nframes
    idx = np.arange(n)
    want = integrator_for(ref).integrate_source(frame_source(ref), idx, np.ones(n))
    got = integrator_for(wf).integrate_source(src, idx, np.ones(n))
    assert (got[2] == FrameStatus.OK).all() and (want[2] == FrameStatus.OK).all()
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert check_inputs(wf)[1] == (209, 184)
    sample = frame_sample(wf)
    assert sample["files"][0].endswith(SERIES[name].format(z=0, line=0, index=0)) and min(sample["bytes"]) > 0
    assert frames_present(wf)(n - 1)


def test_bad_frames_of_a_series_are_flagged_never_raised(series, tmp_path):
    """A series with one frame of each kind of damage: missing (MISSING), an EDF cut in half (fabio
    pads it with zeros: TRUNCATED here), a gzip stream cut short (TRUNCATED), a TIFF of junk
    (CORRUPT_HEADER), an EDF of two frames (not a series' frame: CORRUPT_HEADER), a frame of another
    shape (WRONG_SHAPE); the good frames keep their exact pixels."""
    import gzip

    from fabio.edfimage import EdfImage
    from fabio.tifimage import TifImage

    from xrdct_dask.io.fabio_frames import FabioTemplate, frame_file_complete

    good = frame_source(load_workflow(series["cbf"].workflow)).read_frames(range(3))
    d = tmp_path / "f"
    d.mkdir()
    for k in range(3):
        EdfImage(data=good[k]).write(str(d / f"e_{k}.edf"))
    raw = (d / "e_1.edf").read_bytes()
    (d / "e_1.edf").write_bytes(raw[: len(raw) // 2])
    (d / "e_2.edf.gz").write_bytes(gzip.compress((d / "e_2.edf").read_bytes())[:4000])
    (d / "e_2.edf").unlink()
    two = EdfImage(data=good[0])
    two.append_frame(EdfImage(data=good[1]))
    two.write(str(d / "e_3.edf"))
    EdfImage(data=good[0][:100]).write(str(d / "e_4.edf"))
    src = FabioTemplate(str(d / "e_{index}.edf"))
    frames, status = src.read_batch(np.array([0, 1, 5, -1, 3, 4]), threads=2)
    assert list(status) == [FrameStatus.OK, FrameStatus.TRUNCATED, FrameStatus.MISSING, FrameStatus.MISSING,
                            FrameStatus.CORRUPT_HEADER, FrameStatus.WRONG_SHAPE]
    np.testing.assert_array_equal(frames[0], good[0])
    gz = FabioTemplate(str(d / "e_{index}.edf.gz"))
    assert list(gz.read_batch(np.array([2]))[1]) == [FrameStatus.TRUNCATED]
    (d / "t_0.tif").write_bytes(b"II*\x00" + b"junk" * 100)
    TifImage(data=good[1]).write(str(d / "t_1.tif"))
    tif = FabioTemplate(str(d / "t_{index}.tif"))
    frames, status = tif.read_batch(np.array([0, 1]))
    assert list(status) == [FrameStatus.CORRUPT_HEADER, FrameStatus.OK]
    np.testing.assert_array_equal(frames[1], good[1])
    assert not frame_file_complete(d / "e_1.edf") and frame_file_complete(d / "e_0.edf")
    assert not frame_file_complete(d / "t_0.tif") and frame_file_complete(d / "t_1.tif")


def test_a_flat_panels_16_bit_tiff_counts_with_its_top_value_invalid(tmp_path):
    """uint16 TIFF frames (PerkinElmer / Varex) are integrated as int32 counts, 65535 (the gap /
    saturation value) invalid as in an Eiger's frames (-1); float TIFF frames stay float32."""
    from fabio.tifimage import TifImage

    from xrdct_dask.io.fabio_frames import FabioTemplate

    img = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    img[1, 1] = 65535
    TifImage(data=img).write(str(tmp_path / "p_0.tif"))
    TifImage(data=img.astype(np.float32) / 7).write(str(tmp_path / "q_0.tif"))
    frames, status = FabioTemplate(str(tmp_path / "p_{index}.tif")).read_batch(np.array([0]))
    assert frames.dtype == np.int32 and frames[0, 1, 1] == -1 and frames[0, 2, 3] == 11000 and status[0] == 0
    frames, _ = FabioTemplate(str(tmp_path / "q_{index}.tif")).read_batch(np.array([0]))
    assert frames.dtype == np.float32 and frames[0, 2, 3] == np.float32(11000 / 7)


@pytest.mark.slow
def test_an_edf_series_runs_to_the_cbf_scans_store(series, cluster, tmp_path):
    """A whole run of the EDF series (a file per line) stores the CBF scan's reduced patterns and
    reconstruction exactly (same pixels, same work)."""
    from xrdct_dask.runs.execute import run

    paths = {name: run(load_workflow(series[name].workflow, {"store.path": str(tmp_path / f"{name}.zarr"),
                                                             "pdf.enabled": False}),
                       cluster=cluster, progress=False, summary=False) for name in ("cbf", "edf")}
    for arr in ("reduced/intensity", "reduced/frame_status", "recon/intensity"):
        a, b = (zarr.open_array(str(paths[n] / arr), mode="r")[...] for n in ("cbf", "edf"))
        assert np.array_equal(a, b, equal_nan=True), arr


@pytest.mark.gpu
@pytest.mark.parametrize("sectors", [1, 12])
def test_series_on_the_gpu_engine_equal_the_cpu_engine(series, sectors):
    """The GPU engine takes a TIFF series decoded on the host (as an HDF5 file per slice): its
    patterns, 1D and in 12 sectors, equal the numpy engine's to 1e-5 on every bin with signal, every
    frame OK, a missing one (-1) MISSING."""
    from xrdct_dask.backend import gpu_available
    from xrdct_dask.pipeline.integrator import integrator_for

    if not gpu_available():
        pytest.skip("needs cupy and a CUDA GPU")
    keys = {"integrate.npt_azim": sectors, "pdf.enabled": False}
    cpu = load_workflow(series["tif"].workflow, keys | {"integrate.engine": "numpy"})
    gpu = load_workflow(series["tif"].workflow, keys | {"integrate.engine": "cupy"})
    idx = np.r_[np.arange(cpu.scan.nframes), -1]
    mon = np.linspace(0.9, 1.1, idx.size)
    a = integrator_for(cpu).integrate_source(frame_source(cpu), idx, mon)
    b = integrator_for(gpu).integrate_source(frame_source(gpu), idx, mon)
    assert list(b[2]) == list(a[2]) and a[2][-1] == FrameStatus.MISSING and (a[2][:-1] == FrameStatus.OK).all()
    good = np.isfinite(a[0]) & (a[0] != 0)
    np.testing.assert_allclose(b[0][good], a[0][good], rtol=1e-5)
    np.testing.assert_allclose(b[1][good], a[1][good], rtol=1e-5)
