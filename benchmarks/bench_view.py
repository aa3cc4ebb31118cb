"""The viewer at scale: ``xrdct view`` on 4 slices of 1000 x 1000 voxels x 2000 q, view copy in place.

    python benchmarks/bench_view.py [--out DIR] [--requests 50] [--slices 4] [--nx 1000] [--nq 2000]

1. **The store.**  Simulating and reducing 4 x 1571 x 1000 frames takes hours on a few cores,
   so the store is written straight in the run's layout (:func:`xrdct_dask.testing.viewstores.
   write_phantom_store`: ``store.create_store`` + the store's write functions): recon = the
   simulator's phantom phases x their Debye patterns with 1 % Gaussian noise (noise keeps the
   float32 chunks as incompressible as measured ones), G(r) to 20 A in 0.02 A steps, and
   ``reduced/`` with ``--nomega`` (128) angles (the bytes ratio of the full 1571 angles is the
   plan's, step 4).  On a 2-core machine shared with others, writing ~9 GB of noisy float32 per
   slice takes most of an hour: the first ``--full-slices`` (1) slices get all their arrays, and
   their view copy is written by :func:`xrdct_dask.store.viewcopy.write_view_copy` (the run's ``view``
   task) and timed; the other slices get their per-frame arrays and markers, and in their view
   copy the same bytes (what the viewer reads of them).
2. **The page**, served by ``xrdct view``'s server (:func:`xrdct_dask.view.server.start_server`),
   in Debian's chromium driven by playwright where it is installed, median over ``--requests``:
   a new q map (the q slider's value set as its release sets it, until the page has redrawn:
   two animation frames after the server's update arrived), a voxel's pattern and G(r) (a
   mouse click on the map, until the update arrived), and the first load (a new page until its
   first map is drawn).  Without a browser, the server-side time of the same callbacks.
3. **The copy's cost in time**: a real run of a small simulated scan on this machine
   (``xrdct simulate`` + ``xrdct run``, 2 x 64 x 48 frames of the binned detector): the view
   tasks' seconds against all tasks' seconds (``run_summary.task_seconds``).
4. **In bytes**: the copy's bytes on disk against the store's, and the plan's ratio for the full
   scan (1000 x 1571 x 1000, 2000 q, G to 20 A in 0.01 A; ``xrdct plan``).

Prints one line per figure and a JSON record; the store is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xrdct_dask import store  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


def du(path: Path) -> int:
    return sum(os.stat(os.path.join(r, f)).st_size for r, _, fs in os.walk(path) for f in fs)


def build(out: Path, nz: int, nx: int, nq: int, nomega: int, full: int) -> dict:
    """The store of step 1 (the first ``full`` slices with all their arrays, the others' view copy
    a copy of those), the copy's seconds per slice."""
    import zarr

    from xrdct_dask.store.viewcopy import VIEW, write_view_copy
    from xrdct_dask.testing import viewstores

    t0 = time.perf_counter()
    path = viewstores.write_phantom_store(out / "big.zarr", nz=nz, nx=nx, nomega=nomega, nq=nq, rmax=20.0, rstep=0.02,
                                          noise=0.01, flagged=[(0, 5, nx // 3), (0, 40, nx // 2)], view_pixels=512,
                                          phases={"Ni": [2.0346, 1.7620, 1.2459, 1.0625]}, task_memory=4 * 10**9,
                                          fill_view=False, data_slices=full)
    made = time.perf_counter() - t0
    print(f"  arrays written in {made:.0f} s", flush=True)
    copy_s = []
    for z in range(nz):
        t = time.perf_counter()
        if z < full:
            write_view_copy(path, z)
            copy_s.append(time.perf_counter() - t)
            print(f"  view copy of slice {z}: {copy_s[-1]:.1f} s", flush=True)
        else:  # the same bytes in slice z's place (the disk holds `full` slices of the run's arrays)
            g = zarr.open_group(str(path / VIEW), mode="r+")
            for _name, arr in g.arrays():
                if "z" in (arr.metadata.dimension_names or ()) and arr.ndim > 1:
                    arr[z] = arr[z % full]
        store.mark_done(path, "view", (z,))
    return {"store": str(path), "write_s": made, "copy_s_per_slice": copy_s, "full_slices": full}


_READY = ("() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].get_model_by_name('info') && "
          "Bokeh.documents[0].get_model_by_name('info').text.includes('data-requests')")
_Q_MAP = """async (v) => { const doc = Bokeh.documents[0]; const s = doc.get_model_by_name('q');
  const info = doc.get_model_by_name('info'); const before = info.text; const t0 = performance.now();
  s.value = v; s.value_throttled = v;
  await new Promise(res => { const f = () => info.text != before ? res() : setTimeout(f, 1); f(); });
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0; }"""
_POINT = """([x, y]) => { const m = Bokeh.documents[0].get_model_by_name('map');
  const v = Object.values(Bokeh.index)[0].owner.get_one(m); const r = v.canvas_view.el.getBoundingClientRect();
  return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)]; }"""
_INFO = "() => Bokeh.documents[0].get_model_by_name('info').text"


def _server_ms(page) -> float:
    """The callback's own time, as the page's info line says it (``... 24 ms``)."""
    import re

    return float(re.search(r"(\d+) ms", page.evaluate(_INFO)).group(1))


def browser_timings(url: str, path: Path, n: int) -> dict:
    from playwright.sync_api import sync_playwright

    from xrdct_dask.view.data import RunData

    d = RunData(path)
    rng = np.random.default_rng(1)
    out: dict[str, list[float]] = {"q_map_ms": [], "voxel_ms": [], "first_load_ms": [], "server_q_map_ms": [],
                                   "server_voxel_ms": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("XRDCT_CHROMIUM", "/usr/bin/chromium"), args=FLAGS)
        ctx = browser.new_context(viewport={"width": 1250, "height": 1150})
        for k in range(n + 1):  # the first is cold (BokehJS not yet in the cache): reported apart
            page = ctx.new_page()
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_function(_READY, timeout=120000)
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            ms = 1e3 * (time.perf_counter() - t0)
            if k == 0:
                out["cold_first_load_ms"] = ms
            else:
                out["first_load_ms"].append(ms)
            if k < n:
                page.close()
        for _ in range(n):
            qi = int(rng.integers(0, d.nq))
            out["q_map_ms"].append(page.evaluate(_Q_MAP, float(d.q.values[qi])))
            out["server_q_map_ms"].append(_server_ms(page))
        for _ in range(n):
            iy, ix = (int(v) for v in rng.integers(0, d.nx, 2))
            xy = page.evaluate(_POINT, [float(d.x.values[ix]), float(d.y.values[iy])])
            before = page.evaluate(_INFO)
            t0 = time.perf_counter()
            page.mouse.click(*xy)
            try:
                page.wait_for_function(f"() => Bokeh.documents[0].get_model_by_name('info').text != "
                                       f"{json.dumps(before)}", polling=1, timeout=60000)
            except Exception:  # noqa: BLE001 - a click the page never answered: counted, not timed
                out["voxel_missed"] = out.get("voxel_missed", 0) + 1
                continue
            out["voxel_ms"].append(1e3 * (time.perf_counter() - t0))
            out["server_voxel_ms"].append(_server_ms(page))
            page.wait_for_timeout(400)  # clicks apart: never a double tap
        page.screenshot(path=str(path.parent / "bench-view-page.png"))
        browser.close()
    return out


def server_timings(path: Path, n: int) -> dict:
    """The callbacks' own time, without a browser (a Bokeh document built here)."""
    from types import SimpleNamespace

    from bokeh.document import Document

    from xrdct_dask.view.app import make_document

    rng = np.random.default_rng(1)
    out: dict[str, list[float]] = {"server_q_map_ms": [], "server_voxel_ms": [], "server_first_load_ms": []}
    for _ in range(min(n, 10)):
        t0 = time.perf_counter()
        v = make_document(Document(), path, poll_s=0)
        out["server_first_load_ms"].append(1e3 * (time.perf_counter() - t0))
    for _ in range(n):
        t0 = time.perf_counter()
        v._set(qi=int(rng.integers(0, v.data.nq)))
        out["server_q_map_ms"].append(1e3 * (time.perf_counter() - t0))
    for _ in range(n):
        iy, ix = (int(x) for x in rng.integers(0, v.data.nx, 2))
        t0 = time.perf_counter()
        v._tap_map(SimpleNamespace(x=v.data.x.values[ix], y=v.data.y.values[iy]))
        out["server_voxel_ms"].append(1e3 * (time.perf_counter() - t0))
    return out


def run_share(out: Path) -> dict:
    """Step 3: a real run here; the view tasks' share of all task seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    xrdct = [sys.executable, "-m", "xrdct_dask.cli"]
    scan = out / "scan"
    subprocess.run([*xrdct, "simulate", str(scan), "--nz", "2", "--nomega", "64", "--nx", "48"], check=True, env=env,
                   capture_output=True)
    subprocess.run([*xrdct, "run", str(scan / "workflow.yaml"), "--set", "compute.n_workers=2"], check=True, env=env,
                   capture_output=True)
    summary = store.read_attrs(scan / "run.zarr")["run_summary"]
    secs = summary["task_seconds"]
    return {"task_seconds": secs, "view_share": secs.get("view", 0.0) / sum(secs.values()),
            "wall_s": summary["wall_seconds"]}


def plan_share(out: Path) -> float:
    """Step 4: the view copy's share of the bytes a 1000 x 1571 x 1000 run writes (xrdct plan)."""
    from xrdct_dask.config import load_workflow
    from xrdct_dask.runs.plan import plan_workflow
    from xrdct_dask.simulate import make_integrator

    make_integrator("pilatus2m").write(str(out / "p2m.poni"))
    (out / "big.yaml").write_text(
        "inputs: {frames: 'frames/f_{index:010d}.cbf', poni: p2m.poni}\n"
        "scan: {nz: 1000, nomega: 1571, nx: 1000}\nintegrate: {npt_rad: 2000}\n"
        "pdf: {rmin: 0.5, rmax: 20.0, rstep: 0.01}\ncompute: {task_memory: 4GB}\nstore: plan.zarr\n")
    p = plan_workflow(load_workflow(out / "big.yaml"), gpu_frames_per_s=10_000)
    return p.stages["view"].bytes_written / sum(s.bytes_written for s in p.stages.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--nx", type=int, default=1000)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--nomega", type=int, default=128)
    ap.add_argument("--full-slices", type=int, default=1,
                    help="slices written with all their arrays (the others get their view copy); disk and time")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-run", action="store_true", help="leave out step 3 (the small real run)")
    ap.add_argument("--store", type=Path, default=None, help="time the viewer on this store (made by an earlier "
                                                            "--keep run) instead of writing one")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-view-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"free disk: {shutil.disk_usage(out).free / 1e9:.0f} GB in {out}", flush=True)
    rec = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "slices": args.slices, "nx": args.nx,
           "nq": args.nq, "nomega": args.nomega}
    if args.store is None:
        rec |= build(out, args.slices, args.nx, args.nq, args.nomega, args.full_slices)
    else:
        rec["store"] = str(args.store)
    path = Path(rec["store"])
    total, copy = du(path), du(path / "view")
    rec |= {"store_bytes": total, "view_bytes": copy, "view_share_on_disk": copy / total}
    if "write_s" in rec:
        print(f"store written in {rec['write_s']:.0f} s; copy {statistics.median(rec['copy_s_per_slice']):.1f} s "
              f"per slice", flush=True)
    print(f"store: {total / 1e9:.1f} GB on disk, view copy {copy / 1e9:.2f} GB ({100 * copy / total:.1f} %)",
          flush=True)
    rec["plan_view_share"] = plan_share(out)
    print(f"plan of 1000 x 1571 x 1000: view copy {100 * rec['plan_view_share']:.2f} % of the bytes written",
          flush=True)
    from xrdct_dask.view.server import serve_in_thread

    server, url = serve_in_thread(path, poll_s=0)
    try:
        from tests.conftest import browser_missing

        why = browser_missing()
    except Exception as err:  # noqa: BLE001
        why = str(err)
    rec |= server_timings(path, args.requests)
    if why is None:
        rec |= browser_timings(url, path, args.requests)
    else:
        print(f"no browser ({why}): server-side times only", flush=True)
    for key in ("q_map_ms", "voxel_ms", "first_load_ms", "server_q_map_ms", "server_voxel_ms", "server_first_load_ms"):
        if rec.get(key):
            print(f"{key}: median {statistics.median(rec[key]):.0f} ms over {len(rec[key])} "
                  f"(max {max(rec[key]):.0f})", flush=True)
    if "cold_first_load_ms" in rec:
        print(f"cold first load (BokehJS not cached): {rec['cold_first_load_ms']:.0f} ms")
    server.io_loop.add_callback(server.io_loop.stop)
    if not args.keep and args.store is None:
        shutil.rmtree(path, ignore_errors=True)
    if not args.skip_run:
        rec["run"] = run_share(out)
        print(f"small run here (2 x 64 x 48): view tasks {100 * rec['run']['view_share']:.1f} % of the task seconds "
              f"({rec['run']['task_seconds']})", flush=True)
    (out / "bench_view.json").write_text(json.dumps(rec, indent=1, default=float))
    print(f"record: {out / 'bench_view.json'}")


if __name__ == "__main__":
    main()
