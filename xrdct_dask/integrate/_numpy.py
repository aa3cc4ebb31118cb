"""CPU engine: numba kernels over an :class:`~xrdct_dask.integrate.csr.IntegrationPlan`.

Hot path (error model poisson or none, no outlier filter): frames are consumed in pixel order,
``TILE`` pixels of every frame of the batch at a time, so the decoded tile stays in cache and the
matrix (stored by pixel, CSC) is streamed once per batch instead of once per frame:

    for each pixel p of the tile, for each bin q it touches (coefficient c = c_qp):
        S[q, f] += c * r_fp            # signal            (dark is subtracted via static sums)
        V[q, f] += c^2 * max(r_fp, 1)  # Poisson variance  (pyFAI's Cython preproc: max(raw, 1))

The same tile loop runs on compressed CBF payloads (decoded tile by tile, never materialised) or
on decoded frames.  A pixel with a negative count in a frame (Pilatus -1 gap, -2 bad pixel) is
invalid in that frame: its share is accumulated separately and removed from the normalisation.

Multi-pass modes (azimuthal error model, sigma-clipping, median) need whole decoded frames and
run per frame over the CSC/CSR matrix.
"""

from __future__ import annotations

import numba
import numpy as np

from xrdct_dask.integrate.files import host_hdf5_batches, payload_batches
from xrdct_dask.integrate.sums import Sums, finish, kept_sums
from xrdct_dask.io.decode import OK, SOURCE_DIGEST, decode_batch, decode_stream, pack_payloads
from xrdct_dask.io.source import decoded_on_host, refreshed

TILE = 4096  # pixels per tile: TILE * batch * 4 bytes stays in L2

# rows of the "bad" accumulator: contributions of pixels invalid in one frame only
BAD_C, BAD_CN, BAD_C2N2, BAD_CD = range(4)


@numba.njit(nogil=True, boundscheck=False, fastmath=True, inline="always")
def _accumulate_tile(tile, n, p0, p1, r, cdata, crows, cptr, norm, dark, has_dark, do_var, acc_s, acc_v, bad):
    for pp in range(p1 - p0):
        p = p0 + pp
        j0 = cptr[p]
        j1 = cptr[p + 1]
        if j0 == j1:
            continue
        neg = False
        for f in range(n):
            v = tile[pp * n + f]
            r[f] = v
            neg |= v < 0
        if neg:  # rare: a pixel invalid in some frames of the batch only
            nrm = np.float64(norm[p])
            dk = np.float64(dark[p]) if has_dark else 0.0
            for j in range(j0, j1):
                q = crows[j]
                c = np.float64(cdata[j])
                for f in range(n):
                    if r[f] < 0:
                        bad[BAD_C, q, f] += c
                        bad[BAD_CN, q, f] += c * nrm
                        bad[BAD_C2N2, q, f] += c * c * nrm * nrm
                        bad[BAD_CD, q, f] += c * dk
                    else:
                        acc_s[q, f] += c * r[f]
                        if do_var:
                            acc_v[q, f] += c * c * max(r[f], 1.0)
        elif do_var:
            for j in range(j0, j1):
                q = crows[j]
                c = np.float64(cdata[j])
                c2 = c * c
                for f in range(n):
                    acc_s[q, f] += c * r[f]
                    acc_v[q, f] += c2 * max(r[f], 1.0)
        else:
            for j in range(j0, j1):
                q = crows[j]
                c = np.float64(cdata[j])
                for f in range(n):
                    acc_s[q, f] += c * r[f]


def _fused_kernel(decoder_digest: str):
    """:func:`sums_from_payloads`, made in a closure over ``io.decode.SOURCE_DIGEST``.  It compiles
    io.decode's ``decode_stream`` in, but numba checks a cached function against its own file only;
    numba's cache key does hold the values of a closure, so an edit of the decoder compiles the
    kernel again instead of loading one with the old decoder inside."""

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def sums_from_payloads(buf, offsets, npix, cdata, crows, cptr, norm, dark, has_dark, do_var,
                           acc_s, acc_v, bad, status):
        """Fused decode + integrate of a packed batch of byte-offset payloads.

        ``acc_s, acc_v``: f64 (nbins, n) zeroed by the caller; ``bad``: f64 (4, nbins, n);
        ``status``: int32 (n,) set to 1 for a frame whose payload ran out (its sums are garbage).
        """
        decoder_digest  # noqa: B018  the closure's value: part of numba's cache key (see _fused_kernel)
        n = offsets.size - 1
        pos = offsets[:-1].copy()
        val = np.zeros(n, np.int64)
        tile = np.zeros(TILE * n, np.int32)
        r = np.zeros(n, np.float64)
        for p0 in range(0, npix, TILE):
            p1 = min(p0 + TILE, npix)
            for f in range(n):
                if status[f] == OK:  # this frame's next p1 - p0 pixels, into tile[pp * n + f]
                    pos[f], val[f], status[f] = decode_stream(buf, pos[f], offsets[f + 1], val[f], tile, f, n,
                                                              p1 - p0)
                if status[f] != OK:
                    for pp in range(p1 - p0):
                        tile[pp * n + f] = -1  # invalid: keeps the accumulators finite
            _accumulate_tile(tile, n, p0, p1, r, cdata, crows, cptr, norm, dark, has_dark, do_var, acc_s, acc_v,
                             bad)

    return sums_from_payloads


