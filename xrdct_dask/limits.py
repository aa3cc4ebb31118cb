"""Sizes checked against this machine before anything of their size is allocated.

A workflow key can ask for more than a machine holds (``--set scan.nz=1000000000``, a dataset
declaring 100000 x 100000 frames, ``compute.n_workers=100000``): the run must refuse it in one
line naming the key, not die of a MemoryError after minutes or hang starting workers.  The
figures here are upper estimates of what the client and one task hold per unit of each size;
``xrdct plan`` describes any scan on paper and does not call them.
"""

from __future__ import annotations

import os

from distributed.system import MEMORY_LIMIT

from xrdct_dask.config import Workflow, WorkflowError

FRAMES_PER_BATCH = 32  # frames an engine call holds (the GPU's 128 are on the device, counted by the plan)
BYTES_PER_PIXEL = 200 + FRAMES_PER_BATCH * 4  # pyFAI's pixel corners building the matrix; a batch decoded (int32)
BYTES_PER_POINT = 64  # a slice's frame index, monitor, flags and the grid arithmetic, per scan point
BYTES_PER_BIN = 64 + FRAMES_PER_BATCH * 40  # pyFAI's bin arrays; a batch's five float64 sums per bin
WORKER_BYTES = 200 << 20  # the least a worker process takes (interpreter, numpy, dask)
THREADS_PER_CORE = 4  # local threads allowed per core (reader threads and the like are separate)


def machine_memory() -> int:
    """Bytes of memory this process may use (the machine's, or its cgroup's limit: dask's figure)."""
    return int(MEMORY_LIMIT)


def _need(nz: int, nomega: int, nx: int, npt: int, npix: int, omega_chunk: int) -> int:
    """Bytes preparing and running a scan of these sizes holds at once on this machine (client and
    one task), from above: axes and done-markers per slice, a slice's points, the bins and a
    task's patterns, the pixels of a batch of frames and of pyFAI's matrix building."""
    blocks = -(-nomega // omega_chunk)
    return (8 * nz * (blocks + 16) + BYTES_PER_POINT * nomega * nx
            + npt * (BYTES_PER_BIN + 8 * min(omega_chunk, nomega) * nx) + BYTES_PER_PIXEL * npix)


def run_sizes(wf: Workflow, frame_shape: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """``(bytes needed, {workflow key: bytes needed were that size 1})``: the estimate of
    :func:`_need` for ``wf``, and how far each size alone drives it (the key to blame is the one
    whose reduction saves the most)."""
    s, npix = wf.scan, int(frame_shape[0]) * int(frame_shape[1])
    sizes = {"scan.nz": s.nz, "scan.nomega": s.nomega, "scan.nx": s.nx, "integrate.npt_rad": wf.integrate.npt_rad,
             "inputs.frames": npix}
    names = dict(zip(sizes, ("nz", "nomega", "nx", "npt", "npix")))
    args = {names[k]: v for k, v in sizes.items()}
    need = _need(**args, omega_chunk=wf.store.omega_chunk)
    without = {k: _need(**{**args, names[k]: 1}, omega_chunk=wf.store.omega_chunk) for k in sizes}
    return need, without


def check_run_sizes(wf: Workflow, frame_shape: tuple[int, int], memory: int | None = None) -> None:
    """Refuse (:class:`WorkflowError`, one line naming the key) a run whose sizes need more memory
    than this machine has (``memory`` bytes, default :func:`machine_memory`), or more radial bins
    than the frames have pixels; before anything of those sizes is allocated."""
    memory = machine_memory() if memory is None else memory
    npix = int(frame_shape[0]) * int(frame_shape[1])
    if wf.integrate.npt_rad > npix:
        raise WorkflowError(f"integrate.npt_rad: {wf.integrate.npt_rad:,} radial bins for frames of {npix:,} pixels: "
                            "at most one bin per pixel")
    need, without = run_sizes(wf, frame_shape)
    if need > memory:
        key = min(without, key=without.get)
        s = wf.scan
        what = {"scan.nz": f"{s.nz:,} slices", "scan.nomega": f"{s.nomega:,} angles", "scan.nx": f"{s.nx:,} x steps",
                "integrate.npt_rad": f"{wf.integrate.npt_rad:,} radial bins",
                "inputs.frames": f"frames of {frame_shape[0]:,} x {frame_shape[1]:,} pixels"}[key]
        raise WorkflowError(f"{key}: {what}: preparing and running this scan needs about {need / 1e9:,.1f} GB of "
                            f"memory; this machine has {memory / 1e9:,.1f} GB (xrdct plan describes such a scan "
                            "without running it)")


def check_local_workers(wf: Workflow, memory: int | None = None, cores: int | None = None) -> None:
    """Refuse a LocalCluster of more worker threads than :data:`THREADS_PER_CORE` per core, or of
    more worker processes than the memory holds (:data:`WORKER_BYTES` each): starting 100,000
    workers on a laptop hangs it."""
    c = wf.compute
    cores = cores or os.cpu_count() or 1
    memory = machine_memory() if memory is None else memory
    n = c.n_workers or max(1, cores // c.threads_per_worker)
    key = "compute.n_workers" if c.n_workers else "compute.threads_per_worker"
    if n * c.threads_per_worker > THREADS_PER_CORE * cores:
        raise WorkflowError(f"{key}: {n:,} worker processes x {c.threads_per_worker:,} threads on a machine of "
                            f"{cores} cores: at most {THREADS_PER_CORE * cores} threads ({THREADS_PER_CORE} per core)")
    if n * WORKER_BYTES > memory:
        raise WorkflowError(f"compute.n_workers: {n:,} worker processes need about {n * WORKER_BYTES / 1e9:,.1f} GB; "
                            f"this machine has {memory / 1e9:,.1f} GB")
