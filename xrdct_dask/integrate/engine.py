"""The engine protocol: what every decode + integrate engine does, and nothing outside it does.

An engine (:class:`~xrdct_dask.integrate._numpy.NumpyEngine` on the CPU,
:class:`~xrdct_dask.integrate._cupy.CupyEngine` on a GPU) holds an
:class:`~xrdct_dask.integrate.IntegrationPlan` and
:class:`~xrdct_dask.integrate.Integrator` options; :class:`~xrdct_dask.integrate.Integrator` is the one
way in and chooses the engine once (:func:`xrdct_dask.backend.resolve_engine`).  The contract:

* :meth:`Engine.sums` of frames, :meth:`Engine.sums_payloads` of compressed payloads: the five sums;
* :meth:`Engine.integrate_batches`: ``(payloads, monitor)`` batches -> ``(intensity, sigma, status)``
  per batch, in order (the GPU pipelines them); where the options ask to keep the sums
  (``keep_sums``), ``(intensity, sigma, status, sums)`` with the float32 sums ``(5, n, nbins)``;
* :meth:`Engine.integrate_source`: a frame source (CBF template, HDF5 source), frame indices and
  their monitor -> :class:`SourceBatch` es: each row's :class:`~xrdct_dask.io.status.FrameStatus`
  and, for the rows that are OK, its patterns.  How the frames are read (threads, pinned arenas,
  the GPU's own HDF5 chunk kernels, host decoding) is the engine's business: it knows what it can
  do with which source;
* :meth:`Engine.warm`: ready the engine for ``tasks`` concurrent tasks on a source (kernels
  compiled, buffers allocated and used once), or on a blank frame where the source cannot be opened
  yet (live mode before the first data file).

Engines return results and statuses; nobody passes them arrays to fill.  The conformance classes
(:mod:`xrdct_dask.testing.conformance`) test every engine against this contract.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from xrdct_dask.io.status import FrameStatus


class SourceBatch(NamedTuple):
    """What an engine reports for some frames of a task: ``rows`` int64 ``(k,)`` (positions in the
    task's list of frame indices), their ``status`` int8 ``(k,)``
    (:class:`~xrdct_dask.io.status.FrameStatus`), and where the batch carries patterns
    ``intensity`` and ``sigma`` float32 ``(k, nbins)`` (NaN for rows not OK) with the ``nbytes``
    read for them.  A row may be reported twice: first as read, then with its patterns (whose
    status, e.g. a payload that decodes short, wins).  ``sums``: float32 ``(5, k, nbins)`` where the
    engine keeps them (:func:`~xrdct_dask.integrate.sums.kept_sums`)."""

    rows: np.ndarray
    status: np.ndarray
    intensity: np.ndarray | None = None
    sigma: np.ndarray | None = None
    nbytes: int = 0
    sums: np.ndarray | None = None


@dataclass
class Read:
    """One batch of frames as read: every row's ``status``, and the ``feeds`` for the engine's
    pipeline: ``(rows, item, monitor, nbytes)`` per feed, ``item`` what the pipeline takes (payloads,
    a pinned arena's ranges, HDF5 chunks, decoded counts) for ``rows`` (those read OK)."""

    rows: np.ndarray
    status: np.ndarray
    feeds: list[tuple[np.ndarray, Any, np.ndarray, int]] = field(default_factory=list)


def pipeline_batches(run: Callable[[Iterable[tuple]], Iterator[tuple]], reads: Iterable[Read]) -> Iterator[SourceBatch]:
    """:class:`SourceBatch` es of ``reads`` run through ``run`` (an engine pipeline: ``(item,
    monitor)`` pairs in, ``(intensity, sigma, decoder status[, sums])`` per pair out, in order; the pairs are
    pulled as the pipeline needs them, so reading runs ahead of it only as far as it asks).  Each
    read's statuses come before its patterns; a decoder status > 0 is a
    :class:`~xrdct_dask.io.status.FrameStatus` code, < 0 a payload that ended early (TRUNCATED)."""
    said: deque[SourceBatch] = deque()  # read statuses not yet reported
    fed: deque[tuple[np.ndarray, int]] = deque()  # rows and bytes of each item in the pipeline

    def items():
        for r in reads:
            said.append(SourceBatch(np.asarray(r.rows, np.int64), np.asarray(r.status, np.int8)))
            for rows, item, monitor, nbytes in r.feeds:
                fed.append((np.asarray(rows, np.int64), nbytes))
                yield item, monitor

    for intensity, sigma, dec, *sums in run(items()):
        while said:
            yield said.popleft()
        rows, nbytes = fed.popleft()
        dec = np.asarray(dec)
        status = np.where(dec > 0, dec, np.where(dec < 0, FrameStatus.TRUNCATED, FrameStatus.OK)).astype(np.int8)
        yield SourceBatch(rows, status, intensity, sigma, nbytes, sums[0] if sums else None)
    while said:
        yield said.popleft()


@runtime_checkable
class Engine(Protocol):
    """A decode + integrate engine (see the module docstring)."""

    name: str  # "numpy" | "cupy"
    xp: ModuleType  # the array module of its sums
    batch_frames: int  # frames per call that keep it busy

    def sums(self, frames, monitor) -> Any:
        """:class:`~xrdct_dask.integrate.Sums` of frames ``(n, ny, nx)`` (counts or floats), monitor ``(n,)``."""

    def sums_payloads(self, datas, monitor) -> tuple[Any, Any]:
        """``(Sums, decoder status (n,))`` of byte-offset payloads (bytes), monitor ``(n,)``."""

    def integrate_batches(self, batches: Iterable[tuple]) -> Iterator[tuple]:
        """``(payloads, monitor)`` batches -> host ``(intensity, sigma, decoder status)`` per batch, in order
        (and the float32 sums ``(5, n, nbins)`` as a fourth item where the options keep them)."""

    def integrate_source(self, source, indices: np.ndarray, monitor: np.ndarray, *, read_threads: int = 8,
                         check_md5: bool = False) -> Iterator[SourceBatch]:
        """Frames ``indices`` (acquisition order, -1: none) of ``source`` -> :class:`SourceBatch` es."""

    def warm(self, source, tasks: int, nframes: int, *, hdf5: bool = False) -> None:
        """Ready for ``tasks`` concurrent tasks on ``source`` of ``nframes`` frames (None: a blank frame,
        stored as HDF5 chunks where ``hdf5``, else as a CBF file)."""