sums_from_payloads = _fused_kernel(SOURCE_DIGEST)


@numba.njit(nogil=True, boundscheck=False, cache=True)
def sums_from_frames(frames, cdata, crows, cptr, norm, dark, has_dark, do_var, acc_s, acc_v, bad):
    """Integrate decoded frames ``(n, npix)`` (any real dtype) tile by tile; see :func:`sums_from_payloads`."""
    n, npix = frames.shape
    tile = np.zeros(TILE * n, np.float64)
    r = np.zeros(n, np.float64)
    for p0 in range(0, npix, TILE):
        p1 = min(p0 + TILE, npix)
        for f in range(n):
            for pp in range(p1 - p0):
                v = np.float64(frames[f, p0 + pp])
                tile[pp * n + f] = v if abs(v) < np.inf else -1.0  # NaN/inf: invalid
        _accumulate_tile(tile, n, p0, p1, r, cdata, crows, cptr, norm, dark, has_dark, do_var, acc_s, acc_v, bad)


@numba.njit(nogil=True, boundscheck=False, cache=True)
def pixel_prep(frame, norm, dark, has_dark, keep):
    """Per pixel: signal s = raw - dark, Poisson variance max(raw, 1), and validity
    (kept by the static mask, finite, raw >= 0)."""
    npix = frame.size
    s = np.zeros(npix)
    v = np.zeros(npix)
    ok = np.zeros(npix, np.bool_)
    for p in range(npix):
        raw = np.float64(frame[p])
        if keep[p] and raw >= 0 and abs(raw) < np.inf and norm[p] != 0:
            s[p] = raw - (np.float64(dark[p]) if has_dark else 0.0)
            v[p] = max(raw, 1.0)
            ok[p] = True
    return s, v, ok


@numba.njit(nogil=True, boundscheck=False, inline="always")
def _bin_pass(q, s, v, ok, dropped, norm, cdata, cindices, cindptr, azimuthal):
    """Sums of bin q over its valid, not dropped entries, in CSR order.

    Azimuthal variance uses pyFAI's one-pass weighted update (omega = c * norm):
        VV += omega_b^2 * (b - <A>) * (b - <A u b>)
    Returns (signal, variance, norm, norm_sq, count) with count = sum c.
    """
    acc_s = 0.0
    acc_v = 0.0
    acc_n = 0.0
    acc_n2 = 0.0
    acc_c = 0.0
    for j in range(cindptr[q], cindptr[q + 1]):
        p = cindices[j]
        if not ok[p] or dropped[j]:
            continue
        c = np.float64(cdata[j])
        w = c * norm[p]
        if azimuthal:
            if acc_n2 <= 0.0:
                acc_s = c * s[p]
                acc_n = w
                acc_n2 = w * w
            else:
                b = s[p] / norm[p]
                d1 = acc_s / acc_n - b
                acc_s += c * s[p]
                acc_n += w
                acc_n2 += w * w
                d2 = acc_s / acc_n - b
                acc_v += w * w * d1 * d2
        else:
            acc_s += c * s[p]
            acc_v += c * c * v[p]
            acc_n += w
            acc_n2 += w * w
        acc_c += c
    return acc_s, acc_v, acc_n, acc_n2, acc_c


