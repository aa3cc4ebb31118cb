"""CPU byte-offset decode and decode + integrate per core (issue 29 item 4), against fabio and
fabio + pyFAI measured in the same run, on the real Pilatus 2M frame and on simulated ones.

Frame sets: the real frame ``pilatus2m_l-cyst_00001.cbf`` of ../shared/data ($XRDCT_SHARED_DATA;
left out, saying so, where absent) and ``--sim-frames`` full-size Pilatus 2M frames made by the
project's simulator (bright rings: runs of 16-bit escapes).  One thread for everything (OMP,
BLAS, numba = 1); the files sit in the page cache.

1. decode only, one frame per call: fabio's Cython decoder ``fabio.ext.byte_offset.dec_cbf``
   (the anchor) against ``io.decode_payload`` making a new array (as fabio does) and writing into
   a reused one.  Interleaved: each repeat times every decoder on every frame of the set.
2. files to 1D patterns per core: ``fabio.open`` + pyFAI ``integrate1d_ng`` (CSR, full pixel
   splitting, Cython; the anchor) one frame per call, against ``read_cbf_payload`` + the numpy
   engine's fused decode/integrate (``Integrator.integrate_payloads``, batches of ``--batch``).
   ``--npt`` q bins, Poisson variance, solid angle, polarization 0.99, a static mask (the
   simulator's; for the real frame its -1/-2 pixels).  The real frame's geometry is not known:
   it is integrated with the simulator's Pilatus 2M geometry (what costs time is the matrix).

Every figure: the median over the repeats and its spread (10th-90th percentile), wall clock and
thread CPU time (CPU time leaves out time spent descheduled on a shared machine); ratios are
taken between medians of the same run.  Only public functions are called, so the same script
measures an older checkout (``PYTHONPATH=<old checkout> python benchmarks/bench_decode.py``).

    python benchmarks/bench_decode.py [--sim-frames 16] [--decode-repeats 100] [--repeats 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# one core per measurement: pyFAI's OpenMP and numpy's BLAS must not borrow the other core
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XRDCT_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL_CBF = "pilatus2m_l-cyst_00001.cbf"


def timed(fn) -> tuple[float, float]:
    """(wall s, thread CPU s) of one call."""
    w, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w, time.thread_time() - c


def spread(samples) -> dict:
    """Median and 10th / 90th percentiles of ``samples``."""
    a = np.asarray(samples, dtype=float)
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)), "p90": float(np.percentile(a, 90)),
            "n": int(a.size)}


def fmt(s: dict, scale: float = 1.0, unit: str = "") -> str:
    return f"{s['median'] * scale:8.3f} {unit} [{s['p10'] * scale:.3f}-{s['p90'] * scale:.3f}]"


def frame_stats(payloads) -> str:
    nbytes = sum(len(p.data) for p in payloads)
    npix = sum(p.size for p in payloads)
    esc = sum(int(np.count_nonzero(np.frombuffer(p.data, np.uint8) == 0x80)) for p in payloads)
    return f"{len(payloads)} frame(s), {nbytes / len(payloads) / 1e6:.2f} MB, {nbytes / npix:.3f} bytes/pixel, " \
           f"escapes {esc / npix:.2%} of pixels"


def bench_decode(payloads, repeats: int) -> dict:
    """Per-frame decode times (s) of fabio's dec_cbf and ours, interleaved over the frames."""
    from fabio.ext.byte_offset import dec_cbf

    from xrdct_dask.io import decode_payload

    raws = [bytes(p.data) for p in payloads]
    outs = [np.empty(p.shape, np.int32) for p in payloads]
    for p, raw, out in zip(payloads, raws, outs):  # compile, and check the outputs are the same pixels
        np.testing.assert_array_equal(decode_payload(p, out).ravel(), np.asarray(dec_cbf(raw, p.size)))
    calls = {"fabio dec_cbf (anchor)": lambda p, raw, out: dec_cbf(raw, p.size),
             "ours decode_payload, new array": lambda p, raw, out: decode_payload(p),
             "ours decode_payload, into a buffer": lambda p, raw, out: decode_payload(p, out)}
    wall = {k: [] for k in calls}
    cpu = {k: [] for k in calls}
    for _ in range(repeats):
        for p, raw, out in zip(payloads, raws, outs):
            for k, fn in calls.items():
                w, c = timed(lambda fn=fn, p=p, raw=raw, out=out: fn(p, raw, out))
                wall[k].append(w)
                cpu[k].append(c)
    return {k: {"wall_s": spread(wall[k]), "cpu_s": spread(cpu[k])} for k in calls}


