"""Azimuthal integration of batches of frames with pyFAI geometry.

:class:`Integrator` is the one contract; the engine behind it (numpy/numba on the CPU, cupy on a
GPU) is chosen once, in :func:`xrdct_dask.backend.resolve_engine`.  Per frame and radial bin it
keeps the four sums pyFAI keeps (plus the squared normalisation):

    signal        S_q = sum_p c_qp (raw_p - dark_p)
    variance      V_q = sum_p c_qp^2 max(raw_p, 1)               (Poisson, as pyFAI's Cython preproc)
    normalization N_q = monitor * sum_p c_qp flat_p solidangle_p polarization_p
    count         C_q = sum_p c_qp
    norm_sq       M_q = monitor^2 * sum_p (c_qp n_p)^2

and returns ``I = S / N`` and ``sigma = sqrt(V) / N`` (pyFAI's standard error of the mean), over
the valid pixels: not masked, finite, and with a non-negative count in that frame.

With azimuthal sectors (``npt_azim > 1``) a bin is a (chi, q) bin of pyFAI's 2D full-split matrix
(``integrate2d_ng``): each pattern is ``(npt_azim, npt_rad)``, chi-major.  Everything that is per
bin in 1D is per (chi, q) bin here: the Poisson and the azimuthal error models (the spread of the
sector's own pixels about their mean), sigma-clipping and the median (a sector's pixels of that
ring, as a 1D integration over that sector's azimuth range would clip them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import fabio.compression
import numpy as np

from xrdct_dask.backend import resolve_engine, to_host
from xrdct_dask.integrate._numpy import NumpyEngine
from xrdct_dask.integrate.csr import IntegrationPlan, build_plan, load_image, load_poni
from xrdct_dask.integrate.engine import Engine
from xrdct_dask.integrate.files import assemble
from xrdct_dask.integrate.sums import SUM_NAMES, Integrated, Sums, finish, kept_sums

ERROR_MODELS = ("poisson", "azimuthal", "none")
OUTLIER_FILTERS = ("none", "sigma-clip", "median")
FULL_CIRCLE = (-180.0, 180.0)  # chi (deg) of sectors where no azimuth range is given


class Integrator:
    """Integrate batches of frames to 1D patterns, pyFAI-compatible.

    Parameters
    ----------
    poni : path or pyFAI AzimuthalIntegrator
    shape : (ny, nx) frame shape (must match the PONI's detector)
    npt_rad : number of radial bins
    unit : ``q_nm^-1`` | ``q_A^-1`` | ``2th_deg``
    mask, dark, flat : (ny, nx) arrays or image paths; mask nonzero = masked
    polarization_factor : pyFAI's factor (-1..1), None for no correction; 0.99 (a synchrotron's
        horizontally polarised beam) as in the workflow's ``geometry.polarization_factor``
    solid_angle : apply pyFAI's solid-angle correction
    split : pixel splitting ``no|bbox|full``
    error_model : ``poisson|azimuthal|none``
    outlier : ``none|sigma-clip|median`` (pyFAI ``sigma_clip_ng`` / ``medfilt1d_ng`` semantics)
    clip_threshold, max_iter : sigma-clip parameters
    percentile : (low, high) in percent for the median filter (50, 50 = the median; default
        40, 60 as ``integrate.percentile``: the mean of the central fifth, less noisy than the median)
    engine : ``auto|numpy|cupy``
    plan : an :class:`IntegrationPlan` of these arguments built before (e.g. loaded from the plan
        cache, :func:`xrdct_dask.integrate.cache.cached_plan`): used instead of building one
    npt_azim : azimuthal sectors (1: one pattern per frame; more: ``(npt_azim, npt_rad)`` patterns)
    azimuth_range : (lo, hi) chi in degrees (pyFAI's chi, within -180..180); None: the whole ring
        (with sectors: -180..180, so that sector edges do not depend on the detector's extent)
    keep_sums : :meth:`integrate_source` also returns the five sums of every frame
        (:func:`~xrdct_dask.integrate.sums.kept_sums`, the NXazint accumulators); None: with sectors

    Patterns (intensity, sigma, sums) are ``(n, npt_rad)``, or ``(n, npt_azim, npt_rad)`` with sectors;
    :meth:`integrate_batches` (the engines' pipeline) gives them flat, ``(n, npt_azim * npt_rad)``.

    Examples
    --------
    >>> integ = Integrator("geometry.poni", (1679, 1475), 2000)          # doctest: +SKIP
    >>> q_nm, intensity, sigma = integ.integrate(frames)                  # doctest: +SKIP
    """

    def __init__(self, poni, shape: tuple[int, int], npt_rad: int, unit: str = "q_nm^-1", *, mask=None,
                 dark=None, flat=None, polarization_factor: float | None = 0.99, solid_angle: bool = True,
                 split: str = "full", error_model: str = "poisson", outlier: str = "none",
                 clip_threshold: float = 5.0, max_iter: int = 5, percentile: tuple[float, float] = (40.0, 60.0),
                 radial_range: tuple[float, float] | None = None, engine: str = "auto",
                 plan: IntegrationPlan | None = None, npt_azim: int = 1,
                 azimuth_range: tuple[float, float] | None = None, keep_sums: bool | None = None):
        if error_model not in ERROR_MODELS:
            raise ValueError(f"error_model must be one of {ERROR_MODELS}, got {error_model!r}")
        if outlier not in OUTLIER_FILTERS:
            raise ValueError(f"outlier must be one of {OUTLIER_FILTERS}, got {outlier!r}")
        if outlier == "sigma-clip" and error_model == "none":
            raise ValueError("sigma-clip needs an error model (poisson or azimuthal), not 'none'")
        ai = load_poni(poni)
        mask, dark, flat = (load_image(a) if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__") else a
                            for a in (mask, dark, flat))
        if azimuth_range is None and npt_azim > 1:
            azimuth_range = FULL_CIRCLE
        self.plan: IntegrationPlan = plan if plan is not None else build_plan(
            ai, shape, npt_rad, unit, mask=mask, dark=dark, flat=flat, polarization_factor=polarization_factor,
            solid_angle=solid_angle, split=split, radial_range=radial_range, npt_azim=npt_azim,
            azimuth_range=azimuth_range)
        self.keep_sums = npt_azim > 1 if keep_sums is None else bool(keep_sums)
        self.error_model = error_model
        self.outlier = outlier
        self.clip_threshold = float(clip_threshold)
        self.max_iter = int(max_iter)
        self.percentile = (float(min(percentile)), float(max(percentile)))
        self.engine = resolve_engine(engine)
        if self.engine == "cupy" and outlier == "median":
            logging.getLogger(__name__).warning("the median filter has no GPU kernel: integrating on the CPU")
            self.engine = "numpy"
        if self.engine == "cupy":  # lazy: cupy is optional (the gpu extra), imported where a GPU is used
            from xrdct_dask.integrate._cupy import CupyEngine

            self.impl: Engine = CupyEngine(self.plan, self)
        else:
            self.impl = NumpyEngine(self.plan, self)

    @property
    def batch_frames(self) -> int:
        """Frames per engine call: CPU tiles stay in cache at 32; a GPU wants many per launch."""
        return self.impl.batch_frames

    @property
    def radial(self) -> np.ndarray:
        return self.plan.radial

    @property
    def azimuthal(self) -> np.ndarray | None:
        """Sector centres chi (degrees), None without sectors."""
        return self.plan.azimuthal

    @property
    def unit(self) -> str:
        return self.plan.unit

    def _shaped(self, a):
        """Flat ``(..., nbins)`` engine rows as patterns ``(..., npt_azim, npt_rad)`` (with sectors)."""
        return a if self.plan.azimuthal is None else a.reshape(*a.shape[:-1], *self.plan.pattern_shape)

    @property
    def shape(self) -> tuple[int, int]:
        return self.plan.shape

    def sums(self, frames, monitor=None) -> Sums:
        """The five sums for frames ``(n, ny, nx)`` (host or device array), monitor ``(n,)`` or None;
        each ``(n, npt_rad)`` or ``(n, npt_azim, npt_rad)``, float64, on the engine's device."""
        frames = self._check_frames(frames)
        return Sums(*(self._shaped(a) for a in self.impl.sums(frames, self._monitor(monitor, frames.shape[0]))))

    def integrate(self, frames, monitor=None) -> Integrated:
        """Integrate ``(n, ny, nx)`` or ``(ny, nx)`` frames.

        Returns radial ``(npt_rad,)`` and intensity, sigma ``(n, npt_rad)`` float32, on the host (with
        sectors ``(n, npt_azim, npt_rad)``, chi in :attr:`azimuthal`).
        """
        single = np.ndim(frames) == 2
        s = self.sums(frames[None] if single else frames, monitor)
        intensity, sigma = (to_host(a) for a in finish(s, self.error_model, self.impl.xp))
        if single:
            intensity, sigma = intensity[0], sigma[0]
        return Integrated(self.radial, intensity, sigma)

    def integrate_payloads(self, payloads: Sequence, monitor=None):
        """Decode and integrate compressed byte-offset payloads (``CbfPayload`` or bytes).

        Returns ``(Integrated, status)`` where ``status`` (n,) int32 is 0 for a good frame and the
        decoder's status code otherwise (that frame's patterns are NaN).
        """
        datas = [getattr(p, "data", p) for p in payloads]
        for p in payloads:
            shape = getattr(p, "shape", self.shape)
            if tuple(shape) != self.shape:
                raise ValueError(f"a payload decodes to {shape} but the integrator expects {self.shape}")
        s, status = self.impl.sums_payloads(datas, self._monitor(monitor, len(datas)))
        intensity, sigma = (self._shaped(to_host(a)) for a in finish(s, self.error_model, self.impl.xp))
        bad = to_host(status) != 0
        intensity[bad] = np.nan
        sigma[bad] = np.nan
        return Integrated(self.radial, intensity, sigma), to_host(status)

    def warm_up(self) -> None:
        """Run the engine once on a blank compressed frame: numba loads (or compiles) its kernels,
        a GPU compiles its modules, before any timed or real work."""
        blank = bytes(fabio.compression.compByteOffset(np.zeros(self.plan.npix, dtype=np.int64)))
        self.integrate_payloads([blank])
        list(self.integrate_batches([([blank], None)]))

    def integrate_source(self, source, indices, monitor=None, *, read_threads: int = 8, check_md5: bool = False):
        """Read and integrate frames ``indices`` (-1: none) of a frame source (a CBF template or an
        HDF5 source, :mod:`xrdct_dask.io.source`): ``(intensity, sigma, status, bytes_read)``, bad
        frames NaN with their :class:`~xrdct_dask.io.status.FrameStatus` (the engine's
        :meth:`~xrdct_dask.integrate.engine.Engine.integrate_source`); with ``keep_sums``
        ``(intensity, sigma, status, bytes_read, sums)``, sums float32 ``(5, n, *pattern)`` in the
        order of :data:`~xrdct_dask.integrate.sums.SUM_NAMES`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        batches = self.impl.integrate_source(source, idx, self._monitor(monitor, idx.size), read_threads=read_threads,
                                             check_md5=check_md5)
        intensity, sigma, status, nbytes, sums = assemble(batches, idx.size, self.plan.nbins, self.keep_sums)
        out = (self._shaped(intensity), self._shaped(sigma), status, nbytes)
        return out + (self._shaped(sums),) if self.keep_sums else out

    def warm(self, source, tasks: int, nframes: int, hdf5: bool = False) -> None:
        """Compile the kernels and, on a GPU, set up the read arenas and pipelines of ``tasks``
        concurrent tasks on ``source`` (of ``nframes`` frames) before the first task
        (:meth:`~xrdct_dask.integrate.engine.Engine.warm`).  ``source`` None: it cannot be opened yet
        (an Eiger master before its first data file); a blank frame stands in (stored as HDF5 chunks
        where ``hdf5``, else as a CBF file)."""
        self.warm_up()
        self.impl.warm(source, tasks, nframes, hdf5=hdf5)

    def integrate_batches(self, batches, packed: bool = False):
        """Integrate an iterable of ``(payloads, monitor)`` batches; yields ``(intensity, sigma,
        status)`` host arrays per batch, in order (patterns flat, ``(n, nbins)``; with ``keep_sums``
        a fourth item, the float32 sums ``(5, n, nbins)``).  The GPU engine pipelines the batches (upload of
        the next overlaps compute of the current); the CPU engine takes them one by one.

        ``packed=True`` (GPU engine): each batch is ``((pinned buffer, begin, end), monitor)``."""
        if packed:
            yield from self.impl.integrate_batches(batches, packed=True)
            return
        yield from self.impl.integrate_batches(
            ([getattr(p, "data", p) for p in payloads], self._monitor(m, len(payloads))) for payloads, m in batches)

    def _check_frames(self, frames):
        if frames.ndim != 3 or tuple(frames.shape[1:]) != self.shape:
            raise ValueError(f"frames must be (n, {self.shape[0]}, {self.shape[1]}), got {tuple(frames.shape)}")
        return frames

    @staticmethod
    def _monitor(monitor, n: int) -> np.ndarray:
        if monitor is None:
            return np.ones(n)
        monitor = np.asarray(monitor, dtype=np.float64).reshape(-1)
        if monitor.size != n:
            raise ValueError(f"{monitor.size} monitor values for {n} frames")
        return monitor


__all__ = ["Integrated", "Integrator", "IntegrationPlan", "SUM_NAMES", "Sums", "build_plan", "finish", "kept_sums"]
