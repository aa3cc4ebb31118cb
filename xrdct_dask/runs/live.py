"""Live mode: follow an acquisition while the detector writes it (``xrdct watch``).

The store, its blocks, done-markers and tasks are those of a batch run (:func:`~xrdct_dask.runs.open.open_run`,
:func:`~xrdct_dask.pipeline.graph.build_graph`, :func:`~xrdct_dask.pipeline.tasks_integrate.integrate_block`); what differs is
when a task is submitted:

* an integration block (one omega chunk of a slice, every x) goes to the cluster once every
  frame file of it is whole (:func:`~xrdct_dask.io.cbf.frame_complete`: its header promise met,
  its trailer written, under its final name), so a file still being written is never read;
  a file that stays incomplete and unchanged for ``settle_s`` is read as it is (and flagged).
  An HDF5 source is looked at afresh at each poll (:func:`~xrdct_dask.runs.inputs.frames_present`):
  a frame is there once its data file is (an Eiger master's external links, a file per slice or
  line) and holds it (the dataset's length, which an SWMR writer grows); data files must appear
  whole (written under another name, then renamed), as a detector's file writer does;
* a slice's centre, reconstruction and G(r) go as soon as its last block is integrated; before
  the first frame, every worker has run the slice stages once on a synthetic slice
  (:func:`~xrdct_dask.pipeline.tasks_recon.warm_slice_stages`), so their kernels are compiled by then;
* when no new frame has come for ``idle_timeout_s``, the blocks still waiting are integrated
  with what is there: the frames that never came are flagged MISSING (a later ``watch`` or
  ``run`` reads them if they arrive: :func:`~xrdct_dask.runs.open.reopen_retried`).

The blocks are the store's omega chunks (``store.omega_chunk`` x ``scan.nx`` frames): the lag
behind the detector is at least the time one block takes to acquire, so choose the chunk small
for live work (e.g. 2-4 rows of a 250 Hz scan: well under a second).

While it runs, the watcher keeps a status (frames whole, integrated, frames/s, lag, slices
done) in ``RUN-live.json`` beside the store, publishes it on the scheduler as the dask
``Variable`` named ``xrdct-live:<store path>`` and ``xrdct-live`` (the latest watch's;
:func:`live_status` reads them from a notebook attached to the
scheduler), and redraws ``RUN-live.png`` (:func:`live_figure`: the latest sinogram, the latest
reconstructed slice, frames/s and lag) every ``png_every_s`` seconds.  Stopped and started
again it resumes: blocks marked done are not read again.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from distributed import LocalCluster, as_completed

from xrdct_dask import store
from xrdct_dask.cluster.local import client_for, stage_resources
from xrdct_dask.cluster.logs import RunLogPlugin, worker_log_level
from xrdct_dask.config import Workflow, WorkflowError, load_workflow, workflow_from_dict
from xrdct_dask.errors import TaskFailed
from xrdct_dask.io.fabio_frames import frame_file_complete
from xrdct_dask.io.spec import split_spec
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.pipeline.frames import frame_path
from xrdct_dask.pipeline.graph import build_graph, timed
from xrdct_dask.pipeline.integrator import IntegratorPlugin
from xrdct_dask.pipeline.stages import FRAMES_STAGE, stages_of
from xrdct_dask.pipeline.tasks_integrate import integrate_block
from xrdct_dask.pipeline.tasks_recon import warm_slice_stages
from xrdct_dask.runs.execute import RunStopped, stop_message
from xrdct_dask.runs.inputs import frames_present
from xrdct_dask.runs.open import open_run
from xrdct_dask.runs.report import USABLE_NAMES, finish_run
from xrdct_dask.view.console import console
from xrdct_dask.view.live import _Painter, _Status, _variables

log = logging.getLogger(__name__)


RETRIES = 3  # times a block whose frames vanished or could not be read is submitted again


@dataclass
class WatchResult:
    """What :func:`watch` did.  Times are epoch seconds.

    ``frame_ready``: when each frame (acquisition index) was seen whole (NaN: never, or in a
    block done before); ``blocks``: one dict per integration block run now (z, omega_start,
    frames, ready = its last frame seen whole, submitted, finished, status counts);
    ``slices``: ``{z: when its last task finished}``; ``timed_out``: the idle timeout ended the
    wait (``missing``: frames flagged MISSING then)."""

    store: Path
    frame_ready: np.ndarray
    blocks: list[dict] = field(default_factory=list)
    slices: dict[int, float] = field(default_factory=dict)
    timed_out: bool = False
    missing: int = 0
    summary: dict = field(default_factory=dict)


class _Frames:
    """Which frames of the pending blocks are whole on disk, polled in acquisition order.

    Each poll looks at the first not-yet-whole frames (a window of ``window``, and no further
    than 64 absent files past the newest whole one), so the cost of a poll does not grow with
    the scan.  A file that is there but incomplete and has not
    changed size for ``settle_s`` is taken as final (the reader will flag it).  A frame the
    detector skipped (no file, while frames more than ``window / 2`` acquisition steps later, or
    the scan's last frame, are whole) is given up after ``settle_s`` (its block goes without it, flagged missing; a later
    run reads it if it comes): one dropped frame does not hold its slice to the idle timeout."""

    def __init__(self, wf: Workflow, needed: np.ndarray, window: int, settle_s: float):
        self.wf = wf
        self.todo = np.unique(needed[needed >= 0])  # acquisition indices still to see whole
        self.ready_at = np.full(int(needed.max()) + 1 if needed.size and needed.max() >= 0 else 0, np.nan)
        self.window, self.settle_s = window, settle_s
        self.seen: dict[int, tuple[int, float]] = {}  # incomplete files: (size, since)
        self.passed: dict[int, float] = {}  # absent frames overtaken by later ones: since when
        self.newest = -1  # the latest acquisition index seen whole
        self.last = int(self.todo[-1]) if self.todo.size else -1  # the scan's last frame to see
        self.gave_up = np.zeros(self.ready_at.size, bool)  # frames given up (no file): flagged missing
        self.last_new = time.time()

    def poll(self) -> int:
        """Look at the next frames; returns how many became whole."""
        if not self.todo.size:
            return 0
        now = time.time()
        new = []
        absent = 0  # absent files in a row past the newest whole one: the detector is not there yet
        present = frames_present(self.wf) if self.wf.frames_hdf5 else None  # one fresh look per poll
        for i in self.todo[: self.window]:
            if absent >= 64:
                break
            if present is not None:
                whole, size = present(int(i)), None
            else:
                p = frame_path(self.wf, int(i))
                whole = frame_file_complete(p)
                try:
                    size = None if whole else os.stat(p).st_size
                except OSError:
                    size = None
            if whole:
                new.append(i)
                absent = 0
                continue
            if size is None:  # no file (an HDF5 frame: not in its file yet)
                absent += int(i > self.newest)
                if self.newest > i + self.window // 2 or self.newest == self.last:  # overtaken: skipped?
                    since = self.passed.setdefault(int(i), now)
                    if now - since >= self.settle_s:
                        new.append(i)
                        self.gave_up[i] = True
                continue
            was = self.seen.get(int(i))
            if was is None or was[0] != size:
                self.seen[int(i)] = (size, now)
            elif now - was[1] >= self.settle_s:  # stopped growing: read as it is
                new.append(i)
        if new:
            new = np.asarray(new)
            self.ready_at[new] = now
            self.todo = np.setdiff1d(self.todo, new, assume_unique=True)
            for i in new:
                self.seen.pop(int(i), None)
                self.passed.pop(int(i), None)
            self.newest = max(self.newest, int(new.max()))
            self.last_new = now
        return len(new)

    def again(self, indices) -> None:
        """Frames to see whole again (their block read them missing or unreadable)."""
        idx = np.asarray(indices, np.int64)
        idx = idx[idx >= 0]
        self.ready_at[idx] = np.nan
        self.gave_up[idx] = False
        self.todo = np.union1d(self.todo, idx)


def _frames_folder(wf: Workflow) -> Path:
    """The folder the frames go to that must exist before the first one: the template's part
    before its first ``{field}`` (a folder per slice or line is made by the detector), or the
    HDF5 file's folder."""

    parts = Path(split_spec(wf.inputs.frames)[0]).parts
    fixed = [p for p in itertools.takewhile(lambda p: "{" not in p, parts)]
    return Path(*fixed[:-1]) if len(fixed) == len(parts) else Path(*fixed)


