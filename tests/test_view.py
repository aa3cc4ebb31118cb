"""The viewer (xrdct_dask.view), without a browser.

The stores are written straight in the run's layout from the simulator's ground truth
(:mod:`xrdct_dask.testing.viewstores`: phase maps x Debye patterns, their projections, G(r) per
phase; conftest's ``phantom``), so every value the viewer shows has a known source.  The view copy
it reads (:mod:`xrdct_dask.store.viewcopy`) is checked in tests/test_store.py.  The page is a real
Bokeh document whose callbacks are driven here as a browser would drive them; the server is checked
over HTTP (tests/test_view_browser.py drives a real Chromium).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from xrdct_dask import store
from xrdct_dask.simulate import make_phantom
from xrdct_dask.view.data import RunData, ViewError, d_to_radial, radial_to_d, robust_limits

from .conftest import NI_D_A
from .conftest import PHANTOM_NX as NX

FE_D_A = [2.0270, 1.4333, 1.1703]  # bcc Fe a = 2.8665 A: (110), (200), (211)


def ni_voxel(z: int = 0, nz: int = 2) -> tuple[int, int]:
    """The voxel nearest the centre of the phantom's Ni disk (phase 0)."""
    ni = make_phantom(nz, NX)[0, z]
    ys, xs = np.nonzero(ni)
    return int(round(ys.mean())), int(round(xs.mean()))


def test_robust_limits_ignore_hot_voxels():
    """Percentile limits: 1 % hot voxels (1e6 over a map of ~1) never set the colour scale."""
    img = np.random.default_rng(0).uniform(0, 1, (100, 100))
    img.flat[::100] = 1e6
    img[0, :3] = np.nan
    lo, hi = robust_limits(img, 2, 98)
    assert 0 <= lo < 0.05 and 0.95 < hi <= 1.0
    assert robust_limits(np.full((3, 3), np.nan)) == (0.0, 1.0)
    lo, hi = robust_limits(np.ones((4, 4)))
    assert lo < 1 < hi


def test_d_spacings_on_the_radial_axis():
    """q = 2 pi / d (1/A; 10x in 1/nm); 2theta = 2 asin(lambda / 2d); radial_to_d inverts both."""
    q = d_to_radial([2.0346], "q_nm^-1", 0.1378)
    assert q[0] == pytest.approx(30.882, abs=1e-3)
    assert d_to_radial([2.0346], "q_A^-1", 0.1378)[0] == pytest.approx(3.0882, abs=1e-4)
    tth = d_to_radial([2.0346], "2th_deg", 0.1378)
    assert tth[0] == pytest.approx(np.degrees(2 * np.arcsin(0.1378 / (2 * 2.0346))), rel=1e-9)
    for unit, x in (("q_nm^-1", q), ("2th_deg", tth)):
        assert radial_to_d(x, unit, 0.1378)[0] == pytest.approx(2.0346, rel=1e-9)


def _viewer(path, **kw):
    from bokeh.document import Document

    from xrdct_dask.view.app import make_document

    return make_document(Document(), path, poll_s=0, **kw)


def _strongest_q(d: RunData, pattern: np.ndarray, n: int = 3) -> np.ndarray:
    from xrdct_dask.view.summary import strongest_peaks

    return d.q.values[strongest_peaks(pattern, n)]


def _tap(viewer, iy, ix):
    d = viewer.data
    viewer._tap_map(SimpleNamespace(x=d.x.values[ix], y=d.y.values[iy]))


