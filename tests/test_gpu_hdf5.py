"""GPU decoding of HDF5 chunks (io/gpu_hdf5.py, io/kernels/h5_decode.cu) is bit-exact with h5py +
hdf5plugin and gives corrupt chunks the CPU path's status, never reading out of bounds.

Every test runs twice: on ``host`` -- the CUDA source compiled as C++ (g++), where a warp is one
thread that runs its lanes' loops backwards, so the kernels' exact logic is checked on any CPU --
and on ``cuda`` (cupy on a GPU, marked ``gpu``).  Integer frames: no tolerance anywhere.  Test
files are written by :mod:`xrdct_dask.testing.h5chunks` (no hdf5plugin needed: GPU nodes may lack
it); where hdf5plugin / bitshuffle are installed, h5py's read and the CPU decoder are oracles too.
"""

from __future__ import annotations

import collections

import h5py
import numpy as np
import pytest

try:
    import hdf5plugin
except ImportError:  # a GPU node: the frames written are the oracle
    hdf5plugin = None

from xrdct_dask.backend import gpu_available
from xrdct_dask.io import gpu_hdf5, hdf5
from xrdct_dask.io.gpu_hdf5 import ChunkDecoder, decode_chunks_gpu, plan_chunks
from xrdct_dask.io.source import open_source
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.testing import h5chunks
from xrdct_dask.testing.h5chunks import write_frames

try:
    import lz4.block  # noqa: F401  (the package's LZ4 block compressor)
except ImportError:  # a GPU node: pyarrow's raw LZ4 codec writes the test chunks
    pa = pytest.importorskip("pyarrow")
    h5chunks.lz4_block_compressor = lambda: (lambda b: pa.compress(b, codec="lz4_raw", asbytes=True))

from .conftest import SHARED_DATA

EIGER_FILES = ("eiger-6472_data_000001.h5", "eiger-6587_data_000001.h5")
OK, TRUNC, CORRUPT, SIZE = (int(s) for s in (FrameStatus.OK, FrameStatus.TRUNCATED, FrameStatus.CORRUPT_HEADER,
                                             FrameStatus.SIZE_MISMATCH))


@pytest.fixture()
def host_kernels():
    """The kernels compiled as C++ (skipped without a C++ compiler)."""
    try:
        return gpu_hdf5.host_library()
    except RuntimeError as err:
        pytest.skip(str(err))


@pytest.fixture(params=["host", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cuda" and not gpu_available():
        pytest.skip("no usable CUDA GPU / cupy")
    if request.param == "host":
        request.getfixturevalue("host_kernels")
    return request.param


@pytest.fixture(scope="session")
def cuda():  # session scope: evaluated before the session fixtures (the simulated scan) it would waste
    if not gpu_available():
        pytest.skip("no usable CUDA GPU / cupy")


@pytest.fixture()
def every_block_on_the_kernels(monkeypatch):
    """Small test blocks go through the kernels too (not the CPU, as in production)."""
    monkeypatch.setattr(gpu_hdf5, "MIN_BLOCK_BYTES", 0)


def write(path, frames, filter, block=0):
    return open_source(write_frames(path, frames, filter, block))


def h5py_oracle(path, frames, dset="data"):
    """h5py + hdf5plugin read the file as ``frames`` (where hdf5plugin is installed)."""
    if hdf5plugin is not None:
        with h5py.File(path) as f:
            np.testing.assert_array_equal(f[dset][...], frames)


def cpu_decoder_for(filters: str):
    """The CPU decoder's package of a filter (bitshuffle / lz4), else skip."""
    pytest.importorskip("bitshuffle" if filters.startswith("bitshuffle") else "lz4")


def decode(src, device, indices=None):
    chunks = src.read_raw_chunks(np.arange(src.nframes) if indices is None else indices)
    return chunks, *decode_chunks_gpu(chunks, device=device)


def all_on_kernels(chunks) -> bool:
    ny, nx = chunks.shape
    plan = plan_chunks(chunks.buffer, chunks.offsets[:-1], chunks.offsets[1:], chunks.filter_id,
                       ny * nx * chunks.dtype.itemsize, chunks.dtype.itemsize)
    return bool(plan.gpu.all())


# ------------------------------------------------------------------------------------------
# bit-exact
# ------------------------------------------------------------------------------------------
def test_real_eiger_frames_equal_h5py_hdf5plugin(device):
    """Real Eiger 1M data files (uint32, bitshuffle-LZ4, 8 KB blocks, gaps = 2^32 - 1)."""
    paths = [SHARED_DATA / n for n in EIGER_FILES]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"real Eiger files not available in {SHARED_DATA} (set XRDCT_SHARED_DATA)")
    pytest.importorskip("hdf5plugin")  # the oracle
    for p in paths:
        chunks, frames, status = decode(open_source(p), device)
        assert all_on_kernels(chunks)
        with h5py.File(p) as f:
            want = f["entry/data/data"][...]
        assert status.tolist() == [OK] * len(want)
        np.testing.assert_array_equal(frames, want)


FILTERS = {  # name: (filter, block)
    "bitshuffle-lz4": ("bitshuffle-lz4", 0),  # 8 KB blocks (bitshuffle's default)
    "bitshuffle-lz4 64-element blocks": ("bitshuffle-lz4", 64),  # several blocks + a short one + raw tail
    "lz4": ("lz4", 0),  # one block per frame
    "lz4 300-byte blocks": ("lz4", 300),  # many blocks, the last one short
    "none": ("none", 0),
}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.uint64])
@pytest.mark.parametrize("filters", list(FILTERS))
def test_dtypes_filters_and_odd_sizes_equal_h5py(tmp_path, rng, device, every_block_on_the_kernels, dtype,
                                                 filters):
    """Frames of 37 x 29 pixels (1073 = 8 * 134 + 1: a bitshuffle tail) and 8 x 8; counts, the
    full range of the type (incompressible blocks: LZ4 stores them raw) and constant frames (long
    zero runs)."""
    info = np.iinfo(dtype)
    for shape in ((37, 29), (8, 8)):
        frames = np.stack([rng.poisson(3.0, shape).astype(dtype),
                           rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True),
                           np.full(shape, info.max, dtype), np.zeros(shape, dtype)])
        path = tmp_path / f"{filters}-{shape[0]}.h5"
        chunks, got, status = decode(write(path, frames, *FILTERS[filters]), device)
        assert all_on_kernels(chunks)
        assert status.tolist() == [OK] * 4
        np.testing.assert_array_equal(got, frames)
        h5py_oracle(path, frames)


