"""Byte-offset decoding: exact against fabio for every case of the format, never out of bounds
(``DecoderTests`` of xrdct_dask.testing.conformance, on the numba decoder and the GPU decoder),
and the readers around it: whole files, payloads located in place, pinned arenas."""

from __future__ import annotations

import fabio
import numpy as np
import pytest

from xrdct_dask.io import CorruptFrameError, read_cbf_payload, read_frame
from xrdct_dask.testing.conformance import DecoderTests


class TestNumbaDecoder(DecoderTests):
    engine = "numpy"


@pytest.mark.gpu
class TestCupyDecoder(DecoderTests):
    engine = "cupy"


def test_read_frame_is_fabio_exact_and_errors_name_the_file(sim_scan, tmp_path):
    path = sim_scan.frame_path(3)
    np.testing.assert_array_equal(read_frame(path), fabio.open(str(path)).data)
    assert read_frame(path).dtype == np.int32
    raw = path.read_bytes()
    cut = tmp_path / "cut.cbf"
    cut.write_bytes(raw[: len(raw) - 2000])
    with pytest.raises(CorruptFrameError, match="cut.cbf: truncated"):
        read_frame(cut)
    junk = tmp_path / "junk.cbf"
    junk.write_bytes(b"not a cbf at all")
    with pytest.raises(CorruptFrameError, match="junk.cbf: no CIF binary section"):
        read_frame(junk)
    with pytest.raises(FileNotFoundError, match="missing.cbf"):
        read_frame(tmp_path / "missing.cbf")


def test_read_into_pinned_locates_payloads_in_place(sim_scan, tmp_path):
    """The GPU reader puts whole files in one arena and finds each payload inside its file image;
    a file larger than the slots (sized from the first file) makes the batch be read again."""
    from xrdct_dask.io.gpu_decode import read_into_pinned

    good = [sim_scan.frame_path(i) for i in range(3)]
    raw = good[0].read_bytes()
    cut = tmp_path / "cut.cbf"
    cut.write_bytes(raw[:-5000])
    junk = tmp_path / "junk.cbf"
    junk.write_bytes(b"\x00" * 100)
    padded = tmp_path / "padded.cbf"  # whole, 3x larger than the first file: trailing padding after the boundary
    padded.write_bytes(good[1].read_bytes() + b"\x00" * (2 * len(raw)))
    paths = good + [cut, junk, tmp_path / "missing.cbf", None, padded]
    for md5 in (False, True):
        arena, total, begin, end, shapes, md5s, errors, slot = read_into_pinned(
            paths, lambda n: np.zeros(n, np.uint8), md5=md5)
        assert total <= arena.size and slot >= 3 * len(raw)
        for k, p in list(enumerate(good)) + [(7, good[1])]:
            ref = read_cbf_payload(p)
            assert errors[k] is None and tuple(shapes[k]) == ref.shape and md5s[k] == (ref.md5 if md5 else None)
            assert bytes(arena[begin[k]:end[k]]) == bytes(ref.data)
        assert isinstance(errors[3], CorruptFrameError) and "truncated" in str(errors[3])
        assert isinstance(errors[4], CorruptFrameError)
        assert isinstance(errors[5], FileNotFoundError) and isinstance(errors[6], FileNotFoundError)