def _wait_for(client, futures: list, timeout_s: float, first: bool = False) -> None:
    """Return once every one of ``futures`` is done (``first``: one of them), or after ``timeout_s``.
    Through the run's own client: dask's ``wait()`` asks for the process's default client, and a
    run sets none (cluster/local.py ``_client``)."""
    try:
        for _ in as_completed(futures, loop=client.loop, timeout=timeout_s):
            if first:
                return
    except TimeoutError:
        pass


def _warm_slice_stages(client, wf: Workflow, timeout_s: float = 180.0) -> None:
    """Every worker connected now runs the slice stages once on a synthetic slice
    (:func:`~xrdct_dask.pipeline.tasks_recon.warm_slice_stages`) before the first frame comes, so that the
    first slice is reconstructed when it is complete rather than after its kernels compile (about
    10 s on a machine that never ran them).  A worker that cannot, or takes longer than
    ``timeout_s``, is said in the log and the watch goes on."""

    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    futs = {client.submit(warm_slice_stages, wf, workers=[w], allow_other_workers=False, pure=False): w
            for w in workers}
    if futs:
        _wait_for(client, list(futs), timeout_s)
    for fut, w in futs.items():
        if not fut.done():
            log.warning("worker %s: slice stages' warm-up still running after %g s; going on", w, timeout_s)
            fut.cancel()
            continue
        res = fut.result() if fut.status == "finished" else {"error": repr(fut.exception())}
        if "error" in res:
            log.warning("worker %s: slice stages not warmed up (%s); its first slice compiles them", w, res["error"])


