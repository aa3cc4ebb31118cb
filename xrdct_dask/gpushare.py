"""This process's share of its GPU's memory, as the local cluster gave it.

Several processes share one GPU in a local run: the GPU workers (an integration engine each) and
the CPU-marked workers that run the reconstruction and G(r) on it.  One rule
(:func:`xrdct_dask.cluster.gpulayout.gpu_layout`) sizes them all together; the local cluster then
hands each worker process its share in the environment variable :data:`ENV` (JSON of a
:class:`GpuShare`), read here where it is used: the engine's frames per batch, the bytes one
reconstruction or PDF task may hold on the device, and the fence on cupy's memory pool.

A process without it (a laptop, a batch job of a cluster profile, the client) has no share: the
engines and tasks keep their defaults.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from xrdct_dask.backend import cp

ENV = "XRDCT_GPU_SHARE"


@dataclass(frozen=True)
class GpuShare:
    """One worker process's share of its GPU (bytes).

    ``pool_bytes``: the most cupy's memory pool of the process may hold (an allocation beyond it
    fails in this process, never in another one); ``batch_frames``: frames per batch of its
    integration engine (GPU workers; 0: the engine's default); ``task_bytes``: device bytes one
    reconstruction or PDF task may hold (the workers that run them on the GPU; 0: no bound)."""

    pool_bytes: int
    batch_frames: int = 0
    task_bytes: int = 0

    def env(self) -> dict[str, str]:
        """The environment entry that hands this share to a worker process."""
        return {ENV: json.dumps(asdict(self))}


def process_share(environ=None) -> GpuShare | None:
    """This process's :class:`GpuShare` (from ``environ``, default ``os.environ``), or None.

    Raises ValueError naming :data:`ENV` when it is set but not a share."""
    text = (os.environ if environ is None else environ).get(ENV)
    if not text:
        return None
    try:
        share = GpuShare(**json.loads(text))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{ENV}: not a GPU share ({err}): {text!r}") from None
    if min(share.pool_bytes, share.batch_frames, share.task_bytes) < 0:
        raise ValueError(f"{ENV}: negative sizes in {text!r}")
    return share


def device_share(xp) -> GpuShare | None:
    """The share of this process when ``xp`` is cupy (its memory pool fenced to it), else None:
    what a task that may run on either engine asks before sizing its device blocks."""
    if cp is None or xp is not cp:
        return None
    share = process_share()
    fence_pool(share)
    return share


def fence_pool(share: GpuShare | None) -> None:
    """Hold cupy's default memory pool of this process to ``share.pool_bytes`` (no share: as it is)."""
    if share is not None and share.pool_bytes and cp is not None:
        pool = cp.get_default_memory_pool()
        if pool.get_limit() != share.pool_bytes:
            pool.set_limit(size=share.pool_bytes)
