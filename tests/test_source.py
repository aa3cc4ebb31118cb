"""The frame-source contract ``read_frames(source, indices)``: CBF templates (plain, .gz, .bz2) and
HDF5 (plain datasets, Eiger masters with external links, virtual datasets), against the outside
readers -- fabio for CBF (it opens .gz / .bz2 itself), h5py + hdf5plugin for HDF5 -- exactly
(integer frames: no tolerance).  Also: the raw-chunk path, missing and corrupt frames, the bound
on open files, and the simulator's HDF5 scans.
"""

from __future__ import annotations

import bz2
import gzip
import os
import shutil

import fabio
import h5py
import hdf5plugin
import numpy as np
import pytest

from xrdct_dask.io import hdf5
from xrdct_dask.io.cbf import CorruptFrameError, SizeMismatchError, TruncatedFrameError
from xrdct_dask.io.source import CbfTemplate, Hdf5Frames, open_source, read_frames
from xrdct_dask.io.status import FrameStatus

from .conftest import SHARED_DATA

EIGER_FILES = ("eiger-6472_data_000001.h5", "eiger-6587_data_000001.h5")


@pytest.fixture(scope="module")
def eiger_files():
    paths = [SHARED_DATA / n for n in EIGER_FILES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"real Eiger files not available: {missing} (set XRDCT_SHARED_DATA)")
    return paths


def oracle(path, dset="entry/data/data"):
    with h5py.File(path, "r") as f:
        return f[dset][...]


def small_h5(path, frames, chunks=None, **filters):
    """Write ``frames`` (n, ny, nx) to ``path::/entry/data/data`` (NXentry / NXdata)."""
    with h5py.File(path, "w") as f:
        g = f.create_group("entry/data")
        f["entry"].attrs["NX_class"] = "NXentry"
        g.attrs.update({"NX_class": "NXdata", "signal": "data"})
        g.create_dataset("data", data=frames, chunks=chunks or (1, *frames.shape[1:]), **filters)
    return path


@pytest.fixture()
def frames(rng):
    """Detector-like counts: mostly small, some gaps (2**32 - 1 as Eiger writes), int32 range."""
    a = rng.poisson(3.0, (7, 33, 21)).astype(np.uint32)
    a[:, 10, :] = 2**32 - 1
    a[2, 5, 5] = 10**9
    return a


# ------------------------------------------------------------------------------------------
# real Eiger data (bitshuffle-LZ4, uint32): plain, master with external links, VDS over both
# ------------------------------------------------------------------------------------------
def test_real_eiger_frames_equal_h5py_hdf5plugin(eiger_files):
    for p in eiger_files:
        src = open_source(p)
        assert (src.nframes, src.frame_shape, src.dtype) == (2, (1065, 1030), np.uint32)
        chunks = src.read_raw_chunks([0, 1])
        assert chunks.filter_id.tolist() == [hdf5.FILTER_BSLZ4] * 2
        got = read_frames(p, [1, 0])
        np.testing.assert_array_equal(got, oracle(p)[[1, 0]])


def test_eiger_master_with_external_links(eiger_files, tmp_path):
    """A master written around the data files: absolute links, and relative links beside it."""
    want = np.concatenate([oracle(p) for p in eiger_files])
    for relative in (False, True):
        d = tmp_path / ("rel" if relative else "abs")
        d.mkdir()
        with h5py.File(d / "m_master.h5", "w") as f:
            g = f.create_group("entry/data")
            for k, p in enumerate(eiger_files):
                if relative:
                    os.symlink(p, d / p.name)
                g[f"data_{k + 1:06d}"] = h5py.ExternalLink(p.name if relative else str(p), "/entry/data/data")
        for spec in (d / "m_master.h5", f"{d / 'm_master.h5'}::/entry/data"):
            src = open_source(spec)
            assert src.nframes == 4
            np.testing.assert_array_equal(read_frames(src, [3, 0, 2, 1]), want[[3, 0, 2, 1]])
        assert {s.file for s in src.segments} == {(d / p.name) if relative else p for p in eiger_files}