def bench_integrate(paths, ai, mask, npt: int, batch: int, anchor_frames: int, repeats: int) -> dict:
    """frames/s per core from files: fabio.open + pyFAI integrate1d_ng against read_cbf_payload +
    the numpy engine's fused decode/integrate; also the engine on frames already decoded."""
    import fabio

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io import decode_payload, read_cbf_payload

    shape = (1679, 1475)
    kw = {"unit": "q_nm^-1", "method": ("full", "csr", "cython"), "error_model": "poisson",
          "polarization_factor": 0.99, "mask": mask}
    ref = ai.integrate1d_ng(fabio.open(str(paths[0])).data, npt, **kw)  # builds pyFAI's CSR matrix (not timed)
    integ = Integrator(ai, shape, npt, mask=mask, polarization_factor=0.99, engine="numpy")
    res, _ = integ.integrate_payloads([read_cbf_payload(paths[0])])  # numba loads, caches warm (not timed)
    good = ref.sum_normalization > 0
    rel = float(np.max(np.abs(res.intensity[0][good] - ref.intensity[good]) / np.abs(ref.intensity[good]).clip(1e-30)))
    ours_paths = [paths[k % len(paths)] for k in range(batch)]
    anchor_paths = [paths[k % len(paths)] for k in range(anchor_frames)]
    frames = np.stack([decode_payload(read_cbf_payload(p)) for p in ours_paths])

    def anchor():
        for p in anchor_paths:
            ai.integrate1d_ng(fabio.open(str(p)).data, npt, **kw)

    runs = {"anchor fabio.open + pyFAI integrate1d_ng": (anchor, len(anchor_paths)),
            "ours read_cbf_payload + fused decode/integrate": (
                lambda: integ.integrate_payloads([read_cbf_payload(p) for p in ours_paths]), batch),
            "ours integrate only (frames already decoded)": (lambda: integ.integrate(frames), batch)}
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(repeats):
        for k, (fn, n) in runs.items():
            w, c = timed(fn)
            wall[k].append(n / w)
            cpu[k].append(n / c)
    out = {k: {"wall_fps": spread(wall[k]), "cpu_fps": spread(cpu[k])} for k in runs}
    out["max_rel_diff_vs_pyfai"] = rel
    out["nnz"] = int(integ.plan.nnz)
    return out


def report_decode(name: str, res: dict) -> None:
    anchor = res["fabio dec_cbf (anchor)"]
    print(f"\n[{name}] decode one frame, ms: median [p10-p90]; time / fabio's (same run)")
    for k, r in res.items():
        rw = r["wall_s"]["median"] / anchor["wall_s"]["median"]
        rc = r["cpu_s"]["median"] / anchor["cpu_s"]["median"]
        print(f"  {k:36s} wall {fmt(r['wall_s'], 1e3)}  cpu {fmt(r['cpu_s'], 1e3)}   x{rw:.2f} wall, x{rc:.2f} cpu")


def report_integrate(name: str, res: dict) -> None:
    anchor = res["anchor fabio.open + pyFAI integrate1d_ng"]
    print(f"\n[{name}] files to patterns per core, frames/s: median [p10-p90]; rate / anchor's (same run); "
          f"{res['nnz'] / 1e6:.2f} M nnz, max rel. diff vs pyFAI {res['max_rel_diff_vs_pyfai']:.1e}")
    for k, r in res.items():
        if not isinstance(r, dict):
            continue
        rw = r["wall_fps"]["median"] / anchor["wall_fps"]["median"]
        rc = r["cpu_fps"]["median"] / anchor["cpu_fps"]["median"]
        print(f"  {k:48s} wall {fmt(r['wall_fps'])}  cpu {fmt(r['cpu_fps'])}   x{rw:.2f} wall, x{rc:.2f} cpu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim-frames", type=int, default=16, help="simulated full-size Pilatus 2M frames")
    ap.add_argument("--decode-repeats", type=int, default=100, help="rounds over each frame set, decode only")
    ap.add_argument("--repeats", type=int, default=12, help="rounds of the files-to-patterns figures")
    ap.add_argument("--batch", type=int, default=32, help="frames per integrate_payloads call")
    ap.add_argument("--anchor-frames", type=int, default=8, help="frames per timed anchor round")
    ap.add_argument("--npt", type=int, default=2000)
    ap.add_argument("--skip-integrate", action="store_true", help="decode figures only")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import fabio
    import numba
    import pyFAI

    from xrdct_dask.io import read_cbf_payload
    try:  # the simulator's home since the layered package; testing.synthetic before (older checkouts)
        from xrdct_dask.simulate import make_integrator, simulate_scan
    except ImportError:
        from xrdct_dask.simulate import make_integrator, simulate_scan

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_decode_"))
    nx = 8
    scan = simulate_scan(work / "scan", nz=1, nomega=max(1, -(-args.sim_frames // nx)), nx=nx, detector="pilatus2m",
                         npt_rad=args.npt, threads=os.cpu_count() or 1)
    sim_paths = [scan.frame_path(i) for i in range(args.sim_frames)]
    sets = {"simulated": (sim_paths, pyFAI.load(str(scan.poni)), fabio.open(str(scan.mask)).data != 0)}
    real = SHARED / REAL_CBF
    if real.is_file():
        sets = {"real l-cyst": ([real], make_integrator("pilatus2m"), fabio.open(str(real)).data < 0), **sets}
    else:
        print(f"real frame not found at {real} (set XRDCT_SHARED_DATA): simulated frames only")

    import xrdct_dask

    try:  # the commit of the package measured (PYTHONPATH may point at another checkout)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(xrdct_dask.__file__).parent,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"

    res = {"device": platform.processor() or platform.machine(), "cores": os.cpu_count(), "commit": commit,
           "xrdct_dask": str(Path(xrdct_dask.__file__).parent), "numba": numba.__version__,
           "fabio": fabio.version, "pyFAI": pyFAI.version, "npt_rad": args.npt, "sets": {}}
    print(f"xrdct_dask from {res['xrdct_dask']} (commit {commit}), numba {numba.__version__}, fabio {fabio.version}, "
          f"pyFAI {pyFAI.version}; one thread")
    for name, (paths, ai, mask) in sets.items():
        payloads = [read_cbf_payload(p) for p in paths]
        print(f"\n== {name}: {frame_stats(payloads)}")
        r = {"frames": frame_stats(payloads), "decode": bench_decode(payloads, args.decode_repeats)}
        report_decode(name, r["decode"])
        if not args.skip_integrate:
            r["integrate"] = bench_integrate(paths, ai, mask, args.npt, args.batch, args.anchor_frames, args.repeats)
            report_integrate(name, r["integrate"])
        res["sets"][name] = r
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
