"""Byte-offset decoding: exact against fabio for every case of the format, never out of bounds.

``DecoderTests`` is the conformance suite every decoder passes; the numba decoder subclasses it
here and the GPU decoder in test_gpu.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fabio
import fabio.compression as fc

from xrdct_dask.io import CorruptFrameError, decode_batch, pack_payloads, read_cbf_payload, read_frame


def encode(values) -> bytes:
    """Reference encoder: fabio's (escapes to 16, 32 and 64 bit as needed)."""
    return bytes(fc.compByteOffset(np.asarray(values, dtype=np.int64)))


def fabio_decode(payload: bytes, n: int) -> np.ndarray:
    return np.asarray(fc.decByteOffset(payload, size=n, dtype=np.int32))


I32 = np.iinfo(np.int32)
CASES = {
    "8-bit deltas": [0, 1, -1, 127, 0, -127, 5, 3],
    "escape boundaries": [0, -128, 0, 128, 0, 32767, 0, -32768, 0, 32768, 0, -32769],
    "16-bit deltas": [0, 200, -300, 30000, -2000, 1000],
    "32-bit deltas": [0, 70000, -70000, 1_000_000_000, -1_000_000_000, 12],
    "64-bit escape": [0, I32.min, I32.max, I32.min, 0, I32.max, -1],
    "negative gaps and bad pixels": [-1, -1, -2, 5, -1, -2, 0, 100000, -2],
}


class DecoderTests:
    """Subclass and implement ``decode(payloads, npix) -> (list of int32 arrays, status array)``."""

    def decode(self, payloads: list[bytes], npix: list[int]):
        raise TypeError(f"{type(self).__name__} must define decode(payloads, npix): it runs one decoder")

    @pytest.mark.parametrize("case", list(CASES))
    def test_format_cases_match_fabio(self, case):
        values = np.asarray(CASES[case], dtype=np.int32)
        payload = encode(values)
        frames, status = self.decode([payload], [values.size])
        assert status.tolist() == [0]
        np.testing.assert_array_equal(frames[0], fabio_decode(payload, values.size))
        np.testing.assert_array_equal(frames[0], values)

    def test_frames_of_different_sizes_in_one_batch(self, rng):
        frames = [rng.integers(-2, 70000, n).astype(np.int32) for n in (1, 17, 1000, 3, 4096)]
        frames[2][::50] = I32.min  # a few 64-bit escapes in the middle
        out, status = self.decode([encode(f) for f in frames], [f.size for f in frames])
        assert not status.any()
        for got, want in zip(out, frames):
            np.testing.assert_array_equal(got, want)

    def test_truncated_payload_is_flagged_not_read_past(self, rng):
        values = rng.integers(-5, 100000, 300).astype(np.int32)
        payload = encode(values)
        good = encode(values[:10])
        cuts = sorted({0, 1, 2, 3, len(payload) // 2, len(payload) - 1})
        batch = [payload[:c] for c in cuts] + [good]
        out, status = self.decode(batch, [values.size] * len(cuts) + [10])
        assert status[:-1].tolist() == [1] * len(cuts)
        assert status[-1] == 0
        np.testing.assert_array_equal(out[-1], values[:10])

    def test_real_pilatus_frame_matches_fabio(self, real_cbf):
        p = read_cbf_payload(real_cbf)
        out, status = self.decode([bytes(p.data)], [p.size])
        assert status.tolist() == [0]
        np.testing.assert_array_equal(out[0].reshape(p.shape), fabio.open(str(real_cbf)).data)

    def test_simulated_frames_match_fabio(self, sim_scan):
        paths = [sim_scan.frame_path(i) for i in (0, 1, 57, 300)]
        pl = [read_cbf_payload(p) for p in paths]
        out, status = self.decode([bytes(p.data) for p in pl], [p.size for p in pl])
        assert not status.any()
        for got, p, path in zip(out, pl, paths):
            np.testing.assert_array_equal(got.reshape(p.shape), fabio.open(str(path)).data)


class TestNumbaDecoder(DecoderTests):
    def decode(self, payloads, npix):
        buf, offsets = pack_payloads(payloads)
        out, out_off, status = decode_batch(buf, offsets, npix)
        return [out[a:b] for a, b in zip(out_off[:-1], out_off[1:])], status


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(min_value=1, max_value=80))
def test_fuzz_random_bytes_never_crash_or_overrun(data, n):
    """Any byte string decodes to status 0 (enough bytes) or 1 (ran out), never an exception."""
    out, _, status = decode_batch(*pack_payloads([data]), [n])
    assert status[0] in (0, 1)
    assert out.shape == (n,)


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


def test_compiled_locate_agrees_with_locate_payload(sim_scan):
    """The compiled fast path (io.locate) takes real and simulated files as they are, and on
    thousands of mutated headers and tails it either gives what cbf.locate_payload gives or
    declines (never accepts a file that locate_payload rejects, never a different answer)."""
    from xrdct_dask.io.cbf import locate_payload
    from xrdct_dask.io.locate import locate_batch

    from .conftest import SHARED_DATA

    real_frame_path = SHARED_DATA / "pilatus2m_l-cyst_00001.cbf"
    real_frame_path = real_frame_path if real_frame_path.is_file() else None
    images = [sim_scan.frame_path(0).read_bytes()]
    if real_frame_path is not None:
        images.append(real_frame_path.read_bytes())
    rng = np.random.default_rng(11)
    edits = [b"\r\n", b"\n", b" ", b";", b'"', b"0", b"9", b":", b"=", b"X", b"x", b"-", b"\x00", b"\t", b"\x0c\x1a\x04\xd5",
             b"--CIF-BINARY-FORMAT-SECTION--", b"--CIF-BINARY-FORMAT-SECTION----", b"BYTE_OFFSET", b"32-bit"]
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