def test_vds_over_both_files_is_read_from_its_sources(eiger_files, tmp_path):
    layout = h5py.VirtualLayout(shape=(4, 1065, 1030), dtype=np.uint32)
    for k, p in enumerate(eiger_files):
        layout[2 * k:2 * k + 2] = h5py.VirtualSource(str(p), "entry/data/data", shape=(2, 1065, 1030))
    with h5py.File(tmp_path / "vds.h5", "w") as f:
        f.create_virtual_dataset("frames", layout)
    src = open_source(f"{tmp_path / 'vds.h5'}::/frames")
    assert [s.file for s in src.segments] == list(eiger_files)  # resolved to the data files
    assert src.read_raw_chunks([3]).names == [f"{eiger_files[1]}::/entry/data/data frame 1"]
    np.testing.assert_array_equal(read_frames(src, range(4)), oracle(tmp_path / "vds.h5", "frames"))


# ------------------------------------------------------------------------------------------
# codecs of the raw path, and the h5py fallback
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, filters, fid", [
    ("bitshuffle-lz4", hdf5plugin.Bitshuffle(nelems=0, cname="lz4"), hdf5.FILTER_BSLZ4),
    ("lz4", hdf5plugin.LZ4(), hdf5.FILTER_LZ4),
    ("deflate", {"compression": "gzip"}, hdf5.FILTER_DEFLATE),
    ("none", {}, hdf5.FILTER_NONE),
])
def test_raw_path_codecs_equal_h5py(tmp_path, frames, name, filters, fid):
    p = small_h5(tmp_path / f"{name}.h5", frames, **filters)
    src = open_source(p)
    chunks = src.read_raw_chunks(range(7))
    assert set(chunks.filter_id.tolist()) == {fid}
    decoded, status = hdf5.decode_chunks(chunks)
    assert not status.any()
    np.testing.assert_array_equal(decoded, frames)
    np.testing.assert_array_equal(read_frames(src, [6, 2]), oracle(p)[[6, 2]])


def test_raw_chunks_land_in_the_given_buffer(tmp_path, frames):
    """The GPU engine passes pinned memory: the chunk bytes are read straight into it."""
    src = open_source(small_h5(tmp_path / "a.h5", frames, **hdf5plugin.Bitshuffle(cname="lz4")))
    buf = np.zeros(1 << 20, np.uint8)
    chunks = src.read_raw_chunks([4, 5], out=buf)
    assert np.shares_memory(chunks.buffer, buf) and chunks.offsets[0] == 0
    with h5py.File(src.file) as f:
        assert (bytes(buf[chunks.offsets[1]:chunks.offsets[2]])
                == f["entry/data/data"].id.read_direct_chunk((5, 0, 0))[1])