def test_simulated_hdf5_scan_equals_h5py(tmp_path, device):
    """The simulator's Eiger-like scan writer (master + data files, int32 counts of a ring
    pattern, gaps -1, bitshuffle-LZ4 chunks of one frame), read through the master's VDS."""
    pytest.importorskip("hdf5plugin")  # the simulator compresses with it
    from xrdct_dask.simulate import write_hdf5_scan

    shape = (97, 83)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    ring = 50.0 * np.exp(-((np.hypot(yy - 40, xx - 30) - 25.0) ** 2) / 8.0) + 2.0

    def render(i):
        frame = np.random.default_rng(i).poisson(ring * (1 + 0.1 * i)).astype(np.int32)
        frame[:, 40:42] = -1
        return frame

    n = 11
    master = write_hdf5_scan(tmp_path, render, n, shape, positions={"omega": (np.arange(n) * 1.0, "deg")},
                             monitor=np.ones(n), frames_per_file=4)
    src = open_source(f"{master}::/entry/data/data")
    chunks, got, status = decode(src, device)
    assert all_on_kernels(chunks) and not status.any()
    np.testing.assert_array_equal(got, np.stack([render(i) for i in range(n)]))
    with h5py.File(master) as f:
        np.testing.assert_array_equal(got, f["entry/data/data"][...])


def test_chunks_the_kernels_do_not_take_are_decoded_on_the_cpu(tmp_path, rng, device):
    """Deflate, and bitshuffle blocks larger than shared memory, go to the CPU decoder; missing
    frames keep their status; the frames still equal h5py's."""
    frames = rng.poisson(5.0, (3, 40, 30)).astype(np.uint32)
    gz = write(tmp_path / "gz.h5", frames, "gzip")
    sources = [gz]
    try:
        import bitshuffle  # noqa: F401  (decodes the 64 KB blocks on the CPU)

        sources.append(write(tmp_path / "big.h5", frames, "bitshuffle-lz4", 16384))
    except ImportError:
        pass
    for src in sources:
        chunks, got, status = decode(src, device, [0, 1, 7, 2])
        assert not all_on_kernels(chunks)
        assert status.tolist() == [OK, OK, int(FrameStatus.MISSING), OK]
        np.testing.assert_array_equal(got[[0, 1, 3]], frames[[0, 1, 2]])


