"""What a watch shows while it follows an acquisition: its status (a dask Variable and a JSON file
beside the store) and the live picture (the latest sinogram and slice, frames/s and lag)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
from distributed import Variable

from xrdct_dask import store
from xrdct_dask.ownfiles import is_own_json, replace_own
from xrdct_dask.pipeline.stages import FRAMES_STAGE, writer_of
from xrdct_dask.view.summary import SOFTWARE, _Axis, _map, is_our_picture, label

log = logging.getLogger(__name__)


VARIABLE = "xrdct-live"  # the dask Variable the watcher publishes its status in (the latest watch's)


LIVE_JSON_MARK = "xrdct-dask watch"  # RUN-live.json's "written_by": a status file this program may replace
HISTORY = 600  # status points kept for the live picture's frames/s and lag curves


def variable_name(store_path=None) -> str:
    """The scheduler's Variable holding the live status: of the watch into ``store_path``
    (``xrdct-live:/abs/RUN.zarr``), or of whichever watch published last (``xrdct-live``)."""
    return VARIABLE if store_path is None else f"{VARIABLE}:{Path(store_path).resolve()}"


def _variables(client, store_path) -> list:
    """The Variables a watch into ``store_path`` publishes its status in: its own, and the latest's."""

    return [Variable(variable_name(store_path), client=client), Variable(VARIABLE, client=client)]


def live_paths(path) -> tuple[Path, Path]:
    """``(RUN-live.json, RUN-live.png)`` beside store ``RUN.zarr``."""
    path = Path(path)
    return path.parent / f"{path.stem}-live.json", path.parent / f"{path.stem}-live.png"


class _Status:
    """The live figures: frames whole and integrated, frames/s, lag, slices done; written as JSON."""

    def __init__(self, path: Path, total: int, nz: int):
        self.path, self.total, self.nz = path, total, nz
        self.frames_whole = self.frames_done = 0
        self.lag_s = 0.0
        self.z_sino = self.z_recon = None
        self.slices: list[int] = []
        self.history: list[tuple[float, float, float]] = []  # (epoch, frames/s, lag s)
        self.done_times: list[tuple[float, int]] = []
        self.block_lags: list[float] = []
        self.finished = False
        self.started = time.time()
        self.refused = False  # RUN-live.json is a file of the user's: said once, never written over

    def integrated(self, n: int, ready: float, finished: float) -> None:
        self.frames_done += n
        self.done_times.append((finished, n))
        if np.isfinite(ready):
            self.block_lags.append(finished - ready)

    def slice_done(self, z: int) -> None:
        self.slices.append(z)
        self.z_recon = z

    def lag(self) -> None:
        """Lag behind the detector: the latest integrated block's pattern in the store minus the
        time its last frame was seen whole (0 before the first block)."""
        self.lag_s = self.block_lags[-1] if self.block_lags else 0.0

    def fps(self, now: float, span: float = 10.0) -> float:
        """Frames integrated per second over the last ``span`` seconds (or since the start)."""
        n = sum(k for t, k in self.done_times if t >= now - span)
        return n / max(min(span, now - self.started), 1e-3)

    def write(self) -> dict:
        now = time.time()
        fps = self.fps(now)
        self.history = (self.history + [(now, fps, self.lag_s)])[-HISTORY:]
        json_path, png = live_paths(self.path)
        snap = {"written_by": LIVE_JSON_MARK, "store": str(self.path), "updated": now, "frames_total": self.total,
                "frames_whole": self.frames_whole, "frames_integrated": self.frames_done, "frames_per_s": fps,
                "lag_s": self.lag_s, "slices_done": sorted(self.slices), "nz": self.nz, "finished": self.finished,
                "picture": str(png), "history": [list(h) for h in self.history]}
        data = json.dumps(snap).encode()
        try:
            if not replace_own(json_path, lambda fh: fh.write(data),
                               lambda p: is_own_json(p, "written_by", LIVE_JSON_MARK)) and not self.refused:
                self.refused = True
                log.warning("%s exists and was not written by xrdct-dask: the live status is not written over it",
                            json_path)
        except OSError as err:
            log.warning("%s: cannot write the live status (%s)", json_path, err)
        return snap


class _Painter:
    """Redraws the live picture in its own thread when poked (drawing never holds up the watcher)."""

    def __init__(self, path: Path, status: _Status, every_s: float = 2.0):
        self.path, self.status, self.every_s = path, status, every_s
        self.z_sino = self.z_recon = None
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._loop, daemon=True, name="xrdct-live-picture")
        self._t.start()

    def poke(self, z_sino: int | None = None, z_recon: int | None = None) -> None:
        if z_sino is not None:
            self.z_sino = z_sino
        if z_recon is not None:
            self.z_recon = z_recon
        self._poke.set()

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            if self._poke.wait(0.5):
                # at most one picture per every_s: drawing takes the client's CPU from the watcher
                if self._stop.wait(max(0.0, last + self.every_s - time.monotonic())):
                    return
                self._poke.clear()
                last = time.monotonic()
                self.draw_now()

    def draw_now(self) -> None:
        with self._lock:
            try:
                write_live_picture(self.path, z_sino=self.z_sino, z_recon=self.z_recon,
                                   status=json.loads(live_paths(self.path)[0].read_text())
                                   if live_paths(self.path)[0].is_file() else None)
            except Exception as err:  # a picture must never stop the reduction
                log.warning("live picture not drawn: %s", err)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=30)


