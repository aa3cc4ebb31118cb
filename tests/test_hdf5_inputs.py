"""HDF5 frames as detectors and users really write them (issue 25, items 12 and 13): frames of
any numeric type integrated as what they hold (floats as floats, NaN and negative pixels masked;
64-bit integers range-checked), datasets that are not frames refused in one line, and a bad data
file (cut short, damaged, of another frame shape) flagging its own frames only, in a run, in a
watch's look at the files, and read again by a rerun once it is whole."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from xrdct_dask.io.status import FrameStatus

NPT = 200


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("h5in") / "scan", nz=1, nomega=4, nx=3, seed=9)


@pytest.fixture(scope="module")
def counts(scan):
    """The scan's 12 frames as int32 counts (what the CBF files hold)."""
    from xrdct_dask.io.source import read_frames

    return read_frames(scan.frames_template if str(scan.frames_template).startswith("/") else
                       str(scan.root / scan.frames_template), np.arange(12))


@pytest.fixture(scope="module")
def integ(scan, counts):
    from xrdct_dask.integrate import Integrator

    return Integrator(scan.poni, counts.shape[1:], NPT, mask=scan.mask, engine="numpy")


def write_frames(path, frames: np.ndarray, **kw) -> str:
    """``frames`` as ``/entry/data/data``, one frame per chunk (as detectors write), unfiltered
    unless ``kw`` names a filter; returns the source spec."""
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=frames, chunks=(1, *frames.shape[1:]), **kw)
    return f"{path}::/entry/data/data"


def integrate(integ, spec, n: int):
    from xrdct_dask.io.source import open_source

    i, s, st, _ = integ.integrate_source(open_source(spec), np.arange(n))
    return i, st