def test_decoder_reuses_its_scratch_across_batches(tmp_path, rng, device):
    """One decoder, batches of different sizes: each equals h5py (no state leaks between them)."""
    frames = rng.poisson(2.0, (9, 24, 17)).astype(np.int32)
    src = write(tmp_path / "a.h5", frames, "bitshuffle-lz4")
    dec = ChunkDecoder(device)
    for idx in ([0, 1, 2, 3, 4, 5, 6, 7, 8], [3], [8, 0, 4, 4]):
        got, status = decode_chunks_gpu(src.read_raw_chunks(idx), decoder=dec)
        assert not status.any()
        np.testing.assert_array_equal(got, frames[idx])


# ------------------------------------------------------------------------------------------
# corrupt chunks: the CPU path's status, never a crash or an out-of-bounds access
# ------------------------------------------------------------------------------------------
def _pack(bufs, like):
    offs = np.zeros(len(bufs) + 1, np.int64)
    np.cumsum([b.size for b in bufs], out=offs[1:])
    return hdf5.RawChunks(np.concatenate(bufs), offs, np.full(len(bufs), like.filter_id[0], np.int32),
                          np.zeros(len(bufs), np.int8), like.shape, like.dtype,
                          [f"trial {k}" for k in range(len(bufs))], {})


