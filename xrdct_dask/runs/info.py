"""What a run store holds, at a glance (``xrdct info RUN.zarr``): its workflow, inputs and their
digests, frames flagged, stages done, timings and versions, read from the store's own attrs and
done-markers.  Nothing is written; nothing of the size of the scan is read (the frame counts are
those of the last run's summary, or counted slice by slice where no run finished yet)."""

from __future__ import annotations

import json
from pathlib import Path

from xrdct_dask import store
from xrdct_dask.io.status import USABLE
from xrdct_dask.runs.report import frame_status_summary


def store_info(path: str | Path) -> dict:
    """The summary of the run store at ``path`` as plain data (JSON-ready).

    Keys: ``store``, ``created``, ``workflow`` (the whole stored workflow), ``workflow_digest``,
    ``work_digest``, ``inputs`` (``{key: {"path", "sha256"}}`` of every input file but the
    frames, as the run's identity records them), ``frames`` (the frames template and how many
    sampled frame files the store records), ``frame_status`` (frames per status), ``frames_flagged``
    (the unusable ones), ``frames_integrated``, ``missing_slices``, ``stages`` (``{stage:
    {"done", "total"}}`` from the done-markers), ``stage_status``, ``runs`` (each invocation:
    finished, frames integrated, wall seconds), ``stage_seconds`` (task seconds per stage of the
    last run), ``engines``, ``versions``, ``parent`` and ``reprocess`` (a reprocessed run's lineage).
    Raises ValueError (one line) for a path that is not a run store of this program."""
    path = Path(path)
    attrs = store.run_attrs(path)
    summary = attrs.get("run_summary") or {}
    if "frame_status" in summary:
        counts, missing = dict(summary["frame_status"]), list(summary.get("missing_slices") or [])
    else:  # no run finished yet: counted from the store (slice by slice)
        counts, missing = frame_status_summary(path)
    usable = {s.name for s in USABLE}
    stages = {k: {"done": d, "total": t} for k, (d, t) in store.task_state(path).counts().items()}
    sample = attrs.get("frame_sample") or {}
    wf = attrs.get("workflow") or {}
    return {
        "store": str(path.resolve()),
        "created": attrs.get("created"),
        "workflow": wf,
        "workflow_digest": attrs.get("workflow_digest"),
        "work_digest": attrs.get("work_digest"),
        "inputs": attrs.get("input_contents") or {},
        "frames": {"template": (wf.get("inputs") or {}).get("frames"),
                   "sampled_files": len(sample.get("files", [])),
                   "sampled_absent": sum(1 for b in sample.get("bytes", []) if b < 0)},
        "frame_status": counts,
        "frames_integrated": sum(n for k, n in counts.items() if k in usable),
        "frames_flagged": {k: n for k, n in counts.items() if k not in usable and k != "NOT_WRITTEN"},
        "missing_slices": missing,
        "stages": stages,
        "stage_status": attrs.get("stage_status") or {},
        "runs": summary.get("runs", []),
        "stage_seconds": summary.get("task_seconds", {}),
        "engines": summary.get("engines") or [attrs.get("engine")],
        "versions": attrs.get("versions") or {},
        "parent": attrs.get("parent"),
        "reprocess": attrs.get("reprocess"),
    }


def format_info(info: dict) -> str:
    """:func:`store_info` as the lines ``xrdct info`` prints."""
    wf = info["workflow"]
    scan = wf.get("scan", {})
    integ, pdf, rec = wf.get("integrate", {}), wf.get("pdf", {}), wf.get("recon", {})
    lines = [f"store: {info['store']} (created {info['created'] or '?'})",
             f"workflow: scan {scan.get('nz')} x {scan.get('nomega')} x {scan.get('nx')} (z x omega x x), "
             f"{integ.get('npt_rad')} bins in {integ.get('unit')}, recon {rec.get('algorithm')} "
             f"({rec.get('filter')}), PDF " + (f"{pdf.get('composition')} to r = {pdf.get('rmax')} A"
                                               if pdf.get("enabled", True) else "off")
             + f"; digest {str(info['workflow_digest'])[:12]}, work {str(info['work_digest'])[:12]}"]
    if info.get("parent"):
        rp = info.get("reprocess") or {}
        lines.append(f"  reprocessed from {info['parent'].get('path')} (from {rp.get('from', '?')}, changed: "
                     f"{', '.join(rp.get('changed', {})) or 'nothing'})")
    lines.append(f"inputs: frames {info['frames']['template']} ({info['frames']['sampled_files']} files sampled"
                 + (f", {info['frames']['sampled_absent']} absent then" if info["frames"]["sampled_absent"] else "")
                 + ")")
    for key, rec_ in sorted(info["inputs"].items()):
        lines.append(f"  {key}: {rec_.get('path')} (sha256 {str(rec_.get('sha256'))[:16]})")
    flagged = info["frames_flagged"]
    lines.append(f"frames: {info['frames_integrated']} integrated, "
                 + ("flagged: " + ", ".join(f"{k.lower().replace('_', ' ')} {n}" for k, n in sorted(flagged.items()))
                    if flagged else "none flagged")
                 + (f", {info['frame_status']['NOT_WRITTEN']} not integrated yet"
                    if info["frame_status"].get("NOT_WRITTEN") else ""))
    if info["missing_slices"]:
        lines.append(f"  slices with no frame (every frame missing): {', '.join(map(str, info['missing_slices']))}")
    lines.append("stages: " + ", ".join(f"{k} {v['done']}/{v['total']}" for k, v in info["stages"].items())
                 + (" (complete)" if all(v["done"] == v["total"] for v in info["stages"].values()) else
                    " (incomplete: the same `xrdct run` resumes it)"))
    for r in info["runs"]:
        lines.append(f"  run finished {r.get('finished')}: {r.get('frames_integrated', 0)} frames integrated in "
                     f"{r.get('wall_seconds', 0):.1f} s")
    if info["stage_seconds"]:
        lines.append("  task seconds of the last run: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                  info["stage_seconds"].items()))
    lines.append(f"engines: {', '.join(str(e) for e in info['engines'] if e)}")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(info["versions"].items())))
    return "\n".join(lines)


def info_json(info: dict) -> str:
    return json.dumps(info, indent=1, default=str)
