"""The end of a run: stage status, the run summary in the store's attrs, the summary picture.

The summary describes the whole store (frames integrated, their status), not only what one
invocation computed: a resumed or repeated run reports the run, and what it added.  The library
returns the summary; the command line prints :func:`format_summary` of it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import numpy as np
import zarr

from xrdct_dask import store
from xrdct_dask.io.status import USABLE, FrameStatus
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.stages import FRAMES_STAGE, stages_of
from xrdct_dask.view.console import console
from xrdct_dask.view.summary import write_summary

USABLE_NAMES = {s.name for s in USABLE}  # statuses whose frames are integrated (their pattern is used)


def engine_report(results: list[dict]) -> list[str]:
    """Which engine ran where, one line per engine, from the decode-integrate task results
    (their ``engine`` and ``worker``): e.g. ``["engine cupy: 12 integrate tasks on 2
    worker(s) (node01 x2)"]``."""

    tasks: Counter = Counter()
    workers: dict[str, set] = defaultdict(set)
    for r in results:
        tasks[r["engine"]] += 1
        if r.get("worker"):
            workers[r["engine"]].add(r["worker"])
    lines = []
    for engine in sorted(tasks):
        hosts = Counter(a.split("://")[-1].rsplit(":", 1)[0] for a in workers[engine])
        where = ", ".join(f"{h} x{n}" if n > 1 else h for h, n in sorted(hosts.items())) or "this process"
        lines.append(f"engine {engine}: {tasks[engine]} integrate tasks on {len(workers[engine]) or 1} "
                     f"worker(s) ({where})")
    return lines


def status_counts(path) -> dict[str, int]:
    """How many frames of a store have each status (read slice by slice)."""
    return frame_status_summary(path)[0]


def frame_status_summary(path) -> tuple[dict[str, int], list[int]]:
    """``(counts, missing slices)``: how many frames of a store have each status, and the slices
    whose every frame is MISSING (no file, or no frame in the source, at any of its points; a
    slice not integrated yet is not one).  Read slice by slice."""

    arr = store.open_array(path, f"{store.REDUCED}/frame_status", "r")
    counts: dict[str, int] = {}
    missing = []
    for z in range(arr.shape[0]):
        codes, ns = np.unique(arr[z], return_counts=True)
        for code, n in zip(codes, ns):
            name = FrameStatus(int(code)).name if int(code) >= 0 else "NOT_WRITTEN"
            counts[name] = counts.get(name, 0) + int(n)
        if codes.tolist() == [int(FrameStatus.MISSING)]:
            missing.append(z)
    return counts, missing


def missing_slices_message(info: dict, nz: int) -> str | None:
    """One line on the slices of a run summary whose every frame is missing, saying what is wrong
    ("the frames make 2 slices, the workflow 3"); None when there are none."""
    gone = info.get("missing_slices") or []
    if not gone:
        return None
    if gone == list(range(nz - len(gone), nz)):  # the last ones: the scan is smaller than the workflow says
        return (f"the frames make {nz - len(gone)} slices, the workflow {nz} (scan.nz): every frame of slice"
                f"{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))} is missing")
    shown = ", ".join(map(str, gone[:8])) + (", ..." if len(gone) > 8 else "")
    return f"every frame of {len(gone)} of the {nz} slices is missing (slices {shown})"


def finish_run(ctx: RunContext, results: dict, before: store.TaskState, wall: float, *,
               progress: bool = True, summary: bool = True) -> dict:
    """Stage status and run summary into the store's attrs (and the summary picture).

    The summary describes the whole store (frames integrated, their status), not only what this
    invocation computed: a resumed or repeated run reports the run, and what it added now."""

    after = store.task_state(ctx.store_path)
    counts = after.counts()
    full = {k: d == t for k, (d, t) in counts.items()}
    stage_done: dict[str, bool] = {}
    group = store.REDUCED
    for st in stages_of(ctx.workflow):  # a group is done when every stage writing it (or feeding it) is
        if st.writes:
            group = st.writes[0].split("/")[0]
        if st.name in full:
            stage_done[group] = stage_done.get(group, True) and full[st.name]
    for group, ok in stage_done.items():
        store.set_stage_status(ctx.store_path, group, "done" if ok else "partial")
    previous = store.read_attrs(ctx.store_path).get("run_summary") or {}
    info = run_summary(results, wall, previous)
    info["engine_report"] = engine_report(results.get(FRAMES_STAGE, [])) or previous.get("engine_report", [])
    # slices whose air could not be found (sinogram.background: auto): nothing was subtracted there
    info["no_air_slices"] = sorted({r["z"] for r in results.get("center", []) if (r.get("air") or {}).get("found")
                                    is False} | set(previous.get("no_air_slices", [])))
    info["frame_status"], info["missing_slices"] = frame_status_summary(ctx.store_path)
    # frames integrated: those whose pattern is used; a missing or corrupt frame is counted as flagged only
    info["frames"] = sum(n for k, n in info["frame_status"].items() if k in USABLE_NAMES)
    info["scan_points"] = sum(n for k, n in info["frame_status"].items() if k != "NOT_WRITTEN")
    info["tasks"] = {k: {"executed": len(results.get(k, [])), "skipped": d}
                     for k, (d, _) in before.counts().items()}
    zarr.open_group(str(ctx.store_path), mode="r+").attrs["run_summary"] = info
    store.consolidate(ctx.store_path)
    if progress:
        console.info(format_summary(info))
    if summary:

        png = write_summary(ctx.store_path)
        if progress and png is not None:
            console.info("summary picture: %s", png)
    return info


RUNS_KEPT = 20  # invocations listed in a store's run_summary["runs"]


def run_summary(results: dict, wall_s: float, previous: dict | None = None) -> dict:
    """This invocation's figures (frames integrated now, seconds, rate, engines, task seconds),
    with the earlier invocations of the same store listed under ``runs``."""
    integ = results.get(FRAMES_STAGE, [])
    status: dict[str, int] = {}
    for r in integ:
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
    frames = sum(n for k, n in status.items() if k in USABLE_NAMES)  # integrated now: flagged ones are not
    previous = previous or {}
    engines = sorted({r["engine"] for r in integ} | set(previous.get("engines", [])))
    this = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "frames_integrated": frames, "wall_seconds": wall_s}
    spans = {k: {"tasks": len(v), "first_start": min(r["started"] for r in v),
                 "last_finish": max(r["finished"] for r in v)}
             for k, v in results.items() if v and all("started" in r for r in v)}
    by_stage = {k: sorted({r["engine"] for r in v if "engine" in r}) for k, v in results.items()}
    return {"frames_this_run": frames, "points_this_run": sum(r["frames"] for r in integ),
            "frame_status_this_run": status, "wall_seconds": wall_s,
            "frames_per_second": frames / wall_s if wall_s else 0.0, "engines": engines,
            "runs": (list(previous.get("runs", [])) + [this])[-RUNS_KEPT:], "stage_spans": spans,
            "stage_engines": {k: v for k, v in by_stage.items() if v},
            "task_seconds": {k: float(sum(r["seconds"] for r in v if isinstance(r, dict))) for k, v in results.items()}}