def _wait_for_first_frame(wf: Workflow, idle_timeout_s: float, poll_s: float) -> None:
    """Wait until one of the scan's first frames is whole (the store's template needs its shape)."""
    t0 = time.time()
    first = range(min(wf.scan.nframes, 64))
    while True:
        if wf.frames_hdf5:
            present = frames_present(wf)
            if any(present(i) for i in first):
                return
        elif any(frame_file_complete(frame_path(wf, i)) for i in first):
            return
        if time.time() - t0 > idle_timeout_s:
            raise WorkflowError(f"inputs.frames: no frame came in {idle_timeout_s:g} s ({wf.inputs.frames})")
        time.sleep(poll_s)


def wait_for_workflow(path: str | Path, timeout_s: float, poll_s: float = 0.1) -> Path:
    """Wait up to ``timeout_s`` for the workflow file ``path`` to appear (an acquisition, e.g.
    ``xrdct simulate --rate``, writes it when it starts); a console line says the watch waits.
    Raises :class:`WorkflowError` naming the file when none came."""
    path = Path(path)
    if path.is_file():
        return path
    console.info("waiting for %s (up to %g s, the idle timeout)", path, timeout_s)
    t0 = time.time()
    while not path.is_file():
        if time.time() - t0 > timeout_s:
            raise WorkflowError(f"{path}: no workflow file came in {timeout_s:g} s")
        time.sleep(poll_s)
    return path