# ------------------------------------------------------------------------------------------
# following from elsewhere (a notebook attached to the scheduler, or any process on the file system)
# ------------------------------------------------------------------------------------------
def live_status(client=None, store_path=None, timeout_s: float = 2.0) -> dict | None:
    """The watcher's latest status: ``frames_total``, ``frames_whole`` (on disk, whole),
    ``frames_integrated``, ``frames_per_s``, ``lag_s`` (the last integrated block: its pattern
    in the store minus its last frame seen whole), ``slices_done``, ``finished``, ``picture``
    (the PNG), ``history`` (epoch, frames/s, lag) points.

    With ``client`` (a ``distributed.Client`` attached to the watcher's scheduler) it is read from
    the scheduler: the watch into ``store_path`` where it is given (several watches on one
    scheduler are kept apart), else the watch that published last; with ``store_path`` only, from
    ``RUN-live.json`` beside the store.  None when there is none yet."""
    if client is not None:

        try:
            return Variable(variable_name(store_path), client=client).get(timeout=timeout_s)
        except Exception:  # not set yet (a timeout)
            return None
    if store_path is None:
        raise ValueError("live_status: give a client attached to the scheduler or the store path")
    p = live_paths(store_path)[0]
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _latest(path: Path) -> tuple[int | None, int | None]:
    """The slice with the latest integrated block, and the latest slice fully reconstructed."""
    st = store.task_state(path)
    integrated, reconstructed = st[FRAMES_STAGE], st[writer_of(f"{store.RECON}/intensity")]
    sino = [z for z in range(integrated.shape[0]) if integrated[z].any()]
    rec = [z for z in range(reconstructed.shape[0]) if reconstructed[z].all()]
    return (sino[-1] if sino else None), (rec[-1] if rec else None)


def live_figure(store_path, z_sino: int | None = None, z_recon: int | None = None, status: dict | None = None):
    """The live picture as a matplotlib ``Figure`` (Agg, pyplot untouched): the q-summed sinogram
    of slice ``z_sino`` as far as it is integrated (blank: not yet), the q-summed reconstruction
    of slice ``z_recon``, and frames/s and lag over time (``status``, :func:`live_status`).
    Slices default to the latest integrated and the latest reconstructed."""
    # lazy: matplotlib takes a second to import; only drawing needs it
    from matplotlib.figure import Figure


    path = Path(store_path)
    zs, zr = _latest(path)
    z_sino = zs if z_sino is None else z_sino
    z_recon = zr if z_recon is None else z_recon
    status = status if status is not None else live_status(store_path=path)
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    xa, ya, wa = (_Axis(path, n) for n in ("x", "y", "omega"))
    ax = axes[0]
    if z_sino is not None:
        total = store.open_array(path, f"{store.REDUCED}/total", "r")[z_sino]
        units = store.open_array(path, f"{store.REDUCED}/total", "r").attrs.get("units")
        im = _map(ax, total, xa.values, wa.values, cmap="viridis")
        fig.colorbar(im, ax=ax, label=label("intensity summed over q", units))
        done = int(np.isfinite(total).any(axis=1).sum())
        ax.set(title=f"sinogram, slice {z_sino} ({done} of {total.shape[0]} angles)", xlabel=xa.label,
               ylabel=wa.label)
    else:
        ax.set_title("sinogram: no frame integrated yet")
        ax.axis("off")
    ax = axes[1]
    if z_recon is not None:
        arr = store.open_array(path, f"{store.RECON}/intensity", "r")
        img = np.zeros(arr.shape[1:3])
        for qs in store.q_blocks(arr.shape[3], arr.chunks[3]):  # one q chunk at a time
            img += np.nansum(arr[z_recon, :, :, qs], axis=-1)
        im = _map(ax, img, xa.values, ya.values, cmap="magma", aspect="equal")
        fig.colorbar(im, ax=ax, label=label("intensity summed over q", arr.attrs.get("units")))
        ax.set(title=f"reconstruction, slice {z_recon}", xlabel=xa.label, ylabel=ya.label)
    else:
        ax.set_title("reconstruction: no slice complete yet")
        ax.axis("off")
    ax = axes[2]
    hist = np.asarray((status or {}).get("history") or [], float).reshape(-1, 3)
    if hist.size:
        t = hist[:, 0] - hist[0, 0]
        ax.plot(t, hist[:, 1], color="C0")
        ax.set(xlabel="time (s)", ylabel="frames/s integrated", title=(
            f"{status['frames_integrated']} of {status['frames_total']} frames; "
            f"{hist[-1, 1]:.0f} frames/s, lag {status['lag_s']:.2f} s"))
        ax.tick_params(axis="y", colors="C0")
        lag = ax.twinx()
        lag.plot(t, hist[:, 2], color="C3")
        lag.set_ylabel("lag behind the detector (s)", color="C3")
        lag.tick_params(axis="y", colors="C3")
    else:
        ax.set_title("no status yet")
        ax.axis("off")
    fig.suptitle(f"{path.name}: live ({time.strftime('%H:%M:%S')})", fontsize=11)
    return fig


def write_live_picture(store_path, out=None, **kw) -> Path | None:
    """Draw :func:`live_figure` into ``out`` (default ``RUN-live.png`` beside the store) by
    write-then-rename (a viewer never sees half a PNG); never over a file this program did not write."""
    out = Path(out) if out else live_paths(store_path)[1]
    if out.exists() and not is_our_picture(out):
        log.warning("%s exists and was not written by xrdct-dask: the live picture is not drawn over it", out)
        return None
    fig = live_figure(store_path, **kw)
    if not replace_own(out, lambda fh: fig.savefig(fh, dpi=80, format="png", metadata={"Software": SOFTWARE}),
                       is_our_picture):
        return None
    return out