@numba.njit(nogil=True, boundscheck=False, cache=True)
def csr_sums(s, v, ok, norm, cdata, cindices, cindptr, azimuthal, thres, cycles, out):
    """Per-bin sums over one frame, optionally sigma-clipped (pyFAI ``sigma_clip_ng``).

    Each bin is clipped on its own: entries with ``|s/n - <I>| > max(thres, chauvenet) * std``,
    ``chauvenet = sqrt(2 log(max(3, N) / sqrt(2 pi)))``, ``std = sqrt(V / sum (c n)^2)``, are dropped
    and the bin re-summed, up to ``cycles`` times.  With pixel splitting "no" this is exactly
    pyFAI's result; with splitting, a pixel clipped in one bin stays in its other bins
    (deterministic, where pyFAI's result depends on thread order).

    ``out`` rows: signal, variance, normalization, count, norm_sq (no monitor applied).
    """
    nbins = cindptr.size - 1
    dropped = np.zeros(cdata.size, np.bool_)
    for q in range(nbins):
        sg, vr, nm, n2, ct = _bin_pass(q, s, v, ok, dropped, norm, cdata, cindices, cindptr, azimuthal)
        for _ in range(cycles):
            if nm == 0.0 or ct == 0.0 or n2 <= 0.0:
                break
            aver = sg / nm
            std = np.sqrt(vr / n2)
            cut = max(thres, np.sqrt(2.0 * np.log(max(3.0, ct) / np.sqrt(2.0 * np.pi))))
            nbad = 0
            for j in range(cindptr[q], cindptr[q + 1]):
                p = cindices[j]
                if ok[p] and not dropped[j] and abs(s[p] / norm[p] - aver) > cut * std:
                    dropped[j] = True
                    nbad += 1
            if nbad == 0:
                break
            sg, vr, nm, n2, ct = _bin_pass(q, s, v, ok, dropped, norm, cdata, cindices, cindptr, azimuthal)
        out[0, q] = sg
        out[1, q] = vr
        out[2, q] = nm
        out[3, q] = ct
        out[4, q] = n2


@numba.njit(nogil=True, boundscheck=False, cache=True)
def median_sums(s, v, ok, norm, cdata, cindices, cindptr, qlo, qhi, out):
    """Quantile-mean per bin (pyFAI ``medfilt1d_ng``): the (bin, pixel) entries of bin q are sorted
    by s/n; with weights w = c*n and cumulative sums ``lower < upper``, the entries lying within
    ``[qlo, qhi] * total`` are kept, or the one straddling it when ``qlo == qhi`` (the median).  ``out`` rows: sum c*s,
    sum c^2*v, sum c*n, number of entries kept, sum (c*n)^2."""
    nbins = cindptr.size - 1
    out[:] = 0.0
    for q in range(nbins):
        j0 = cindptr[q]
        j1 = cindptr[q + 1]
        m = 0
        vals = np.empty(j1 - j0)
        js = np.empty(j1 - j0, np.int64)
        for j in range(j0, j1):
            p = cindices[j]
            if ok[p]:
                vals[m] = s[p] / norm[p]
                js[m] = j
                m += 1
        if m == 0:
            continue
        order = np.argsort(vals[:m], kind="mergesort")
        total = 0.0
        for k in range(m):
            j = js[k]
            total += np.float64(cdata[j]) * norm[cindices[j]]
        upper = 0.0
        for k in range(m):
            j = js[order[k]]
            p = cindices[j]
            c = np.float64(cdata[j])
            w = c * norm[p]
            lower = upper
            upper += w
            lo = qlo * total
            hi = qhi * total
            if (lo <= lower and upper <= hi) or (lo >= lower and upper >= hi):
                out[0, q] += c * s[p]
                out[1, q] += c * c * v[p]
                out[2, q] += w
                out[3, q] += 1.0
                out[4, q] += w * w