@pytest.mark.slow  # ~20 s: 1200 mutated files through both locators
def test_compiled_locate_agrees_with_locate_payload(sim_scan, shared_data_dir):
    """The compiled fast path (io.locate) takes real and simulated files as they are, and on
    thousands of mutated headers and tails it either gives what cbf.locate_payload gives or
    declines (never accepts a file that locate_payload rejects, never a different answer)."""
    from xrdct_dask.io.cbf import locate_payload
    from xrdct_dask.io.locate import locate_batch
    from xrdct_dask.testing.fixtures import REAL_CBF_NAME

    real_frame_path = shared_data_dir / REAL_CBF_NAME if shared_data_dir else None
    real_frame_path = real_frame_path if real_frame_path and real_frame_path.is_file() else None
    images = [sim_scan.frame_path(0).read_bytes()]
    if real_frame_path is not None:
        images.append(real_frame_path.read_bytes())
    rng = np.random.default_rng(11)
    edits = [b"\r\n", b"\n", b" ", b";", b'"', b"0", b"9", b":", b"=", b"X", b"x", b"-", b"\x00", b"\t",
             b"\x0c\x1a\x04\xd5", b"--CIF-BINARY-FORMAT-SECTION--", b"--CIF-BINARY-FORMAT-SECTION----",
             b"BYTE_OFFSET", b"32-bit"]
    cases = []
    for raw in images:
        cases.append(raw)
        head_end = raw.find(b"\x0c\x1a\x04\xd5") + 4
        for _ in range(600):
            b = bytearray(raw)
            for _ in range(rng.integers(1, 4)):
                region = rng.random()
                if region < 0.7:  # the MIME header of the binary section
                    i = int(rng.integers(max(0, head_end - 700), head_end))
                elif region < 0.85:  # the tail: payload end, padding, closing boundary
                    i = int(rng.integers(len(b) - 4200, len(b)))
                else:  # cut the file
                    del b[int(rng.integers(head_end, len(b))):]
                    continue
                e = edits[rng.integers(len(edits))]
                if rng.random() < 0.5:
                    b[i:i + len(e)] = e  # overwrite
                else:
                    b[i:i] = e  # insert
            cases.append(bytes(b))
    buf = np.frombuffer(b"".join(cases), np.uint8)
    sizes = np.array([len(c) for c in cases])
    bases = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ok, begin, end, ny, nx = locate_batch(buf, bases, sizes)
    assert ok[0] and (real_frame_path is None or ok[601])  # files as written take the fast path
    declined = 0
    for k, raw in enumerate(cases):
        try:
            off, nbytes, shape, _ = locate_payload(memoryview(raw))
        except CorruptFrameError:
            assert not ok[k], f"case {k}: fast path accepted a file locate_payload rejects"
            continue
        if ok[k]:
            assert (begin[k] - bases[k], end[k] - begin[k], (ny[k], nx[k])) == (off, nbytes, shape), f"case {k}"
        else:
            declined += 1
    rejected = len(cases) - ok.sum() - declined
    print(f"{len(cases)} cases: fast path {ok.sum()}, declined {declined}, rejected {rejected}")
    assert ok.sum() > len(cases) // 4 and rejected > len(cases) // 10  # both kinds of case are exercised


def _best_cpu_seconds(calls: dict, repeats: int) -> dict:
    """Best thread CPU time of each call over ``repeats`` interleaved rounds: time spent descheduled
    on a shared machine does not count, and interleaving exposes every call to the same load."""
    import time

    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, fn in calls.items():
            t = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - t)
    return best


def test_decoder_is_at_least_as_fast_as_fabio_on_the_real_frame(real_cbf):
    """Issue 29: a real Pilatus 2M frame (2.5 M pixels, all but 12 one-byte deltas) decodes in no
    more CPU time than fabio's Cython decoder (``fabio.ext.byte_offset.dec_cbf``), both making a
    new array as a reader does.  Best of 15 interleaved calls each; measured 0.45-0.65 of fabio's
    time on the 2-core VM (the decoder before issue 29: 1.6x), so the bound 1.0 leaves room for noise."""
    from fabio.ext.byte_offset import dec_cbf

    from xrdct_dask.io import decode_payload, read_cbf_payload

    p = read_cbf_payload(real_cbf)
    raw = bytes(p.data)
    np.testing.assert_array_equal(decode_payload(p).ravel(), np.asarray(dec_cbf(raw, p.size)))  # compiled, same
    best = _best_cpu_seconds({"ours": lambda: decode_payload(p), "fabio": lambda: dec_cbf(raw, p.size)}, 15)
    assert best["ours"] <= best["fabio"], f"ours {best['ours'] * 1e3:.2f} ms, fabio {best['fabio'] * 1e3:.2f} ms"


def test_fused_kernel_cache_is_keyed_on_the_decoder_source():
    """The numpy engine's fused decode + integrate kernel compiles io.decode's decoder in, and numba
    validates a cached function against its own file only: the kernel holds the decoder file's
    sha256 in its closure, which numba hashes into the cache key, so a changed decoder is compiled
    again, never loaded stale from the cache."""
    import hashlib

    from xrdct_dask.integrate._numpy import sums_from_payloads
    from xrdct_dask.io import decode

    digest = hashlib.sha256(open(decode.__file__, "rb").read()).hexdigest()
    assert decode.SOURCE_DIGEST == digest
    assert digest in [c.cell_contents for c in sums_from_payloads.py_func.__closure__ or ()]
