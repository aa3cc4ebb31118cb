"""The plan of a run as the ``xrdct plan`` table (:func:`format_plan`): what
:func:`xrdct_dask.runs.plan.plan_workflow` derives, in SI units (1 TB = 1e12 bytes) and hours."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xrdct_dask.cluster.gpulayout import describe_layout

if TYPE_CHECKING:  # the plan's module imports this one: its type only for the signature
    from xrdct_dask.runs.plan import RunPlan


def _b(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _h(hours: float) -> str:
    """Hours to read at a glance: 1,234 / 87.3 / 0.0035."""
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.1f}" if hours >= 0.1 else f"{hours:.2g}"


def format_plan(p: RunPlan) -> str:
    """The plan as the ``xrdct plan`` table (SI units: 1 TB = 1e12 bytes)."""
    nz, nw, nx = p.scan
    lines = [f"scan {nz} x {nw} x {nx} (z x omega x x) = {p.frames:,} frames of {p.detector_shape[0]} x "
             f"{p.detector_shape[1]} pixels, {_b(p.frame_bytes)} each ({p.frame_bytes_source})",
             f"{p.nq} q bins, {p.nr} r points",
             f"{'stage':>17} {'tasks':>10} {'read':>10} {'written':>10} {'held/task':>10}"]
    for name, s in p.stages.items():
        lines.append(f"{name:>17} {s.tasks:>10,} {_b(s.bytes_read):>10} {_b(s.bytes_written):>10} "
                     f"{_b(s.bytes_per_task):>10}")
    tot_r = sum(s.bytes_read for s in p.stages.values())
    tot_w = sum(s.bytes_written for s in p.stages.values())
    lines.append(f"{'total':>17} {p.tasks:>10,} {_b(tot_r):>10} {_b(tot_w):>10}")
    lines.append(f"waves: {p.waves} of up to {min(p.slices_per_wave, nz)} slices ({p.tasks_per_slice} tasks per "
                 f"slice); the scheduler holds at most {p.max_tasks_held:,} tasks")
    lay = p.layout
    lines.append(f"blocks: {lay['omega_chunk']} omega rows per integrate task, {lay['q_chunk']} q bins per recon "
                 f"task (prepared {lay['q_sub']} at a time), {lay['y_chunk']} voxel rows per pdf task, "
                 f"{lay['r_chunk']} r points per chunk; at most {_b(lay['budget'])} per task (compute.task_memory)")
    if "view" in p.stages:
        v = p.stages["view"].bytes_written
        lines.append(f"view copy: {100 * v / max(tot_w, 1):.1f} % of the bytes written ({_b(v)}: maps and patterns "
                     f"for xrdct view)")
    biggest = max(p.chunk_bytes.values(), default=0)
    lines.append(f"store: {sum(p.chunks.values()):,} chunks, {p.files:,} files (written uncompressed at most); "
                 f"largest chunk {_b(biggest)}")
    if p.gpu_hours is not None:
        what = "whole workflow" if p.gpu_figure == "whole_workflow_frames_per_s" else "decode + integrate"
        lines.append(f"{what}: {_h(p.gpu_hours)} GPU-hours at {p.gpu_frames_per_s:,.0f} frames/s per GPU "
                     f"({p.gpu_figure})")
    if p.cpu_core_hours is not None:
        lines.append(f"decode + integrate: {_h(p.cpu_core_hours)} CPU core-hours at "
                     f"{p.cpu_frames_per_s_per_core:,.1f} frames/s per core")
    for k, h in enumerate(p.hardware):
        kit = ", ".join(x for x in (f"{h['gpus']} GPU{'s' if h['gpus'] > 1 else ''}" if h["gpus"] else
                                    "no GPU" if h["where"] == "this machine" else "",
                                    f"{h['cores']} CPU cores" if h["cores"] else "") if x)
        rate = (f"{h['frames_per_s']:,.0f} frames/s ({h['rate_of']}: "
                + (f"{p.gpu_frames_per_s:,.0f} per GPU" if h["rate_of"] == "GPUs" else
                   f"{p.cpu_frames_per_s_per_core:,.1f} per core") + ")") if h["frames_per_s"] else "no rate known"
        lines.append(f"{'the run integrates on' if k == 0 else '  and'} {h['where']}"
                     f"{' (' + kit + ')' if kit else ''}: {rate}")
    lines += describe_layout(p.gpu_layout) if p.gpu_layout else []
    for step, o in p.overhead.items():
        lines.append(f"{step}: {_h(o['hours'])} hours on {o['on']} at {o['rate']} (measured: benchmarks/RESULTS.md)")
    lines.append(f"file system: {_b(p.read_bytes)} of frames in {p.input_files:,} files ({p.input_files_source})")
    if p.read_gbps_needed is not None:
        h = p.hardware[0]
        lines.append(f"  the run's {h['rate_of']} at {h['frames_per_s']:,.0f} frames/s read "
                     f"{p.read_gbps_needed:,.1f} GB/s")
    if p.fs_gbps is not None:
        lines.append(f"  the file system reads {p.fs_gbps:g} GB/s (--fs-gbps): at most "
                     f"{p.fs_frames_per_s:,.0f} frames/s")
    elif p.read_gbps_needed is not None:
        lines.append("  give --fs-gbps (what the file system reads, GB/s) to bound the run by it")
    if p.wall_hours is not None:
        lines.append(f"  the run goes at {p.frames_per_s:,.0f} frames/s (bound by the {p.bound_by}): "
                     f"{_h(p.wall_hours)} hours of wall time")
    if p.gpu_hours is None and p.cpu_core_hours is None:
        lines.append("hours: no throughput given (--gpu-frames-per-s, --cpu-frames-per-s-per-core, or "
                     "a line gpu_frames_per_s = N in the --results file)")
    elif p.throughput_source:
        lines.append(f"throughput from {p.throughput_source}")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