def _mutants(good: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Block length words overwritten, random bytes replaced, truncations, single bit flips."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        buf = good.copy()
        kind = t % 4
        if kind == 0:
            k = 12 + 4 * rng.integers(0, 50)
            buf[k:k + 4] = rng.integers(0, 256, 4)
        elif kind == 1:
            k = rng.integers(12, buf.size, rng.integers(1, 30))
            buf[k] = rng.integers(0, 256, k.size)
        elif kind == 2:
            buf = buf[:rng.integers(0, buf.size)]
        else:
            buf[rng.integers(0, buf.size)] ^= np.uint8(1 << rng.integers(0, 8))
        out.append(buf)
    return out


@pytest.mark.parametrize("filters", ["bitshuffle-lz4", "lz4", "lz4 4096-byte blocks"])
def test_fuzzed_chunks_get_the_cpu_status(tmp_path, rng, device, filters):
    """Hundreds of mutated chunks in one batch: each gets the status the CPU path gives it
    (TRUNCATED, SIZE_MISMATCH, CORRUPT_HEADER at the same first failing block), and the frames
    both call OK are equal.  One exception, LZ4 only: a match offset of 0, which the LZ4 format
    calls corrupt, is corrupt here; liblz4's safe decoder (python-lz4, hdf5plugin) reads it as
    zeros.  Bitshuffle's decoder (LZ4_decompress_fast) leaves such bytes undefined, so its
    verdicts match exactly where its output is defined."""
    cpu_decoder_for(filters)
    frame = rng.poisson(2.0, (1, 120, 100)).astype(np.uint32)
    frame[0, 30] = 2**32 - 1
    like = write(tmp_path / "f.h5", frame, filters.split()[0], 4096 if "4096" in filters else 0).read_raw_chunks([0])
    batch = _pack(_mutants(like.buffer, 400, seed=1), like)
    got, gst = decode_chunks_gpu(batch, device=device)
    want, cst = hdf5.decode_chunks(batch)
    pairs = collections.Counter(zip(cst.tolist(), gst.tolist()))
    differ = {p: c for p, c in pairs.items() if p[0] != p[1]}
    if filters.startswith("bitshuffle"):
        assert not differ, pairs
    else:
        assert set(differ) <= {(OK, CORRUPT)} and sum(differ.values()) <= 8, pairs
    assert {TRUNC, CORRUPT, OK} <= {s for s, _ in pairs}  # the mutants reach every verdict
    both = np.flatnonzero((cst == OK) & (gst == OK))
    np.testing.assert_array_equal(got[both], want[both])


@pytest.mark.gpu
@pytest.mark.parametrize("filters", ["bitshuffle-lz4", "lz4 4096-byte blocks"])
def test_fuzzed_chunks_on_the_gpu_equal_the_kernels_cpu_build(cuda, host_kernels, tmp_path, rng, filters):
    """The same mutated chunks on the GPU and through the kernels' C++ build: identical status and
    frames (lanes in parallel vs one thread backwards; no oracle package needed)."""
    frame = rng.poisson(2.0, (1, 120, 100)).astype(np.uint32)
    like = write(tmp_path / "f.h5", frame, filters.split()[0], 4096 if "4096" in filters else 0).read_raw_chunks([0])
    batch = _pack(_mutants(like.buffer, 400, seed=3), like)
    got, gst = decode_chunks_gpu(batch, device="cuda")
    want, hst = decode_chunks_gpu(batch, device="host")
    np.testing.assert_array_equal(gst, hst)
    assert {OK, TRUNC, CORRUPT} <= set(hst.tolist())
    np.testing.assert_array_equal(got[hst == OK], want[hst == OK])


def test_fuzzed_real_eiger_chunk(device):
    paths = [SHARED_DATA / n for n in EIGER_FILES]
    if not paths[0].is_file():
        pytest.skip(f"real Eiger files not available in {SHARED_DATA}")
    cpu_decoder_for("bitshuffle")
    like = open_source(paths[0]).read_raw_chunks([0])
    batch = _pack(_mutants(like.buffer, 12, seed=2), like)
    got, gst = decode_chunks_gpu(batch, device=device)
    want, cst = hdf5.decode_chunks(batch)
    np.testing.assert_array_equal(gst, cst)
    both = np.flatnonzero(cst == OK)
    np.testing.assert_array_equal(got[both], want[both])


def test_handmade_corruptions(tmp_path, rng, device):
    """Truncated chunk, header size of another frame, a block length past the chunk, trailing
    bytes, a chunk shorter than its header: the codes the CPU path gives."""
    frame = rng.poisson(3.0, (1, 33, 21)).astype(np.uint32)
    like = write(tmp_path / "f.h5", frame, "bitshuffle-lz4").read_raw_chunks([0])
    good = like.buffer.copy()
    size = good.copy()
    size[0:8] = np.frombuffer((frame[0].nbytes * 2).to_bytes(8, "big"), np.uint8)
    length = good.copy()
    length[12:16] = np.frombuffer((2**31 - 1).to_bytes(4, "big"), np.uint8)
    batch = _pack([good[:-20], size, length, np.concatenate([good, good[:3]]), good[:7], good], like)
    got, status = decode_chunks_gpu(batch, device=device)
    assert status.tolist() == [TRUNC, SIZE, CORRUPT, SIZE, TRUNC, OK]
    try:
        import bitshuffle  # noqa: F401
    except ImportError:
        pass
    else:
        np.testing.assert_array_equal(status, hdf5.decode_chunks(batch)[1])
    np.testing.assert_array_equal(got[5], frame[0])


# ------------------------------------------------------------------------------------------
# the GPU engine reads HDF5 sources through the kernels
# ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["bitshuffle-lz4 int32", "bitshuffle-lz4 uint16", "lz4 uint32", "gzip int32"])
def test_cupy_engine_on_hdf5_equals_numpy_integration(cuda, sim_scan, tmp_path, kind):
    """``integrate_source`` of an HDF5 source (Eiger master + 3 data files) on the GPU engine --
    chunks decoded on the device; gzip on the host, the fallback -- equals the numpy engine
    integrating the frames that were written (as counts: uint16's 65535 -> -1) to 1e-5, and gives
    a truncated chunk, a chunk of another frame size and a missing frame their status and NaN."""
    import fabio

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io.source import as_counts
    from xrdct_dask.simulate import DETECTORS

    shape = DETECTORS["small"][0]
    n, per = 150, 64
    dtype = {"bitshuffle-lz4 uint16": np.uint16, "lz4 uint32": np.uint32}.get(kind, np.int32)
    frames = open_source(sim_scan.frames).read_frames(np.arange(n)).astype(dtype)  # -1, -2 wrap when unsigned
    master = tmp_path / "master.h5"
    with h5py.File(master, "w") as m:
        for k, first in enumerate(range(0, n, per)):
            name = f"data_{k + 1:06d}.h5"
            write_frames(tmp_path / name, frames[first:first + per], kind.split()[0], name="entry/data/data")
            m[f"entry/data/data_{k + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    if not kind.startswith("gzip"):  # break two chunks of the first file: cut short, and another frame size
        with h5py.File(tmp_path / "data_000001.h5", "r+") as f:
            d = f["entry/data/data"]
            d.id.write_direct_chunk((7, 0, 0), d.id.read_direct_chunk((7, 0, 0))[1][:-50])
            wrong = bytearray(d.id.read_direct_chunk((9, 0, 0))[1])
            wrong[0:8] = (2 * frames[0].nbytes).to_bytes(8, "big")
            d.id.write_direct_chunk((9, 0, 0), bytes(wrong))
    src = open_source(f"{master}::/entry/data")
    idx = np.arange(n)
    idx[11] = -1
    monitor = np.linspace(0.9, 1.1, n)
    mask = fabio.open(str(sim_scan.mask)).data != 0
    gpu = Integrator(sim_scan.poni, shape, 400, mask=mask, polarization_factor=0.99, engine="cupy")
    gpu.warm(src, 1, n)
    gi, gs, gst, nbytes = gpu.integrate_source(src, idx, monitor)
    want = np.zeros(n, np.int8)
    want[11] = FrameStatus.MISSING
    if not kind.startswith("gzip"):
        want[7], want[9] = FrameStatus.TRUNCATED, FrameStatus.SIZE_MISMATCH
    np.testing.assert_array_equal(gst, want)
    ok = want == FrameStatus.OK
    cpu = Integrator(sim_scan.poni, shape, 400, mask=mask, polarization_factor=0.99, engine="numpy")
    ref = cpu.integrate(as_counts(frames[ok]), monitor[ok])
    assert nbytes > 0
    np.testing.assert_allclose(gi[ok], ref.intensity, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(gs[ok], ref.sigma, rtol=1e-5, equal_nan=True)
    assert np.isnan(gi[~ok]).all()


@pytest.mark.gpu
def test_gpu_warm_up_runs_every_arena_before_and_after_the_first_data_file(cuda, sim_scan, tmp_path, monkeypatch):
    """Live mode arms the workers before the detector writes: with a scan file (a virtual dataset,
    as BLISS writes) whose data file is not there yet, the GPU warm-up reads a blank frame (stored
    unfiltered in a temporary file, removed after and not left open) into every arena of every
    ring, and decodes and integrates it there; with the data file there, frame 0's chunk instead
    (read once, then once per arena).  Afterwards the patterns equal the numpy engine's (1e-5)."""
    import tempfile
    from pathlib import Path

    import fabio

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io.source import Hdf5Frames, as_counts

    n = 40
    frames = open_source(sim_scan.frames).read_frames(np.arange(n))
    shape = frames.shape[1:]
    aside = tmp_path / "aside"
    aside.mkdir()
    write_frames(aside / "data_000001.h5", frames, "bitshuffle-lz4", name="entry/data/data")
    master = tmp_path / "scan.h5"
    with h5py.File(master, "w") as m:
        layout = h5py.VirtualLayout(shape=(n, *shape), dtype=np.int32)
        layout[:] = h5py.VirtualSource("data_000001.h5", "entry/data/data", shape=(n, *shape))
        m.create_group("entry/data").create_virtual_dataset("data", layout, fillvalue=-1)
    src = Hdf5Frames(master, "/entry/data/data")
    assert (src.read_raw_chunks([0]).status == FrameStatus.MISSING).all()
    reads = []
    real = Hdf5Frames.read_raw_chunks

    def spy(self, idx, *a, **k):
        reads.append((Path(self.file).name, len(idx)))
        return real(self, idx, *a, **k)

    monkeypatch.setattr(Hdf5Frames, "read_raw_chunks", spy)
    before = set(Path(tempfile.gettempdir()).glob("xrdct-warm-*"))
    mask = fabio.open(str(sim_scan.mask)).data != 0
    gpu = Integrator(sim_scan.poni, shape, 400, mask=mask, polarization_factor=0.99, engine="cupy")
    gpu.warm(src, 2, n)
    ring = gpu.impl.RING
    assert reads.count(("blank.h5", 2)) == 2 * ring, reads
    assert set(Path(tempfile.gettempdir()).glob("xrdct-warm-*")) == before
    assert not any("blank.h5" in k for k in hdf5.FILES._files)
    reads.clear()  # a master that cannot be opened yet (links only, no data file): no source at all
    gpu.warm(None, 1, n, hdf5=True)
    assert reads == [("blank.h5", 2)] * ring
    (aside / "data_000001.h5").rename(tmp_path / "data_000001.h5")
    src = Hdf5Frames(master, "/entry/data/data")
    reads.clear()
    gpu.warm(src, 1, n)
    assert reads == [("scan.h5", 1)] + [("scan.h5", gpu.batch_frames)] * ring
    monkeypatch.undo()
    gi, gs, gst, _ = gpu.integrate_source(src, np.arange(n), np.ones(n))
    assert not gst.any()
    cpu = Integrator(sim_scan.poni, shape, 400, mask=mask, polarization_factor=0.99, engine="numpy")
    ref = cpu.integrate(as_counts(frames), np.ones(n))
    np.testing.assert_allclose(gi, ref.intensity, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(gs, ref.sigma, rtol=1e-5, equal_nan=True)


class _HostEngine:
    """The GPU engine's HDF5 reader (:meth:`SourcesMixin._h5_reads`) driven on a CPU: the device
    steps swapped for the kernels' C++ build (:func:`decode_into_counts`, as ``_launch_h5`` calls
    it); yields each batch's int32 counts, monitor and status."""

    RING = 4

    def __init__(self, shape):
        from types import SimpleNamespace

        self.plan = SimpleNamespace(shape=shape, npix=shape[0] * shape[1])
        self.pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(2)

    def _read_pools(self, read_threads):
        return self.pool, None

    def arena_ring(self):
        return [None] * 4

    def release_ring(self, ring):
        pass

    def arena(self, ring, k, nbytes):
        return np.zeros(nbytes + 7, np.uint8)  # as a pinned arena: larger than asked

    def integrate_batches(self, batches):
        from xrdct_dask.io.gpu_hdf5 import decode_into_counts

        dec = ChunkDecoder("host")
        for b, monitor in batches:
            counts = np.zeros((b.nframes, self.plan.npix), np.int32)
            if b.frames is not None:
                counts[...] = b.frames.reshape(b.nframes, -1)
                st = np.zeros(b.nframes, np.int32)
            else:
                scratch = np.zeros(b.nframes * self.plan.npix * b.dtype.itemsize, np.uint8)
                st = decode_into_counts(dec, b.buffer, b.beg, b.end, b.filt, b.plan, b.dtype, counts, scratch)
            yield counts, monitor, st.copy()


@pytest.mark.parametrize("kind", ["bitshuffle-lz4 uint16", "bitshuffle-lz4 uint32", "gzip int32",
                                  "two frames per chunk"])
def test_engine_hdf5_reader_gives_the_cpu_counts_and_status(tmp_path, rng, host_kernels, kind):
    """The GPU engine's HDF5 reads (:meth:`SourcesMixin._h5_reads`: reads, splits GPU / host
    frames, books rows and status) through an engine pipeline give
    every frame the counts and status of the CPU reader (:func:`~xrdct_dask.io.source.read_batch`):
    missing (-1 and past the end), truncated, deflate and multi-frame chunks (host fallback)."""
    from xrdct_dask.integrate._cupy_sources import SourcesMixin
    from xrdct_dask.integrate.engine import pipeline_batches
    from xrdct_dask.io.source import read_batch

    pytest.importorskip("bitshuffle")  # read_batch, the oracle, decodes on the CPU
    shape = (23, 19)
    dtype = np.uint16 if "uint16" in kind else np.uint32 if "uint32" in kind else np.int32
    frames = rng.poisson(4.0, (40, *shape)).astype(dtype)
    frames[:, 5] = np.iinfo(dtype).max if dtype != np.int32 else -1
    if kind == "two frames per chunk":
        with h5py.File(tmp_path / "d.h5", "w") as f:
            f.create_dataset("data", data=frames, chunks=(2, *shape), compression="gzip")
    else:
        write_frames(tmp_path / "d.h5", frames, kind.split()[0])
    if kind.startswith("bitshuffle"):
        with h5py.File(tmp_path / "d.h5", "r+") as f:
            d = f["data"]
            d.id.write_direct_chunk((3, 0, 0), d.id.read_direct_chunk((3, 0, 0))[1][:-9])
    src = open_source(f"{tmp_path / 'd.h5'}::/data")
    idx = np.arange(44)
    idx[[6, 30]] = -1
    idx[40:] = np.arange(38, 42)  # 40, 41: past the end
    want, wst = read_batch(src, idx)
    status = np.zeros(idx.size, np.int8)
    got = np.zeros((idx.size, shape[0] * shape[1]), np.int32)
    batches = [np.arange(a, min(a + 16, idx.size)) for a in range(0, idx.size, 16)]
    engine = _HostEngine(shape)
    nbytes = 0
    reads = SourcesMixin._h5_reads(engine, engine.arena_ring(), src, idx, batches, np.ones(idx.size))
    for b in pipeline_batches(engine.integrate_batches, reads):
        status[b.rows] = b.status
        if b.intensity is not None:
            got[b.rows] = b.intensity
        nbytes += b.nbytes
    assert nbytes > 0
    np.testing.assert_array_equal(status, wst)
    assert (status[[6, 30, 42, 43]] == FrameStatus.MISSING).all()
    ok = wst == FrameStatus.OK
    np.testing.assert_array_equal(got[ok], want[ok].reshape(ok.sum(), -1))