def watch(workflow: Workflow | str | Path, *, overrides: dict | None = None, idle_timeout_s: float = 600.0,
          scheduler_address: str | None = None, cluster=None, jobs: int | None = None, adaptive: bool | None = None,
          cluster_options: dict | None = None, poll_s: float = 0.1, settle_s: float = 5.0, png_every_s: float = 2.0,
          progress: bool = True, summary: bool = True, armed: threading.Event | None = None) -> WatchResult:
    """Follow the acquisition of ``workflow`` into its store; return when every scan point is
    reduced and every slice reconstructed (and G(r) computed where asked), or when no new frame
    has come for ``idle_timeout_s`` seconds (the frames that never came flagged MISSING).

    ``scheduler_address`` / ``cluster`` as for :func:`xrdct_dask.runs.execute.run` (a scheduler that
    stays up between scans is the beamline's case).  ``poll_s``: how often the frame folder is
    looked at; ``settle_s``: an incomplete file unchanged this long is read as it is;
    ``png_every_s``: how often the live picture is redrawn (0: never).  ``armed`` is set once the
    workers are ready (integrator built and warmed) and the watcher waits for frames.
    """


    if not isinstance(workflow, Workflow):
        wait_for_workflow(workflow, idle_timeout_s, poll_s)
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow, overrides)
    if overrides and isinstance(workflow, Workflow):
        wf = workflow_from_dict(wf.model_dump(mode="json"), overrides=overrides)
    if not _frames_folder(wf).is_dir():
        raise WorkflowError(f"inputs.frames: folder {_frames_folder(wf)} does not exist")
    client, local = client_for(wf, scheduler_address, cluster, jobs, adaptive, cluster_options)
    following = None
    try:
        # the workers are readied (integrator built, engine and slice stages warmed) before the first frame comes
        client.register_plugin(RunLogPlugin(worker_log_level() if isinstance(local, LocalCluster) else None))
        resources = stage_resources(client, wf, local)
        client.register_plugin(IntegratorPlugin(wf, gpu_only=bool(resources[FRAMES_STAGE])))
        _warm_slice_stages(client, wf)
        if armed is not None:
            armed.set()
        _wait_for_first_frame(wf, idle_timeout_s, poll_s)
        t_start = time.perf_counter()  # the run's wall time counts from the first frame
        following = _Following(client, open_run(wf), resources, settle_s=settle_s, png_every_s=png_every_s,
                               progress=progress)
        following.follow(idle_timeout_s, poll_s)
        return following.finish(time.perf_counter() - t_start, summary)
    finally:
        if following is not None and following.painter is not None:
            following.painter.stop()
        client.close()
        if local is not None:
            local.close()


