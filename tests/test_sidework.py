"""Side work on the workers (issue 18, item 5): the store template's per-frame arrays and
reprocess's chunk links are tasks on the cluster, not a loop on the client, and give exactly
what the client-side fallback (no cluster) gives.

The tasks are seen where they ran: dask's task stream names each piece's key
(``xrdct-template-slab-*``, ``xrdct-link-*``) and the worker that ran it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, get_task_stream

from xrdct_dask import store
from xrdct_dask.cluster.sidework import map_pieces, slabs
from xrdct_dask.config import load_workflow
from xrdct_dask.runs import links
from xrdct_dask.runs.open import open_run


def test_slabs_cover_the_range_once():
    for n, k in ((10, 3), (7, 7), (5, 20), (1, 1), (1000, 64)):
        s = slabs(n, k)
        assert len(s) <= k and s[0][0] == 0 and s[-1][1] == n and all(a < b for a, b in s)
        assert all(b0 == a1 for (_, b0), (a1, _) in zip(s[:-1], s[1:]))


def _pid(x):
    return os.getpid(), x * x


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_map_pieces_runs_on_the_workers_in_order(cluster):
    with Client(cluster) as client, get_task_stream(client) as ts:
        out = map_pieces(client, _pid, range(6), "xrdct-test-piece")
    assert [v for _, v in out] == [k * k for k in range(6)]
    assert os.getpid() not in {p for p, _ in out}  # worker processes, not this one
    keys = [t["key"] for t in ts.data]
    assert sorted(int(str(k).split("-")[3]) for k in keys if str(k).startswith("xrdct-test-piece-")) == list(range(6))
    assert map_pieces(None, _pid, range(3), "here") == [(os.getpid(), k * k) for k in range(3)]


def test_map_pieces_works_through_a_client_that_is_not_the_default(cluster):
    """A run's client is never the process's default (cluster/local.py ``_client``): map_pieces
    must go through that client alone, with no default client to fall back on (before, dask's
    ``as_completed()`` asked for the default one: "No clients found", and every run with a scan
    file failed)."""
    from distributed import default_client

    with Client(cluster, set_as_default=False) as client:
        with pytest.raises(ValueError, match="No clients found"):
            default_client()  # there is none to fall back on
        out = map_pieces(client, _pid, range(4), "xrdct-test-nondefault")
    assert [v for _, v in out] == [k * k for k in range(4)]


def _started_at(k):
    import time

    t = time.time()
    time.sleep(0.3)
    return t


def test_map_pieces_draws_its_pieces_only_as_tasks_finish(cluster):
    """A generator of pieces is read ``in_flight`` ahead, no further: piece k is drawn only after
    some earlier piece has finished (the client never holds more than ``in_flight`` pieces)."""
    import time

    drawn = []

    def pieces():
        for k in range(6):
            drawn.append(time.time())
            yield k

    with Client(cluster) as client:
        started = map_pieces(client, _started_at, pieces(), "xrdct-test-lazy", in_flight=2)
    assert len(started) == 6 and len(drawn) == 6
    finished = sorted(t + 0.3 for t in started)
    for k in range(2, 6):  # the k-th piece waits for the (k - 1)-th finish
        assert drawn[k] >= finished[k - 2] - 0.05, (k, drawn, finished)


def _ran_on_workers(ts, prefix: str, cluster) -> set[str]:
    workers = set(cluster.scheduler_info["workers"])
    ran = {t["worker"] for t in ts.data if str(t["key"]).startswith(prefix)}
    assert ran and ran <= workers, f"no {prefix} task ran on a worker"
    return ran


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("side") / "scan", nz=3, nomega=6, nx=5, seed=3)


@pytest.mark.parametrize("placed", ["scan file", pytest.param("scan arithmetic", marks=pytest.mark.slow)])
def test_template_slabs_on_workers_equal_the_client_side_ones(scan, cluster, tmp_path, monkeypatch, placed):
    """The monitor and frame index of every scan point, written slab by slab on two worker
    processes, equal the ones written here (scan file placing frames, or the snake arithmetic
    computed by each task for its own slices); the store is renamed into place whole."""
    import xrdct_dask.runs.scanlayout as scanlayout

    monkeypatch.setattr(scanlayout, "SLAB_POINTS", 40)  # 30 points a slice: a slab per slice, 3 tasks
    over = {} if placed == "scan file" else {"inputs.scan_file": None}
    here = open_run(load_workflow(scan.workflow, {**over, "store.path": str(tmp_path / "here.zarr")}))
    with Client(cluster) as client, get_task_stream(client) as ts:
        there = open_run(load_workflow(scan.workflow, {**over, "store.path": str(tmp_path / "there.zarr")}),
                         client=lambda: client)
    assert len([t for t in ts.data if str(t["key"]).startswith("xrdct-template-slab-")]) == 3
    _ran_on_workers(ts, "xrdct-template-slab-", cluster)
    for name in ("monitor", "frame_index", "scan_flag"):
        a = store.open_array(here.store_path, f"reduced/{name}", "r")[...]
        b = store.open_array(there.store_path, f"reduced/{name}", "r")[...]
        assert np.array_equal(a, b, equal_nan=True), name
    index = store.open_array(there.store_path, "reduced/frame_index", "r")[...]
    assert sorted(index.ravel()) == list(range(3 * 6 * 5))  # every frame placed once
    assert store.root_attrs(there.store_path)["template_complete"]
    assert not store.leftovers(there.store_path)


def _chunk_files(root: Path, group: str) -> dict[str, int]:
    out = {}
    for dirpath, _, files in os.walk(root / group):
        for f in files:
            p = Path(dirpath) / f
            if "/c/" in str(p) or Path(dirpath).name == "c":
                out[str(p.relative_to(root))] = p.stat().st_ino
    return out


def test_links_made_on_workers_share_the_parents_chunk_files(scan, cluster, tmp_path, monkeypatch):
    """Every chunk file of the parent's arrays appears in the new store as a hard link to the same
    inode, made by tasks on the workers; the client-side fallback makes the same set."""
    monkeypatch.setattr(links, "LINK_PIECE_DIRS", 1)  # a piece per slice
    import shutil

    parent = open_run(load_workflow(scan.workflow, {"store.path": str(tmp_path / "parent.zarr")})).store_path
    kids = {k: tmp_path / f"{k}.zarr" for k in ("here", "there")}
    for kid in kids.values():  # the same arrays, no chunk written: what reprocess's new store starts as
        shutil.copytree(parent, kid, ignore=shutil.ignore_patterns("c"))
    names = ["monitor", "frame_index"]
    n_here = links.link_group(parent, kids["here"], store.REDUCED, names)
    with Client(cluster) as client, get_task_stream(client) as ts:
        n_there = links.link_group(parent, kids["there"], store.REDUCED, names, client=client)
    _ran_on_workers(ts, "xrdct-link-reduced-", cluster)
    assert len([t for t in ts.data if str(t["key"]).startswith("xrdct-link-reduced-")]) == 2 * 3  # arrays x slices
    src = {k: v for k, v in _chunk_files(parent, store.REDUCED).items() if k.split("/")[1] in names}
    assert n_here == n_there == len(src) > 0
    for kid in kids.values():
        got = {k: v for k, v in _chunk_files(kid, store.REDUCED).items() if k.split("/")[1] in names}
        assert got == src  # same paths, same inodes: shared, not copied