class NumpyEngine:
    """CPU engine behind :class:`~xrdct_dask.integrate.Integrator` (numba kernels, one thread per
    call); implements :class:`~xrdct_dask.integrate.engine.Engine`."""

    name = "numpy"
    xp = np
    batch_frames = 32  # frames per call: the decoded tiles of a batch stay in cache

    def __init__(self, plan, options):
        self.plan = plan
        self.error_model = options.error_model
        self.outlier = options.outlier
        self.options = options
        self._dark = plan.dark if plan.dark is not None else np.zeros(1, np.float32)

    def integrate_batches(self, batches):
        """``(payloads, monitor)`` batches, one after the other: ``(intensity, sigma, status)``
        per batch, NaN where a payload did not decode whole (its status); the kept sums as a fourth
        item where the options keep them."""
        keep = getattr(self.options, "keep_sums", False)
        for datas, monitor in batches:
            s, status = self.sums_payloads(datas, np.asarray(monitor, np.float64))
            intensity, sigma = finish(s, self.error_model, np)
            bad = status != 0
            intensity[bad] = np.nan
            sigma[bad] = np.nan
            yield (intensity, sigma, status, kept_sums(s, bad)) if keep else (intensity, sigma, status)

    def integrate_source(self, source, indices, monitor, *, read_threads: int = 8, check_md5: bool = False):
        """:class:`~xrdct_dask.integrate.engine.SourceBatch` es of frames ``indices`` of ``source``:
        CBF payloads decoded tile by tile inside the integration, HDF5 frames decoded on the host."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if decoded_on_host(source):  # HDF5, TIFF / EDF
            return host_hdf5_batches(self, refreshed(source, idx), idx, monitor, read_threads=read_threads)
        return payload_batches(self, source, idx, monitor, self.plan.shape, read_threads=read_threads,
                               check_md5=check_md5)

    def warm(self, source, tasks: int, nframes: int, *, hdf5: bool = False) -> None:
        """Nothing to set up per task: the kernels are compiled by
        :meth:`~xrdct_dask.integrate.Integrator.warm_up` (numba's cache)."""

    def _fast_path(self) -> bool:
        return self.outlier == "none" and self.error_model in ("poisson", "none")

    def _combine(self, acc_s, acc_v, bad, monitor):
        """Sums (n, nbins) from the tile accumulators and the plan's static sums."""

        st = self.plan.static_sums[:, :, None]  # (4, nbins, 1)
        c = st[0] - bad[BAD_C]
        cn = st[1] - bad[BAD_CN]
        c2n2 = st[2] - bad[BAD_C2N2]
        cd = st[3] - bad[BAD_CD]
        m = monitor[None, :]
        return Sums(signal=(acc_s - cd).T, variance=acc_v.T, normalization=(cn * m).T,
                    count=c.T, norm_sq=(c2n2 * m * m).T)

    def _accumulators(self, n):
        nb = self.plan.nbins
        return np.zeros((nb, n)), np.zeros((nb, n)), np.zeros((4, nb, n))

    def sums(self, frames, monitor):
        frames = np.asarray(frames).reshape(frames.shape[0], -1)
        if not self._fast_path():
            return self._sums_multipass(frames, monitor)
        p = self.plan
        acc_s, acc_v, bad = self._accumulators(frames.shape[0])
        sums_from_frames(frames, p.csc_data, p.csc_rows, p.csc_indptr, p.norm, self._dark, p.dark is not None,
                         self.error_model != "none", acc_s, acc_v, bad)
        return self._combine(acc_s, acc_v, bad, monitor)

    def sums_payloads(self, datas, monitor):

        buf, offsets = pack_payloads(datas)
        n = len(datas)
        p = self.plan
        if not self._fast_path():
            frames, _, status = decode_batch(buf, offsets, np.full(n, p.npix))
            return self._sums_multipass(frames.reshape(n, -1), monitor), status
        acc_s, acc_v, bad = self._accumulators(n)
        status = np.zeros(n, np.int32)
        sums_from_payloads(buf, offsets, p.npix, p.csc_data, p.csc_rows, p.csc_indptr, p.norm, self._dark,
                           p.dark is not None, self.error_model != "none", acc_s, acc_v, bad, status)
        return self._combine(acc_s, acc_v, bad, monitor), status

    def _sums_multipass(self, frames, monitor):
        """Azimuthal error model, sigma-clipping and median: whole frames, one at a time."""

        p, o = self.plan, self.options
        n, nb = frames.shape[0], p.nbins
        out = np.zeros((5, n, nb))
        keep = ~p.mask
        azimuthal = self.error_model == "azimuthal"
        cycles = o.max_iter if self.outlier == "sigma-clip" else 0
        for f in range(n):
            s, v, ok = pixel_prep(frames[f], p.norm, self._dark, p.dark is not None, keep)
            if self.outlier == "median":
                lo, hi = o.percentile
                median_sums(s, v, ok, p.norm, p.csr_data, p.csr_indices, p.csr_indptr, lo / 100, hi / 100, out[:, f])
            else:
                csr_sums(s, v, ok, p.norm, p.csr_data, p.csr_indices, p.csr_indptr, azimuthal, o.clip_threshold,
                         cycles, out[:, f])
        m = monitor[:, None]
        return Sums(signal=out[0], variance=out[1], normalization=out[2] * m, count=out[3], norm_sq=out[4] * m * m)
