"""DecoderTests: byte-offset decoding against fabio."""

from __future__ import annotations

import fabio
import fabio.compression as fc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xrdct_dask.backend import to_host
from xrdct_dask.io import decode_batch, pack_payloads, read_cbf_payload
from xrdct_dask.io.gpu_decode import decode_payloads_gpu
from xrdct_dask.testing.conformance.base import EngineTests


# ==========================================================================================
# decode: byte-offset payloads -> int32
# ==========================================================================================
def encode(values) -> bytes:
    """Reference encoder: fabio's (escapes to 16, 32 and 64 bit as needed)."""

    return bytes(fc.compByteOffset(np.asarray(values, dtype=np.int64)))


def fabio_decode(payload: bytes, n: int) -> np.ndarray:

    return np.asarray(fc.decByteOffset(payload, size=n, dtype=np.int32))


I32 = np.iinfo(np.int32)


DECODER_CASES = {
    "8-bit deltas": [0, 1, -1, 127, 0, -127, 5, 3],
    "escape boundaries": [0, -128, 0, 128, 0, 32767, 0, -32768, 0, 32768, 0, -32769],
    "16-bit deltas": [0, 200, -300, 30000, -2000, 1000],
    "32-bit deltas": [0, 70000, -70000, 1_000_000_000, -1_000_000_000, 12],
    "64-bit escape": [0, I32.min, I32.max, I32.min, 0, I32.max, -1],
    "negative gaps and bad pixels": [-1, -1, -2, 5, -1, -2, 0, 100000, -2],
}


def complete_tokens(payload: bytes, n: int) -> int:
    """How many whole byte-offset tokens (at most ``n``) ``payload`` starts with: the status oracle
    (0 where it is ``n``, else 1).  fabio is no oracle here: it reads past a payload's end."""
    pos = k = 0
    while k < n:
        size = 1
        if payload[pos:pos + 1] == b"\x80":  # escape: int16; 0x8000: int32; 0x80000000: int64
            size = 3
            if payload[pos + 1:pos + 3] == b"\x00\x80":
                size = 7
                if payload[pos + 3:pos + 7] == b"\x00\x00\x00\x80":
                    size = 15
        if pos + size > len(payload):
            break
        pos += size
        k += 1
    return k


def runs_with_jumps(seed: int, runs) -> np.ndarray:
    """int32 pixels: runs of small deltas (|d| <= 60, one byte each), each run followed by one
    jump of the given size (an escape to 16, 32 or 64 bit where it needs one), wrapped modulo 2**32."""
    rng = np.random.default_rng(seed)
    deltas = []
    for length, jump in runs:
        deltas.extend(rng.integers(-60, 61, length).tolist())
        deltas.append(jump)
    return (np.cumsum(np.asarray(deltas, dtype=np.int64)) % 2**32).astype(np.uint32).view(np.int32)


JUMPS = st.one_of(st.integers(-127, 127), st.sampled_from([-128, 128, -32768, 32767, 32768, -32769, I32.min, I32.max]),
                  st.integers(-40000, 40000), st.integers(-2**32 + 1, 2**32 - 1))


def numpy_decode(payloads, npix):
    """The numpy (numba) engine's batch decoder: ``(list of int32 arrays, status (n,))``."""

    out, out_off, status = decode_batch(*pack_payloads(payloads), npix)
    return [out[a:b] for a, b in zip(out_off[:-1], out_off[1:])], np.asarray(status)