# ------------------------------------------------------------------------------------------
# 12. frame types
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_frames_are_integrated_as_floats_with_nan_and_negative_pixels_masked(integ, counts, tmp_path, dtype):
    """Frames of counts x 0.5 stored as floats integrate to half the counts' patterns (rtol 1e-6:
    the sums are float64, the halving exact); a NaN and a negative pixel are invalid in their
    frame only, as pyFAI masks them (the same as the int32 frame with -1 there).  Before, float32
    frames were truncated to integers (0.5 -> 0) and NaN became -2^31, all with status OK."""
    import hdf5plugin

    frames = counts.astype(dtype) * 0.5
    ref = counts.copy()
    frames[1, 10, 20], ref[1, 10, 20] = np.nan, -1
    frames[2, 30, 40], ref[2, 30, 40] = -3.5, -1
    i_ref, st_ref = integrate(integ, write_frames(tmp_path / "int.h5", ref), 12)
    for name, kw in (("plain", {}), ("bslz4", dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4")))):
        i, st = integrate(integ, write_frames(tmp_path / f"{name}.h5", frames, **kw), 12)
        assert (st == FrameStatus.OK).all() and (st_ref == FrameStatus.OK).all()
        np.testing.assert_allclose(i, 0.5 * i_ref, rtol=1e-6, atol=1e-9, err_msg=name)


def test_64_bit_integer_frames_are_range_checked(integ, counts, tmp_path):
    """int64 / uint64 frames within int32 give the int32 frames' patterns exactly; a frame with a
    value beyond int32 (2^33, -2^33, 2^32) is flagged OUT_OF_RANGE (NaN pattern) instead of
    wrapping to 0 with status OK, the other frames untouched; uint64's all-ones is the detector's
    invalid-pixel value (-1), not out of range."""
    i_ref, _ = integrate(integ, write_frames(tmp_path / "int32.h5", counts), 12)
    for dtype, bad in ((np.int64, {3: 2 ** 33, 5: -2 ** 33}), (np.uint64, {3: 2 ** 32})):
        frames = np.where(counts < 0, -1, counts).astype(dtype)  # uint64: invalid pixels as all-ones
        for k, v in bad.items():
            frames[k, 7, 9] = v
        i, st = integrate(integ, write_frames(tmp_path / f"{dtype.__name__}.h5", frames), 12)
        flagged = sorted(bad)
        assert np.flatnonzero(st == FrameStatus.OUT_OF_RANGE).tolist() == flagged, dtype
        ok = np.setdiff1d(np.arange(12), flagged)
        assert (st[ok] == FrameStatus.OK).all() and np.isnan(i[flagged]).all()
        np.testing.assert_array_equal(i[ok], i_ref[ok])
    gap = np.where(counts < 0, -1, counts).astype(np.uint64)
    gap[4, 11, 12] = np.iinfo(np.uint64).max
    ref = counts.copy()
    ref[4, 11, 12] = -1
    i, st = integrate(integ, write_frames(tmp_path / "gap.h5", gap), 12)
    assert (st == FrameStatus.OK).all()
    np.testing.assert_array_equal(i, integrate(integ, write_frames(tmp_path / "gapref.h5", ref), 12)[0])


@pytest.mark.parametrize("dtype, what", [(np.dtype([("a", "<i4"), ("b", "<f4")]), "compound records"),
                                         (np.dtype("S4"), "byte strings"), (h5py.string_dtype(), "strings"),
                                         (np.dtype(bool), "booleans")])
def test_datasets_that_are_not_frames_are_refused_in_one_line(scan, tmp_path, dtype, what):
    """A compound or string dataset of frame shape is not frames: opening it as the scan's source
    is refused in one line naming the dataset and what it holds (before, strings came back as
    bytes with status OK); ``check_inputs`` says it as a workflow error."""
    from xrdct_dask.config import WorkflowError, load_workflow
    from xrdct_dask.io.source import Hdf5Frames
    from xrdct_dask.runs.inputs import check_inputs

    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", shape=(2, 4, 5), dtype=dtype)
    with pytest.raises(ValueError) as err:
        Hdf5Frames(path, "/entry/data/data")
    assert what in str(err.value) and "\n" not in str(err.value)
    wf = load_workflow(scan.workflow, {"inputs.frames": f"{path}::/entry/data/data"})
    with pytest.raises(WorkflowError, match=f"^inputs.frames: .*{what}"):
        check_inputs(wf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint16])
def test_the_gpu_chunk_decoder_gives_what_the_host_path_gives(counts, tmp_path, dtype):
    """The GPU engine's path (:func:`~xrdct_dask.io.gpu_hdf5.decode_into_counts`, here the same
    kernels compiled for the host) turns chunks of every type into what the engines integrate
    exactly as the CPU path does (:func:`~xrdct_dask.io.source.read_batch`): float32 values (NaN
    kept) for floats, int32 counts for integers, OUT_OF_RANGE for 64-bit values beyond int32."""
    from xrdct_dask.io import gpu_hdf5
    from xrdct_dask.io.source import Hdf5Frames, pixel_dtype, read_batch

    try:
        decoder = gpu_hdf5.ChunkDecoder("host")
    except RuntimeError as err:
        pytest.skip(str(err))
    frames = (counts[:4] * (0.25 if np.dtype(dtype).kind == "f" else 1)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        frames[0, 1, 2] = np.nan
    if dtype == np.int64:
        frames[2, 3, 4] = 2 ** 40
    src = Hdf5Frames(write_frames(tmp_path / "f.h5", frames).split("::")[0], "/entry/data/data")
    host, st_host = read_batch(src, np.arange(4))
    c = src.read_raw_chunks(np.arange(4))
    npix = frames[0].size
    plan = gpu_hdf5.plan_chunks(c.buffer, c.offsets[:-1], c.offsets[1:], c.filter_id.astype(np.int64),
                                npix * frames.itemsize, frames.itemsize)
    out = np.zeros((4, npix), pixel_dtype(dtype))
    scratch = np.zeros(4 * npix * frames.itemsize, np.uint8)
    st = gpu_hdf5.decode_into_counts(decoder, c.buffer, c.offsets[:-1], c.offsets[1:], c.filter_id.astype(np.int64),
                                     plan, dtype, out, scratch)
    np.testing.assert_array_equal(st, st_host)
    assert out.dtype == host.dtype
    good = st == FrameStatus.OK
    np.testing.assert_array_equal(out[good], host.reshape(4, -1)[good])
    assert (st == FrameStatus.OUT_OF_RANGE).sum() == (dtype == np.int64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_gpu_engine_integrates_float_and_64_bit_frames_as_the_cpu_engine(scan, counts, tmp_path, dtype):
    """The cupy engine reading HDF5 chunks of floats (NaN masked) and 64-bit integers (one frame
    out of range) gives the numpy engine's patterns (rtol 1e-5: float32 sums on the GPU against
    float64 on the CPU) and the same statuses."""
    from xrdct_dask.backend import gpu_available
    from xrdct_dask.integrate import Integrator

    if not gpu_available():
        pytest.skip("no usable CUDA GPU / cupy")
    frames = (counts * (0.5 if np.dtype(dtype).kind == "f" else 1)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        frames[1, 10, 20] = np.nan
    else:
        frames[3, 7, 9] = 2 ** 33
    spec = write_frames(tmp_path / "g.h5", frames)
    cpu = Integrator(scan.poni, counts.shape[1:], NPT, mask=scan.mask, engine="numpy")
    gpu = Integrator(scan.poni, counts.shape[1:], NPT, mask=scan.mask, engine="cupy")
    i_cpu, st_cpu = integrate(cpu, spec, 12)
    i_gpu, st_gpu = integrate(gpu, spec, 12)
    np.testing.assert_array_equal(st_gpu, st_cpu)
    np.testing.assert_allclose(i_gpu, i_cpu, rtol=1e-5, atol=1e-6, equal_nan=True)


# ------------------------------------------------------------------------------------------
# 13. a bad data file flags its own frames
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eiger(tmp_path_factory):
    """An Eiger-like scan of 48 frames in 6 data files of 8 frames (master with links + VDS)."""
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("eiger") / "scan", nz=1, nomega=8, nx=6, seed=6, fmt="h5",
                         frames_per_file=8)


def break_files(root):
    """Data file 2 cut at 8 bytes, file 3 cut in half (written only partly), file 5 rewritten
    with frames one pixel narrower; returns ``{file number: (first frame, status)}``."""
    frames = root / "frames"
    (frames / "scan_data_000002.h5").write_bytes((frames / "scan_data_000002.h5").read_bytes()[:8])
    raw = (frames / "scan_data_000003.h5").read_bytes()
    (frames / "scan_data_000003.h5").write_bytes(raw[: len(raw) // 2])
    with h5py.File(frames / "scan_data_000005.h5", "r") as f:
        narrow = f["entry/data/data"][:, :, :-1]
    with h5py.File(frames / "scan_data_000005.h5", "w") as f:
        f.create_dataset("entry/data/data", data=narrow, chunks=(1, *narrow.shape[1:]))
    return {2: (8, FrameStatus.CORRUPT_HEADER), 3: (16, FrameStatus.CORRUPT_HEADER), 5: (32, FrameStatus.WRONG_SHAPE)}


@pytest.mark.parametrize("spec", ["frames/scan_master.h5::/entry/data", "frames/scan_master.h5::/entry/data/data"])
def test_a_bad_data_file_flags_its_own_frames_only(eiger, tmp_path, spec):
    """Through the Eiger links or the VDS: files cut at 8 bytes or in half flag their 8 frames
    CORRUPT_HEADER, a file of narrower frames flags its 8 WRONG_SHAPE; the other 24 frames read as
    before (bit for bit), and a watch's look at the files (``frames_present``) sees them and not
    the bad ones.  Before, opening the source failed, the whole scan was refused and a watch saw
    no frame at all."""
    from xrdct_dask.config import load_workflow
    from xrdct_dask.io.source import Hdf5Frames, read_batch
    from xrdct_dask.runs.inputs import check_inputs, frames_present
    from xrdct_dask.testing.corrupt import copy_scan

    before, _ = read_batch(Hdf5Frames(*str(eiger.root / spec).split("::")), np.arange(48))
    copy = copy_scan(eiger, tmp_path / "scan")
    bad = break_files(copy.root)
    expected = np.full(48, FrameStatus.OK)
    for first, code in bad.values():
        expected[first:first + 8] = code
    frames, st = read_batch(Hdf5Frames(*str(copy.root / spec).split("::")), np.arange(48))
    np.testing.assert_array_equal(st, expected)
    ok = expected == FrameStatus.OK
    np.testing.assert_array_equal(frames[ok], before[ok])
    wf = load_workflow(copy.workflow, {"inputs.frames": spec})
    check_inputs(wf)  # the scan is not refused
    present = frames_present(wf)
    assert [present(i) for i in range(48)] == ok.tolist()


def test_a_run_finishes_with_the_bad_files_frames_flagged_and_a_rerun_reads_them_once_whole(eiger, tmp_path):
    """The run's blocks (integrated here, in this process) finish with only the bad files' frames
    flagged; once the files are whole again a rerun reopens exactly the blocks holding those
    frames and reads them OK."""
    from xrdct_dask import store
    from xrdct_dask.config import load_workflow
    from xrdct_dask.pipeline.tasks_integrate import integrate_block
    from xrdct_dask.runs.open import open_run, reopen_retried
    from xrdct_dask.testing.corrupt import copy_scan

    copy = copy_scan(eiger, tmp_path / "scan")
    kept = {p.name: p.read_bytes() for p in (copy.root / "frames").glob("scan_data_*.h5")}
    bad = break_files(copy.root)
    wf = load_workflow(copy.workflow, {"store.path": str(tmp_path / "run.zarr"), "store.omega_chunk": 2,
                                       "pdf.enabled": False})
    ctx = open_run(wf)
    blocks = store.frame_blocks(1, 8, 2)
    for b in blocks:
        integrate_block(b, ctx)
    status = store.open_array(ctx.store_path, "reduced/frame_status", "r")[0]
    index = store.open_array(ctx.store_path, "reduced/frame_index", "r")[0]
    for first, code in bad.values():
        assert (status[(index >= first) & (index < first + 8)] == code).all()
    assert (status[np.isin(index, np.arange(0, 8)) | (index >= 40)] == FrameStatus.OK).all()
    for name, raw in kept.items():  # the files are whole again (written aside and renamed, as a writer does)
        tmp = copy.root / "frames" / f".{name}.tmp"
        tmp.write_bytes(raw)
        tmp.replace(copy.root / "frames" / name)
    frames_again, blocks_again = reopen_retried(ctx, store.task_state(ctx.store_path))
    assert frames_again == 16  # the CORRUPT ones (a wrong shape stays flagged: not a file being written)
    todo = [b for k, b in enumerate(blocks) if not store.task_state(ctx.store_path)["integrate"][0, k]]
    assert len(todo) == blocks_again
    for b in todo:
        integrate_block(b, ctx)
    status = store.open_array(ctx.store_path, "reduced/frame_status", "r")[0]
    assert (status[(index < 32) | (index >= 40)] == FrameStatus.OK).all()


def test_damaged_metadata_is_a_frame_status_not_a_traceback(eiger, tmp_path):
    """h5py raises RuntimeError (not OSError) on some damaged metadata; reading a scan whose data
    file's object headers are overwritten gives those frames a status and raises nothing."""
    from xrdct_dask.io.source import Hdf5Frames, read_batch
    from xrdct_dask.testing.corrupt import copy_scan

    copy = copy_scan(eiger, tmp_path / "scan")
    path = copy.root / "frames" / "scan_data_000004.h5"
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(3)
    sig = raw.find(b"OHDR")
    stop = sig + 400 if sig >= 0 else 2048
    raw[96:stop] = rng.integers(0, 256, stop - 96, dtype=np.uint8).tobytes()  # superblock kept, object headers not
    path.write_bytes(bytes(raw))
    frames, st = read_batch(Hdf5Frames(copy.root / "frames" / "scan_master.h5", "/entry/data"), np.arange(48))
    assert (st[24:32] != FrameStatus.OK).all() and (st[:24] == FrameStatus.OK).all() and (st[32:] == 0).all()
    shutil.rmtree(copy.root)
