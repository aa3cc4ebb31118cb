"""Cost of the self-absorption correction (``sinogram.absorption``) against the FBP it wraps.

One slice of the simulator's phantom (``--nx`` voxels across, ``--nomega`` angles, ``--nq`` q bins
spread over 2theta = 1..30 degrees, attenuation up to ``--mu`` per pixel) is reconstructed by FBP
alone and by :func:`xrdct_dask.sinogram.absorption.absorption_reconstruct` with ``--iterations`` updates,
on the CPU and, where cupy sees a GPU, on the GPU (CUDA-synchronised).  Prints the medians of
``--repeat`` runs and the ratio; ``--json`` writes them.

Usage::

    python benchmarks/bench_absorption.py                              # 128 px, 200 angles, 64 q, CPU + GPU
    python benchmarks/bench_absorption.py --nx 400 --nomega 600 --nq 256 --no-cpu --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xrdct_dask.backend import cp, gpu_available  # noqa: E402
from xrdct_dask.recon import fbp, project  # noqa: E402
from xrdct_dask.simulate import make_phantom, omega_angles_deg
from xrdct_dask.sinogram.absorption import absorption_reconstruct  # noqa: E402


def _timed(fn, xp, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        if xp is not np:
            cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        fn()
        if xp is not np:
            cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(xp, nx: int, nomega: int, nq: int, mu_max: float, iterations: int, repeat: int) -> dict:
    maps = make_phantom(1, nx)[:, 0]
    mu = np.tensordot(np.array([1.0, 0.8, 0.5, 0.3]) * mu_max, maps, axes=1).astype(np.float32)
    omega = omega_angles_deg(nomega)
    th = np.deg2rad(omega)
    sino = xp.asarray(np.repeat(project(maps.sum(0)[..., None].astype(np.float32), np.cos(th), np.sin(th), nx // 2,
                                        nx), nq, axis=-1))
    two_theta = np.linspace(1.0, 30.0, nq)
    rec = lambda s: fbp(s, omega)  # noqa: E731
    rec(sino)  # compile / warm up
    t_fbp = _timed(lambda: rec(sino), xp, repeat)
    t_abs = _timed(lambda: absorption_reconstruct(sino, omega, xp.asarray(mu), two_theta, rec, center=nx // 2,
                                                  iterations=iterations), xp, repeat)
    return {"engine": "cupy" if xp is not np else "numpy", "nx": nx, "nomega": nomega, "nq": nq,
            "iterations": iterations, "fbp_s": t_fbp, "absorption_s": t_abs, "ratio": t_abs / t_fbp}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nx", type=int, default=128)
    ap.add_argument("--nomega", type=int, default=200)
    ap.add_argument("--nq", type=int, default=64)
    ap.add_argument("--mu", type=float, default=0.02, help="attenuation of the densest phase, 1/pixel")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    engines = ([] if args.no_cpu else [np]) + ([cp] if gpu_available() else [])
    out = [bench(xp, args.nx, args.nomega, args.nq, args.mu, args.iterations, args.repeat) for xp in engines]
    for r in out:
        print(f"{r['engine']}: {r['nx']} px, {r['nomega']} angles, {r['nq']} q: FBP {r['fbp_s']:.3f} s, "
              f"absorption ({r['iterations']} iterations) {r['absorption_s']:.3f} s = {r['ratio']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