def test_page_click_on_ni_shows_its_peaks_and_files(phantom):
    """A click on the Ni disk shows a pattern whose strongest peaks are Ni's (111), (200) lines,
    none of Fe's; the phase lines are at the workflow's d; the .xy / .gr files hold the voxel's
    exact pattern and G; the PNG is a PNG; a q slider move redraws the map at that q."""
    v = _viewer(phantom)
    d = v.data
    iy, ix = ni_voxel()
    _tap(v, iy, ix)
    snap = v.snapshot()
    assert snap["voxel"] == (iy, ix)
    peaks_d = 20 * np.pi / _strongest_q(d, snap["voxel_pattern"])
    assert min(abs(peaks_d - NI_D_A[0])) < 0.02 and min(abs(peaks_d - NI_D_A[1])) < 0.02, peaks_d
    assert min(abs(peaks_d - FE_D_A[1])) > 0.05, peaks_d
    np.testing.assert_allclose(d.phase_lines()["Ni"], 20 * np.pi / np.asarray(NI_D_A))
    name, mime, payload = v._xy()
    xy = np.loadtxt(payload.decode().splitlines())
    np.testing.assert_allclose(xy[:, 0], d.q.values, rtol=1e-5)
    np.testing.assert_allclose(xy[:, 1], store.open_array(phantom, "recon/intensity", "r")[0, iy, ix], rtol=1e-7)
    assert name.endswith(f"_z0_y{iy}_x{ix}.xy")
    text = v._gr()[2].decode()
    gr = np.loadtxt(text.split("#### start data")[1].splitlines()[2:])
    np.testing.assert_allclose(gr[:, 1], store.open_array(phantom, "pdf/G", "r")[0, iy, ix], rtol=1e-7)
    v._save_png()
    png = __import__("base64").b64decode(v.download.data["b64"][0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and v.download.data["name"][0].endswith(".png")
    # the q slider: the map at the new q (the copy's block means), the line on the patterns moved
    qi = 120
    v.w_q.value = float(d.q.values[qi])
    v._set(qi=v._q_index(v.w_q.value))
    assert v.qi == qi and v.q_line.location == pytest.approx(d.q.values[qi])
    np.testing.assert_allclose(v.snapshot()["map"], d.q_map(0, qi))
    assert "view copy: 3 x 3 voxel blocks" in v.what and v.colour_bar.title == "intensity (counts/voxel)"


def test_page_maps_kinds_and_limits(phantom):
    """Each map kind draws what it says with its unit on the colour bar: a q range sum, G at r
    (centred on 0, diverging colours), a per-voxel array; colour limits are the percentiles."""
    v = _viewer(phantom)
    v._set(kind="intensity summed over a q range", q_range=(50, 80))
    np.testing.assert_allclose(v.current[0], v.data.q_range_map(0, 50, 80), rtol=1e-6)
    assert v.q_band.visible and "30 bins summed" in v.what
    v.w_pct.value = (5, 95)
    v._restyle()
    assert (v.mapper.low, v.mapper.high) == pytest.approx(robust_limits(v.current[0], 5, 95))
    v._set(kind="G at r", ri=40)
    assert v.colour_bar.title == "G (Å⁻²)" and v.w_cmap.value == "RdBu_r" and v.mapper.low == -v.mapper.high
    v._set(kind="pdf/scale")
    np.testing.assert_array_equal(v.current[0], store.open_array(phantom, "pdf/scale", "r")[0])
    with pytest.raises(ViewError, match="no map 'texture/x'.*pdf/scale"):
        _viewer(phantom, map_name="texture/x")


def test_sinogram_marks_flagged_frames(phantom):
    """The sinogram panel marks the flagged frame (z 0, omega step 3, x step 4) and counts it."""
    v = _viewer(phantom)
    d = v.data
    assert list(v.flag_src.data["x"]) == [d.x.values[4]] and list(v.flag_src.data["y"]) == [d.omega.values[3]]
    assert "1 flagged frame" in v.sino_fig.title.text
    v._set(z=1)
    assert len(v.flag_src.data["x"]) == 0 and "0 flagged frames" in v.sino_fig.title.text


def files_of(path: Path) -> dict:
    out = {}
    for root, dirs, files in os.walk(path):
        for f in files + dirs:
            st = os.stat(os.path.join(root, f))
            out[os.path.join(root, f)] = (st.st_size, st.st_mtime_ns)
    return out


def test_viewer_never_writes_the_store(phantom):
    """Pages, clicks, map changes, polls and downloads leave every file and folder of the store
    as it was (same names, sizes and modification times): reads only, no locks."""
    before = files_of(phantom)
    v = _viewer(phantom)
    for kind in ("intensity summed over a q range", "G at r", "pdf/ok", "intensity at q"):
        v._set(kind=kind)
    _tap(v, 5, 6)
    v._set(z=1)
    v._poll(force=True)
    v._xy(), v._gr(), v._save_png()
    v.w_exact.active = [0]
    v._set()
    assert files_of(phantom) == before


def test_live_page_follows_the_store_as_slices_land(phantom, tmp_path):
    """While a watch fills the store (RUN-live.json says so), a poll that sees new markers shows
    the slice being integrated and the progress; once its recon and view copy are marked done
    the map is the reconstruction (from the copy)."""
    import json
    import shutil

    path = tmp_path / "live.zarr"
    shutil.copytree(phantom, path)
    for b in range(store.task_state(path)["recon"].shape[1]):  # slice 1: integrated, not yet reconstructed
        store.mark_done(path, "recon", (1, b), 0)
    store.mark_done(path, "view", (1, 0), 0)
    live = path.parent / "live-live.json"
    live.write_text(json.dumps({"frames_integrated": 50, "frames_total": 60, "frames_per_s": 25.0, "lag_s": 0.4,
                                "slices_done": [0], "finished": False}))
    v = _viewer(path)
    assert "live" in v.status.text and "50 of 60 frames" in v.status.text
    store.mark_done(path, "integrate", (1, 0), 0)  # a block of slice 1 redone: markers change
    v._poll()
    assert v.z == 1 and "not reconstructed yet" in v.what and np.isnan(v.current[0]).all()
    assert "as integrated so far" in v.sino_fig.title.text
    store.mark_done(path, "integrate", (1, 0))
    for b in range(store.task_state(path)["recon"].shape[1]):
        store.mark_done(path, "recon", (1, b))
    store.mark_done(path, "view", (1,))
    v._poll()
    assert v.z == 1 and np.isfinite(v.current[0]).any() and "view copy" in v.what


@pytest.fixture()
def server(phantom):
    """The viewer's server on a free port in a thread: ``(url with token, port)``."""
    from xrdct_dask.view.server import serve_in_thread

    srv, url = serve_in_thread(phantom, poll_s=0)
    yield url, srv.port
    srv.io_loop.add_callback(srv.io_loop.stop)


def _get(url: str, cookie: str | None = None):
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode(), r.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), []


def test_server_refuses_requests_without_the_token(server):
    """No token, a wrong one, or one a character short: 403 with one line; the token: the page,
    and a cookie (HttpOnly, SameSite=Strict) that alone opens it again."""
    from xrdct_dask.view.server import REFUSED

    url, port = server
    base, token = url.split("?token=")
    for bad in (base, f"{base}?token=wrong", f"{base}?token={token[:-1]}"):
        status, body, _ = _get(bad)
        assert status == 403 and body.strip() == REFUSED
    status, body, cookies = _get(url)
    assert status == 200 and "<title>xrdct view: run.zarr</title>" in body
    cookie = next(c for c in cookies if c.startswith(f"xrdct-view-{port}="))
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert _get(base, cookie.split(";")[0])[0] == 200
    assert _get(base, f"xrdct-view-{port}=wrong")[0] == 403


def test_cli_refuses_in_one_line(phantom, tmp_path):
    """Not a run of this program, an unknown map, a port in use (naming the next free port):
    exit 2 with one line, before anything listens."""
    import socket

    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    runner = CliRunner()
    for args, msg in (([str(tmp_path / "other.zarr")], "not an xrdct-dask run"),
                      ([str(tmp_path / "nothing")], "not a zarr store"),
                      ([str(phantom), "--map", "texture/phi"], "no map 'texture/phi'")):
        res = runner.invoke(app, ["view", *args, "--port", "0"])
        assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = runner.invoke(app, ["view", str(phantom), "--port", str(port)])
    assert res.exit_code == 2 and f"port {port} is in use: try --port " in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_notebook_entry_point_is_the_package(phantom):
    """``xrdct_dask.view(store)`` is the viewer package, callable; a store that is not a run is
    refused before anything is shown."""
    import xrdct_dask

    assert callable(xrdct_dask.view) and xrdct_dask.view.show.__module__ == "xrdct_dask.view"
    with pytest.raises(ViewError, match="not a zarr store"):
        xrdct_dask.view(phantom.parent / "missing.zarr")