def format_summary(info: dict) -> str:
    bad = {k: v for k, v in info["frame_status"].items() if k not in ("OK", "NOT_WRITTEN")}
    now, total = info["frames_this_run"], info["frames"]
    if now:
        lines = [f"{now} frames integrated in {info['wall_seconds']:.1f} s ({info['frames_per_second']:.0f} frames/s "
                 f"end to end, engine {', '.join(info['engines'])})"
                 + (f"; {total} frames in the store" if total != now else "")]
    elif info.get("points_this_run"):
        lines = [f"no frame integrated: the {info['points_this_run']} frames read now are all flagged; "
                 f"{total} frames in the store"]
    else:
        lines = [f"all {total} frames of the store were integrated by earlier runs; {info['wall_seconds']:.1f} s now"]
    lines.append("frames flagged: " + (", ".join(f"{k.lower().replace('_', ' ')} {v}" for k, v in sorted(bad.items()))
                                       if bad else "none"))
    gone = info.get("missing_slices") or []
    if gone:
        lines.append(f"slices with no frame (every frame missing): {', '.join(map(str, gone[:20]))}"
                     + (", ..." if len(gone) > 20 else ""))
    lines += info.get("engine_report", [])
    if info.get("no_air_slices"):
        lines.append(f"sinogram.background auto: no column is air in every projection of slices "
                     f"{', '.join(map(str, info['no_air_slices']))}: nothing subtracted there (recon/slice_info)")
    skipped = sum(t["skipped"] for t in info.get("tasks", {}).values())
    if skipped:
        executed = sum(t["executed"] for t in info["tasks"].values())
        lines.append(f"tasks: {skipped} already done (kept from an earlier run or the parent), {executed} ran now")
    return "\n".join(lines)