@pytest.mark.parametrize("userblock", [0, 1024])
def test_chunks_read_outside_hdf5_are_its_stored_bytes(tmp_path, frames, userblock):
    """The raw path reads each chunk with pread at the file offset h5py gives (after a user block
    too), on reader threads: the bytes are exactly what ``read_direct_chunk`` returns, for every
    frame, with and without a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    p = tmp_path / "ub.h5"
    with h5py.File(p, "w", userblock_size=userblock) as f:
        f.create_dataset("entry/data/data", data=frames, chunks=(1, *frames.shape[1:]),
                         **hdf5plugin.Bitshuffle(cname="lz4"))
    src = open_source(p)
    with h5py.File(p) as f:
        want = [f["entry/data/data"].id.read_direct_chunk((k, 0, 0))[1] for k in range(len(frames))]
    with ThreadPoolExecutor(3) as pool:
        for kw in ({}, {"pool": pool}):
            chunks = src.read_raw_chunks([6, 0, 3, 1, 5, 2, 4], **kw)
            got = [bytes(chunks.buffer[a:b]) for a, b in zip(chunks.offsets[:-1], chunks.offsets[1:])]
            assert got == [want[k] for k in (6, 0, 3, 1, 5, 2, 4)] and not chunks.status.any()


def test_a_file_ending_inside_a_chunk_is_truncated_not_read_past(tmp_path, frames):
    """A data file cut short (a copy interrupted) after its chunk index was written: the frames
    whose chunks lie past the end are TRUNCATED, the others read whole."""
    p = small_h5(tmp_path / "cut.h5", frames, **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(p) as f:
        d = f["entry/data/data"]
        last = max(range(len(frames)), key=lambda k: d.id.get_chunk_info_by_coord((k, 0, 0)).byte_offset)
        cut_at = d.id.get_chunk_info_by_coord((last, 0, 0)).byte_offset + 10
    src = open_source(p)  # the chunk index is read before the file is cut
    src.read_raw_chunks([0])
    with open(p, "r+b") as fh:
        fh.truncate(cut_at)
    chunks = src.read_raw_chunks(range(len(frames)))
    assert chunks.status[last] == FrameStatus.TRUNCATED and "ends inside" in chunks.reasons[last]
    assert (np.delete(chunks.status, last) == FrameStatus.OK).all()
    decoded, status = hdf5.decode_chunks(chunks)
    np.testing.assert_array_equal(decoded[np.arange(len(frames)) != last], np.delete(frames, last, axis=0))


def test_multi_frame_chunks_fall_back_to_h5py(tmp_path, frames):
    p = small_h5(tmp_path / "big_chunks.h5", frames, chunks=(3, 33, 21), **hdf5plugin.Bitshuffle(cname="lz4"))
    src = open_source(p)
    with pytest.raises(ValueError, match="one frame per chunk"):
        src.read_raw_chunks([0])
    np.testing.assert_array_equal(read_frames(src, [5, 0, 6]), frames[[5, 0, 6]])


# ------------------------------------------------------------------------------------------
# missing and corrupt frames: the CBF path's status semantics, never a crash
# ------------------------------------------------------------------------------------------
def test_missing_frames_raise_file_not_found(tmp_path, frames):
    a = small_h5(tmp_path / "d1.h5", frames[:4], **hdf5plugin.Bitshuffle(cname="lz4"))
    b = small_h5(tmp_path / "d2.h5", frames[4:], **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(tmp_path / "master.h5", "w") as f:
        g = f.create_group("entry/data")
        g["data_000001"] = h5py.ExternalLink(a.name, "/entry/data/data")
        g["data_000002"] = h5py.ExternalLink(b.name, "/entry/data/data")
        layout = h5py.VirtualLayout(shape=(8, 33, 21), dtype=np.uint32)  # frame 7 mapped by nothing
        layout[0:4] = h5py.VirtualSource(a.name, "/entry/data/data", shape=(4, 33, 21))
        layout[4:7] = h5py.VirtualSource(b.name, "/entry/data/data", shape=(3, 33, 21))
        f.create_virtual_dataset("vds", layout)
    with h5py.File(tmp_path / "unwritten.h5", "w") as f:  # chunk 1 never written (acquisition stopped)
        d = f.create_dataset("data", shape=(3, 33, 21), dtype=np.uint32, chunks=(1, 33, 21),
                             **hdf5plugin.Bitshuffle(cname="lz4"))
        d[0], d[2] = frames[0], frames[2]
    b.unlink()
    eiger = open_source(f"{tmp_path / 'master.h5'}::/entry/data")
    assert eiger.nframes == 8  # the missing file counted as large as the first one
    np.testing.assert_array_equal(read_frames(eiger, [3, 0]), frames[[3, 0]])
    with pytest.raises(FileNotFoundError, match="d2.h5"):
        read_frames(eiger, [5])
    vds = open_source(f"{tmp_path / 'master.h5'}::/vds")
    np.testing.assert_array_equal(read_frames(vds, [1]), frames[[1]])
    for i in (4, 7, 8):
        with pytest.raises(FileNotFoundError, match="d2.h5|not mapped|not in the source"):
            read_frames(vds, [i])
    st = vds.read_raw_chunks([0, 4, 7, 8]).status
    assert st.tolist() == [FrameStatus.OK] + [FrameStatus.MISSING] * 3
    with pytest.raises(FileNotFoundError, match="unwritten.h5.*frame 1: chunk not written"):
        read_frames(f"{tmp_path / 'unwritten.h5'}::/data", [0, 1])
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "nothing.h5")


def _with_chunk(tmp_path, name, chunk: bytes, like):
    """A dataset whose frame 0 is ``chunk`` (written as is, bitshuffle-LZ4 pipeline declared)."""
    with h5py.File(tmp_path / name, "w") as f:
        d = f.create_dataset("data", shape=(1, *like.shape), dtype=like.dtype, chunks=(1, *like.shape),
                             **hdf5plugin.Bitshuffle(cname="lz4"))
        d.id.write_direct_chunk((0, 0, 0), chunk)
    return f"{tmp_path / name}::/data"


def test_corrupt_chunks_raise_naming_file_and_frame(tmp_path, frames):
    good = small_h5(tmp_path / "good.h5", frames[:1], **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(good) as f:
        chunk = bytearray(f["entry/data/data"].id.read_direct_chunk((0, 0, 0))[1])
    truncated = _with_chunk(tmp_path, "trunc.h5", bytes(chunk[:-20]), frames[0])
    with pytest.raises(TruncatedFrameError, match=r"trunc\.h5::/data frame 0"):
        read_frames(truncated, [0])
    wrong_size = bytearray(chunk)
    wrong_size[0:8] = (frames[0].nbytes * 2).to_bytes(8, "big")
    with pytest.raises(SizeMismatchError, match="size.h5::/data frame 0"):
        read_frames(_with_chunk(tmp_path, "size.h5", bytes(wrong_size), frames[0]), [0])
    bad_len = bytearray(chunk)
    bad_len[12:16] = (2**31 - 1).to_bytes(4, "big")  # a block length past the chunk: bitshuffle would read past it
    with pytest.raises(CorruptFrameError, match="len.h5::/data frame 0"):
        read_frames(_with_chunk(tmp_path, "len.h5", bytes(bad_len), frames[0]), [0])


def test_fuzzed_bitshuffle_chunks_never_crash(eiger_files):
    """Mutated real chunks (lengths, bytes, truncation) come back as a status, never a segfault;
    bitshuffle itself reads past the buffer on a corrupt block length."""
    src = open_source(eiger_files[0])
    chunks = src.read_raw_chunks([0])
    good = chunks.buffer.copy()
    rng = np.random.default_rng(0)
    outcomes = set()
    for t in range(150):
        buf = good.copy()
        if t % 3 == 0:
            k = 12 + 4 * rng.integers(0, 50)  # somewhere in the first blocks' length words
            buf[k:k + 4] = rng.integers(0, 256, 4)
        elif t % 3 == 1:
            k = rng.integers(12, buf.size, 30)
            buf[k] = rng.integers(0, 256, 30)
        else:
            buf = buf[:rng.integers(0, buf.size)]
        c = hdf5.RawChunks(buf, np.array([0, buf.size]), chunks.filter_id, chunks.status.copy(), chunks.shape,
                           chunks.dtype, chunks.names, {})
        _, status = hdf5.decode_chunks(c)
        outcomes.add(int(status[0]))
    assert outcomes <= {FrameStatus.OK, FrameStatus.TRUNCATED, FrameStatus.SIZE_MISMATCH, FrameStatus.CORRUPT_HEADER}
    assert FrameStatus.TRUNCATED in outcomes and FrameStatus.CORRUPT_HEADER in outcomes


def test_open_files_stay_bounded(tmp_path, frames, monkeypatch):
    """A VDS over 12 files read through a cache of 3 handles: never more than 3 files open
    (pyFAI #2275: reading through the VDS keeps every source file open)."""
    monkeypatch.setattr(hdf5, "FILES", hdf5.H5FileCache(maxsize=3))
    layout = h5py.VirtualLayout(shape=(12, 33, 21), dtype=np.uint32)
    for k in range(12):
        small_h5(tmp_path / f"part{k}.h5", frames[k % 7][None], **hdf5plugin.Bitshuffle(cname="lz4"))
        layout[k] = h5py.VirtualSource(f"part{k}.h5", "/entry/data/data", shape=(1, 33, 21))
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_virtual_dataset("entry/measurement/eiger", layout)
    src = Hdf5Frames(tmp_path / "scan.h5", "/entry/measurement/eiger")
    assert len(src.segments) == 12 and len(hdf5.FILES) <= 3
    got = src.read_frames(np.arange(12)[::-1])
    assert len(hdf5.FILES) <= 3
    np.testing.assert_array_equal(got, frames[np.arange(12)[::-1] % 7])


# ------------------------------------------------------------------------------------------
# finding the frames in a NeXus / BLISS file
# ------------------------------------------------------------------------------------------
def test_frames_found_without_a_dataset_path(tmp_path, frames):
    # BLISS-like: entry "1.1", a 1D counter plot as the default NXdata, the detector a VDS elsewhere
    det = small_h5(tmp_path / "lima_0000.h5", frames, **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(tmp_path / "bliss.h5", "w") as f:
        f.attrs["default"] = "1.1"
        e = f.create_group("1.1")
        e.attrs.update({"NX_class": "NXentry", "default": "plotselect"})
        plot = e.create_group("plotselect")
        plot.attrs.update({"NX_class": "NXdata", "signal": "mon"})
        plot["mon"] = np.arange(7.0)
        imgs = e.create_group("images")
        imgs.attrs.update({"NX_class": "NXdata", "signal": "eiger"})
        layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
        layout[:] = h5py.VirtualSource(det.name, "/entry/data/data", shape=frames.shape)
        imgs.create_virtual_dataset("eiger", layout)
        e["measurement/eiger"] = h5py.SoftLink("/1.1/images/eiger")
    src = open_source(tmp_path / "bliss.h5")
    assert src.path == "/1.1/images/eiger" and src.segments[0].file == det
    np.testing.assert_array_equal(read_frames(src, [6]), frames[[6]])
    np.testing.assert_array_equal(read_frames(f"{tmp_path / 'bliss.h5'}::/1.1/measurement/eiger", [2]), frames[[2]])
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["entry/x"] = np.arange(3)
    with pytest.raises(ValueError, match="no frames found.*::/path/to/frames"):
        open_source(tmp_path / "empty.h5")
    with pytest.raises(ValueError, match="no dataset /entry/nope"):
        open_source(f"{tmp_path / 'bliss.h5'}::/entry/nope")


# ------------------------------------------------------------------------------------------
# CBF templates: plain, .gz, .bz2 (fabio opens all three)
# ------------------------------------------------------------------------------------------
def test_compressed_cbf_equals_fabio(real_cbf, tmp_path):
    raw = real_cbf.read_bytes()
    (tmp_path / "f_000000.cbf.gz").write_bytes(gzip.compress(raw, 3))
    (tmp_path / "f_000001.cbf.bz2").write_bytes(bz2.compress(raw, 5))
    shutil.copy(real_cbf, tmp_path / "f_000002.cbf")
    want = fabio.open(str(real_cbf)).data
    for i, suffix in enumerate((".cbf.gz", ".cbf.bz2", ".cbf")):
        path = tmp_path / f"f_{i:06d}{suffix}"
        np.testing.assert_array_equal(fabio.open(str(path)).data, want)  # the oracle reads it too
        got = read_frames(str(tmp_path / ("f_{index:06d}" + suffix)), [i])
        assert got.shape == (1, 1679, 1475) and got.dtype == np.int32
        np.testing.assert_array_equal(got[0], want)


def test_cbf_template_errors(real_cbf, tmp_path):
    raw = real_cbf.read_bytes()
    (tmp_path / "t_000000.cbf.gz").write_bytes(gzip.compress(raw)[:-5000])
    with pytest.raises(TruncatedFrameError, match=r"t_000000\.cbf\.gz: gzip stream ends"):
        read_frames(str(tmp_path / "t_{index:06d}.cbf.gz"), [0])
    (tmp_path / "t_000001.cbf.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(CorruptFrameError, match="not a valid gzip stream"):
        read_frames(str(tmp_path / "t_{index:06d}.cbf.gz"), [1])
    with pytest.raises(FileNotFoundError, match="t_000009.cbf"):
        read_frames(str(tmp_path / "t_{index:06d}.cbf"), [9])
    os.mkfifo(tmp_path / "t_000002.cbf")  # a FIFO would block a plain open() forever
    with pytest.raises(CorruptFrameError, match="a named pipe, not a frame file"):
        read_frames(str(tmp_path / "t_{index:06d}.cbf"), [2])
    with pytest.raises(ValueError, match="unknown field {idx}"):
        CbfTemplate("frames/{idx}.cbf")
    with pytest.raises(ValueError, match="needs the scan's shape"):  # {z} is computed from it
        CbfTemplate("frames/{z}/{index}.cbf")
    with pytest.raises(ValueError, match="neither a CBF template"):
        open_source("frames/frame.cbf")


# ------------------------------------------------------------------------------------------
# the simulator writes HDF5 scans with the same pixels as its CBF scans
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scan_both_ways(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    kw = dict(nz=1, nomega=4, nx=6, seed=11, threads=2)
    return (simulate_scan(tmp_path_factory.mktemp("cbf"), **kw),
            simulate_scan(tmp_path_factory.mktemp("h5"), fmt="h5", frames_per_file=10, **kw))


def test_simulated_hdf5_scan_equals_its_cbf_twin(scan_both_ways):
    import yaml

    cbf, h5 = scan_both_ways
    n = 24
    master = h5.root / "frames" / "scan_master.h5"
    assert h5.frames_template == "frames/scan_master.h5::/entry/data/data"
    assert yaml.safe_load(h5.workflow.read_text())["inputs"]["frames"] == h5.frames_template
    assert sorted(p.name for p in (h5.root / "frames").iterdir()) == [
        "scan_data_000001.h5", "scan_data_000002.h5", "scan_data_000003.h5", "scan_master.h5"]
    want = np.stack([fabio.open(str(cbf.frame_path(i))).data for i in range(n)])
    src = open_source(h5.frames)
    assert src.nframes == n and src.dtype == np.int32 and len(src.segments) == 3
    np.testing.assert_array_equal(read_frames(src, range(n)), want)
    np.testing.assert_array_equal(read_frames(f"{master}::/entry/data", range(n)), want)  # the Eiger links
    np.testing.assert_array_equal(oracle(master), want)  # h5py through the VDS
    np.testing.assert_array_equal(read_frames(cbf.frames, range(n)), want)
    with h5py.File(h5.root / "frames" / "scan_data_000002.h5") as f:
        d = f["entry/data/data"]
        assert d.chunks == (1, *want.shape[1:]) and "32008" in d._filters
        assert (d.attrs["image_nr_low"], d.attrs["image_nr_high"]) == (11, 20)
    with pytest.raises(ValueError, match="no file per frame"):
        h5.frame_path(0)


def test_cli_simulate_format_h5(tmp_path):
    from typer.testing import CliRunner

    from xrdct_dask.cli import app
    from xrdct_dask.io import read_frames as read_frames_io

    r = CliRunner().invoke(app, ["simulate", str(tmp_path / "s"), "--nz", "1", "--nomega", "2", "--nx", "3",
                                 "--format", "h5", "--frames-per-file", "4"])
    assert r.exit_code == 0, r.output
    src = open_source(tmp_path / "s" / "frames" / "scan_master.h5")
    assert src.nframes == 6 and len(src.segments) == 2
    assert read_frames_io(src, [5]).shape == (1, *src.frame_shape)
    r = CliRunner().invoke(app, ["simulate", str(tmp_path / "t"), "--format", "tiff"])
    assert r.exit_code == 2 and "--format must be cbf or h5 (got tiff)" in r.output