class DecoderTests(EngineTests):
    """Byte-offset decoding is exact against fabio for every case of the format and never reads
    out of bounds: a payload that ends early gets status 1 (0 = decoded), whatever its bytes.

    ``decode(payloads, npix) -> (list of int32 arrays on the host, status (n,))`` runs the
    engine's decoder on a batch; override it for an engine of your own."""

    def decode(self, payloads: list[bytes], npix):
        if self.engine == "numpy":
            return numpy_decode(payloads, npix)
        if self.engine == "cupy":

            out, off, status = decode_payloads_gpu(payloads, npix)
            host = to_host(out)
            return [host[a:b] for a, b in zip(off[:-1], off[1:])], to_host(status)
        raise TypeError(f"{type(self).__name__}: no decoder for engine {self.engine!r}: define decode(payloads, npix)")

    @pytest.mark.parametrize("case", list(DECODER_CASES))
    def test_format_cases_match_fabio(self, case):
        values = np.asarray(DECODER_CASES[case], dtype=np.int32)
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

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=0, max_size=64), st.integers(min_value=1, max_value=80))
    def test_fuzz_random_bytes_never_crash_or_overrun(self, data, n):
        """Any byte string decodes to status 0 (enough bytes) or 1 (ran out), never an exception."""
        out, status = self.decode([data], [n])
        assert status[0] in (0, 1)
        assert out[0].shape == (n,)

    def test_escapes_at_every_offset_of_a_run_match_fabio(self):
        """One 16-, 32- or 64-bit escape placed at each of 70 offsets of a 100-pixel frame of one-byte
        deltas, and frames of 1..200 pixels (around the CPU decoder's 32-pixel blocks), some all
        escapes: every pixel exact (fabio and the values encoded), status 0."""
        frames = []
        for jump in (200, -70000, 2**32 - 5):
            for at in range(70):
                frames.append(runs_with_jumps(at, [(at, jump), (99 - at - 1, 0)])[:100])
        for n in (1, 7, 31, 32, 33, 63, 64, 65, 95, 96, 97, 200):
            frames.append(runs_with_jumps(n, [(n - 1, 0)]))
            frames.append(runs_with_jumps(n, [(0, 300 * (-1) ** k) for k in range(n)]))  # escapes only
            frames.append(runs_with_jumps(n, [(k % 3, 500 * (-1) ** k) for k in range(n)])[:n])  # mixed
        payloads = [encode(f) for f in frames]
        out, status = self.decode(payloads, [f.size for f in frames])
        assert not status.any()
        for got, want, pl in zip(out, frames, payloads):
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got, fabio_decode(pl, want.size))

    def test_every_cut_of_a_payload_is_truncated_and_bytes_after_it_are_ignored(self):
        """A payload with escapes at block edges, cut at every byte: each strict prefix has status
        1 (it holds fewer than n whole tokens); the whole payload followed by 0x80 bytes decodes
        exactly (a decoder stops after n pixels)."""
        values = runs_with_jumps(5, [(31, 1000), (0, 2**31), (30, -3), (33, 70000), (64, 0)])
        payload = encode(values)
        batch = [payload[:c] for c in range(len(payload))] + [payload + b"\x80" * 40]
        out, status = self.decode(batch, [values.size] * len(batch))
        assert status.tolist() == [1] * len(payload) + [0]
        np.testing.assert_array_equal(out[-1], values)

    @settings(max_examples=100, deadline=None)
    @given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 90), JUMPS), min_size=1, max_size=8),
           st.binary(max_size=20), st.floats(0, 1))
    def test_fuzz_runs_and_escapes_match_fabio(self, seed, runs, tail, cut):
        """Runs of one-byte deltas broken by escapes of every width: the payload (with any bytes
        after it) decodes exactly as fabio; the payload cut anywhere short of its end has status 1."""
        values = runs_with_jumps(seed, runs)
        payload = encode(values)
        c = int(cut * (len(payload) - 1))
        out, status = self.decode([payload + tail, payload[:c]], [values.size] * 2)
        assert status.tolist() == [0, 1]
        np.testing.assert_array_equal(out[0], values)
        np.testing.assert_array_equal(out[0], fabio_decode(payload, values.size))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.one_of(st.just(0x80), st.just(0x00), st.integers(0, 255)), max_size=400),
           st.integers(min_value=1, max_value=300))
    def test_fuzz_bytes_rich_in_escapes_status_and_values(self, data, n):
        """Byte strings where a third of the bytes are 0x80 and a third 0x00 (escapes of every width,
        cut anywhere): status 0 exactly when the bytes hold n whole tokens, and then fabio's pixels."""
        payload = bytes(data)
        out, status = self.decode([payload], [n])
        whole = complete_tokens(payload, n) == n
        assert status.tolist() == [0 if whole else 1]
        if whole:
            np.testing.assert_array_equal(out[0], fabio_decode(payload, n))

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

    def test_equals_numpy_twin(self):
        """Random and mutated byte strings, thousands per batch (biased towards escapes: many 0x80
        and 0x00 bytes): the same status as the numpy decoder, and the same pixels where it is 0."""
        self.skip_on_twin()
        rng = np.random.default_rng(0)
        payloads = [bytes(rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8)) for _ in range(3000)]
        for k in range(0, 3000, 3):
            b = bytearray(payloads[k])
            for i in range(0, len(b), 4):
                b[i] = 0x80 if rng.random() < 0.5 else 0x00
            payloads[k] = bytes(b)
        npix = rng.integers(1, 120, len(payloads))
        got, gst = self.decode(payloads, npix)
        want, cst = numpy_decode(payloads, npix)
        np.testing.assert_array_equal(gst, cst)
        for f in np.nonzero(cst == 0)[0]:
            np.testing.assert_array_equal(got[f], want[f])