class _Following:
    """One watch on its cluster: the integration blocks waiting for their frames, the tasks running,
    the slices left, and the live status (:func:`watch`, whose loop is :meth:`follow`)."""

    def __init__(self, client, ctx, resources: dict, *, settle_s: float, png_every_s: float, progress: bool):

        self.client, self.ctx, self.resources, self.progress = client, ctx, resources, progress
        self.wf, self.path = ctx.workflow, ctx.store_path
        self.before = store.task_state(self.path)
        s, self.wc = self.wf.scan, ctx.layout.omega_chunk
        self.index = store.open_array(self.path, f"{store.REDUCED}/frame_index", "r")
        self.pending: dict[tuple[int, int], np.ndarray] = {}  # (z, block) -> acquisition indices of its frames
        for z in range(s.nz):
            if self.before[FRAMES_STAGE][z].all():
                continue
            idx_z = self.index[z]
            for b in np.flatnonzero(~self.before[FRAMES_STAGE][z]):
                self.pending[(z, int(b))] = idx_z[b * self.wc:(b + 1) * self.wc].reshape(-1)
        needed = np.concatenate(list(self.pending.values())) if self.pending else np.zeros(0, np.int64)
        self.frames = _Frames(self.wf, needed, window=max(4 * self.wc * s.nx, 256), settle_s=settle_s)
        total_frames = int((needed >= 0).sum())
        self.result = WatchResult(store=self.path, frame_ready=self.frames.ready_at)
        self.slice_left = {z: int((~self.before[FRAMES_STAGE][z]).sum()) for z in range(s.nz)}  # blocks not yet done
        self.slice_open = {z for z in range(s.nz) if not self.before.slice_done(z)}  # slices with tasks left
        self.results: dict[str, list] = {}
        self.status = _Status(self.path, total_frames, s.nz)
        self.png_every_s = png_every_s
        self.painter = _Painter(self.path, self.status, png_every_s) if png_every_s > 0 else None
        if progress:
            console.info("dask dashboard: %s\nwatching %s for %d frames (%d blocks of %d x %d); store %s",
                         client.dashboard_link, _frames_folder(self.wf), total_frames, len(self.pending), self.wc,
                         s.nx, self.path)
        self.variables = _variables(client, self.path)
        self.token = os.urandom(4).hex()
        self.integrate = timed(integrate_block)
        self.inflight: dict = {}  # future -> (stage, z, block or None)
        self.slice_futures: dict[int, set] = {}
        self.display = {st.name: st.display for st in stages_of(self.wf)}  # stages that only write a copy to look at
        self.tries: dict[tuple[int, int], int] = {}
        self.final = False  # the idle timeout passed: blocks go with what is there
        self.last_png = 0.0

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.inflight or self.slice_open)

    def follow(self, idle_timeout_s: float, poll_s: float) -> None:
        """Until every block is integrated and every slice done: look at the frames, submit the
        blocks whose frames are whole, handle the tasks that finished, refresh the live status."""
        for z in sorted(self.slice_open):  # slices integrated before (a resumed watch): straight on
            if self.slice_left[z] == 0:
                self.submit_slice(z)
        while self.busy:
            self.frames.poll()
            for (z, b), idx in sorted(self.pending.items()):
                if self.final or np.isfinite(self.frames.ready_at[idx[idx >= 0]]).all():
                    self.submit_block(z, b)
            if self.pending and not self.final and time.time() - self.frames.last_new > idle_timeout_s:
                self.give_up_waiting(idle_timeout_s)
                continue
            for fut in self.wait(poll_s):
                self.done(fut)
            self.publish()

    def give_up_waiting(self, idle_timeout_s: float) -> None:
        """No new frame for the idle timeout: the blocks still waiting go with what is there."""
        self.final = self.result.timed_out = True
        waiting = sum(int((~np.isfinite(self.frames.ready_at[i[i >= 0]])).sum()) for i in self.pending.values())
        log.warning("no new frame for %g s: %d frames never came; their blocks are integrated without them "
                    "(flagged missing)", idle_timeout_s, waiting)
        if self.progress:
            console.info("idle for %g s: %d frames never came, flagged missing", idle_timeout_s, waiting)

    def wait(self, poll_s: float) -> list:
        """Sleep until a task finishes, or ``poll_s``; the tasks finished."""

        if self.inflight:
            _wait_for(self.client, list(self.inflight), poll_s, first=True)
            return [f for f in self.inflight if f.done()]
        if self.pending:
            time.sleep(poll_s)
        elif self.slice_open:  # nothing pending, nothing running, a slice left: its tasks were all done
            for z in sorted(self.slice_open):
                self.submit_slice(z)
        return []

    def submit_block(self, z: int, b: int) -> None:
        wc, s = self.wc, self.wf.scan
        block = store.FrameBlock(z, b * wc, min((b + 1) * wc, s.nomega))
        fut = self.client.submit(self.integrate, block, self.ctx, pure=False, **self.resources[FRAMES_STAGE],
                                 key=f"integrate-{self.token}-{z}-{b}-{self.tries.get((z, b), 0)}")
        self.inflight[fut] = (FRAMES_STAGE, z, b)
        idx = self.pending.pop((z, b))
        ready = self.frames.ready_at[idx[idx >= 0]]
        self.result.blocks.append({"z": z, "omega_start": block.omega_start, "frames": int(idx.size),
                                   "ready": float(np.nanmax(ready)) if np.isfinite(ready).any() else np.nan,
                                   "submitted": time.time(), "key": fut.key})

    def submit_slice(self, z: int) -> None:
        """The centre, reconstruction (and G(r)) tasks of slice ``z`` not done yet."""

        state = store.task_state(self.path)
        graph = build_graph(self.ctx, zs=[z], done=state, token=f"{self.token}-{z}", resources=self.resources)
        items = [(stage, d) for stage, ds in graph.items() for d in ds]
        futs = self.client.compute([d for _, d in items], optimize_graph=False) if items else []
        self.slice_futures[z] = set(futs)
        for (stage, _), f in zip(items, futs):
            self.inflight[f] = (stage, z, None)
        if not futs:
            self.slice_done(z)

    def slice_done(self, z: int) -> None:
        self.slice_open.discard(z)
        self.result.slices[z] = time.time()
        self.status.slice_done(z)
        if self.progress:
            console.info("slice %d reconstructed (%d of %d this run)", z, len(self.result.slices), self.wf.scan.nz)
        if self.painter is not None:
            self.painter.poke(z_recon=z)

    def done(self, fut) -> None:
        """A task finished: an integration block (its frames read again where they could not
        be, up to :data:`RETRIES` times) or one of a slice's tasks."""

        stage, z, b = self.inflight.pop(fut)
        if fut.status == "error":
            exc = fut.exception()
            if isinstance(exc, OSError):
                raise RunStopped(stop_message(exc, fut.key, self.path)) from exc
            raise TaskFailed(f"task {fut.key} failed: {exc}") from exc
        res = fut.result()
        self.results.setdefault(stage, []).append(res)
        if stage != FRAMES_STAGE:
            self.slice_futures[z].discard(fut)
            # reconstructed once only display stages (the view copy) are left: they run on, the slice is shown
            if z in self.slice_open and all(self.display[self.inflight[f][0]] for f in self.slice_futures[z]):
                self.slice_done(z)
            return
        wc = self.wc
        rec = next(r for r in reversed(self.result.blocks) if r["key"] == fut.key)
        rec.update(finished=res["finished"], status=res["status"])
        idx = self.index[z, b * wc:(b + 1) * wc].reshape(-1)
        lost = np.zeros(0, np.int64)
        if {FrameStatus.MISSING.name, FrameStatus.IO_ERROR.name} & set(res["status"]):
            st = store.open_array(self.path, f"{store.REDUCED}/frame_status", "r")[z, b * wc:(b + 1) * wc].reshape(-1)
            bad = np.isin(st, [int(FrameStatus.MISSING), int(FrameStatus.IO_ERROR)]) & (idx >= 0)
            lost = idx[bad]
            lost = lost[~self.frames.gave_up[lost]]  # seen whole, then not readable
        if lost.size and not self.final and self.tries.get((z, b), 0) < RETRIES:
            # frames seen whole vanished or could not be read: see them whole again, redo the block
            self.tries[(z, b)] = self.tries.get((z, b), 0) + 1
            self.frames.again(lost)
            store.mark_done(self.path, FRAMES_STAGE, (z, b), 0)
            self.pending[(z, b)] = idx
            log.warning("block (z %d, omega %d): %d frames seen whole could not be read; read again "
                        "when they are back", z, b * wc, lost.size)
            return
        # integrated: the frames whose pattern is used (a frame that never came is flagged, not integrated)
        self.status.integrated(sum(n for k, n in res["status"].items() if k in USABLE_NAMES), rec["ready"],
                               res["finished"])
        self.slice_left[z] -= 1
        if self.slice_left[z] == 0:
            self.submit_slice(z)
        if self.painter is not None:
            self.painter.poke(z_sino=z)

    def publish(self) -> None:
        """The live status (JSON beside the store, the scheduler's Variable) and picture, at most
        every ``png_every_s`` (0.5 s at least) and once when all is done."""
        now = time.time()
        if now - self.last_png < max(self.png_every_s, 0.5) and self.busy:
            return
        self.last_png = now
        self.status.frames_whole = int(np.isfinite(self.frames.ready_at).sum())
        self.status.lag()
        self._set_variable(self.status.write())
        if self.painter is not None:
            self.painter.poke()

    def _set_variable(self, snap: dict) -> None:
        try:
            for v in self.variables:
                v.set(snap)
        except Exception:  # a scheduler going away: the JSON file still says it
            pass

    def finish(self, seconds: float, summary: bool) -> WatchResult:
        """The run's report (:func:`~xrdct_dask.runs.report.finish_run`), the last status and picture."""

        result = self.result
        result.missing = int(sum(r.get("status", {}).get(FrameStatus.MISSING.name, 0) for r in result.blocks))
        result.summary = finish_run(self.ctx, self.results, self.before, seconds, progress=self.progress,
                                    summary=summary)
        self.status.finished = True
        self._set_variable(self.status.write())
        if self.painter is not None:
            self.painter.draw_now()
        return result
