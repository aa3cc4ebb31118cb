"""The viewer on a real run, in a real browser.

The simulator's scan (2 slices x 32 angles x 24 steps, a Ni disk, an Fe bar, a NaCl ellipse in
amorphous Si) is run through the whole workflow: the run writes the view copy of every slice
(stage ``view``); the page marks Ni's d-spacings (``--phase Ni=...``).  Then Debian's Chromium, driven by Playwright
(``executable_path=/usr/bin/chromium``, never a downloaded browser), opens ``xrdct view``'s page:
it moves the q slider with the mouse, clicks the voxel at the centre of the Ni disk, and reads
the pattern the page shows, whose strongest peaks must be Ni's lines (within 1 %: a q bin is
0.25 % wide at 30 1/nm); a page opened without the token is refused.  The page's
screenshot is kept as a test artefact (``build/test-artifacts/``, ``$XRDCT_ARTIFACTS``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from xrdct_dask import store

NI_D_A = [2.0346, 1.7620, 1.2459, 1.0625]  # fcc Ni a = 3.524 A: (111), (200), (220), (311)
FE_ONLY_D_A = [1.4333, 1.1703]  # bcc Fe (200), (211): no Ni line near (Fe (110) overlaps Ni (111))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("XRDCT_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "test-artifacts"))


@pytest.fixture(scope="module")
def viewed_run(pdf_then_recon_run):
    """The simulated scan run through the whole workflow (the session's run of tests/conftest.py,
    shared with the workflow's and the export's tests), view copy included: ``(store, scan)``."""
    path, _, scan = pdf_then_recon_run
    return Path(path), scan


@pytest.mark.slow
def test_run_writes_the_view_copy(viewed_run):
    """Every slice's view copy is written after its recon and G(r) (tasks/view set; the report
    counts the stage); at 24 x 24 voxels it is the reconstruction itself, in float16 (rtol 1e-3)."""
    from xrdct_dask.store.viewcopy import layout_of, view_parts
    from xrdct_dask.view.data import RunData

    path, scan = viewed_run
    state = store.task_state(path)
    parts = scan.nz * len(view_parts(layout_of(path)))  # a task per shard and the sinogram, every slice
    assert "view" in state and state["view"].all() and state.counts()["view"] == (parts, parts)
    d = RunData(path)
    assert d.view.s == 1 and d.view.nq == d.nq
    for z in range(scan.nz):
        exact = store.open_array(path, "recon/intensity", "r")[z]
        top = np.nanmax(np.abs(exact))
        np.testing.assert_allclose(d.q_map(z, 200), exact[..., 200], atol=1e-3 * top)
        np.testing.assert_allclose(d.mean_pattern(z), np.nanmean(exact, axis=(0, 1)), rtol=1e-5)
    assert store.read_attrs(path)["stage_status"]["view"] == "done"


def ni_centre(scan, z: int = 0) -> tuple[int, int]:
    ni = scan.load_truth()["phase_maps"][0, z]
    ys, xs = np.nonzero(ni > 0.5)
    return int(round(ys.mean())), int(round(xs.mean()))


@pytest.fixture(scope="module")
def page_url(viewed_run):
    from xrdct_dask.view.server import serve_in_thread

    srv, url = serve_in_thread(viewed_run[0], poll_s=1.0, phases={"Ni": NI_D_A})  # as --phase Ni=...
    yield url
    srv.io_loop.add_callback(srv.io_loop.stop)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=os.environ.get("XRDCT_CHROMIUM", "/usr/bin/chromium"),
                              args=CHROMIUM_FLAGS)
        yield b
        b.close()


# JS: screen position of data point (x, y) of the plot named `name`; the slider named `name`'s
# handle and track rectangles
_POINT = """([name, x, y]) => { const m = Bokeh.documents[0].get_model_by_name(name);
  const v = Object.values(Bokeh.index)[0].owner.get_one(m); const r = v.canvas_view.el.getBoundingClientRect();
  return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)]; }"""
_SLIDER = """(name) => { const m = Bokeh.documents[0].get_model_by_name(name);
  const v = Object.values(Bokeh.index)[0].owner.get_one(m);
  const h = v.shadow_el.querySelector('.noUi-handle').getBoundingClientRect();
  const t = v.shadow_el.querySelector('.noUi-base').getBoundingClientRect();
  return [h.left + h.width / 2, h.top + h.height / 2, t.left, t.width, m.start, m.end]; }"""


def _requests(page) -> int:
    return page.evaluate("""() => { const d = Bokeh.documents[0].get_model_by_name('info');
        const m = d.text.match(/data-requests='(\\d+)'/); return m ? Number(m[1]) : -1; }""")


def _wait_for_update(page, before: int, timeout_s: float = 30) -> None:
    t0 = time.time()
    while _requests(page) <= before:
        assert time.time() - t0 < timeout_s, "the page did not update"
        page.wait_for_timeout(100)


@pytest.mark.browser
@pytest.mark.slow
def test_browser_q_slider_and_ni_voxel(viewed_run, page_url, browser):
    """Move the q slider to Ni (200) with the mouse: the map is redrawn at that q.  Click the
    centre of the Ni disk: the three strongest peaks of the pattern the page shows are Ni lines,
    (111) among them, none at an Fe-only line; Ni's lines are drawn.  The page's screenshot is kept."""
    from xrdct_dask.view.summary import strongest_peaks

    path, scan = viewed_run
    q = store.open_array(path, "q", "r")[:]
    page = browser.new_page(viewport={"width": 1250, "height": 1150})
    t0 = time.perf_counter()
    assert page.goto(page_url).status == 200
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length && "
                           "Bokeh.documents[0].get_model_by_name('info').text.includes('data-requests')", timeout=60000)
    load_s = time.perf_counter() - t0
    # the q slider, dragged to Ni (200)
    target = 20 * np.pi / NI_D_A[1]
    hx, hy, left, width, start, end = page.evaluate(_SLIDER, "q")
    before = _requests(page)
    page.mouse.move(hx, hy)
    page.mouse.down()
    page.mouse.move(left + width * (target - start) / (end - start), hy, steps=8)
    page.mouse.up()
    _wait_for_update(page, before)
    shown_q = page.evaluate("() => Bokeh.documents[0].get_model_by_name('q').value")
    assert abs(shown_q - target) < 3 * (q[1] - q[0]), (shown_q, target)
    title = page.evaluate("() => Bokeh.documents[0].get_model_by_name('map').title.text")
    assert f"{shown_q:.3f}"[:-1] in title and "d = 1.7" in title
    # a click on the Ni disk
    iy, ix = ni_centre(scan)
    x = store.open_array(path, "x", "r")[ix]
    y = store.open_array(path, "y", "r")[iy]
    before = _requests(page)
    page.mouse.click(*page.evaluate(_POINT, ["map", float(x), float(y)]))
    _wait_for_update(page, before)
    shown = np.array(page.evaluate(
        "() => Array.from(Bokeh.documents[0].get_model_by_name('voxel_line').data_source.data.voxel)"), float)
    peaks_d = 20 * np.pi / q[strongest_peaks(shown, 3)]
    for d in peaks_d:  # each of the three strongest peaks is a Ni line, (111) among them; none is Fe's alone
        assert np.min(np.abs(np.asarray(NI_D_A) - d)) / d < 0.01, peaks_d
        assert np.min(np.abs(np.asarray(FE_ONLY_D_A) - d)) / d > 0.02, peaks_d
    assert np.min(np.abs(peaks_d - NI_D_A[0])) / NI_D_A[0] < 0.01, peaks_d
    np.testing.assert_allclose(shown, store.open_array(path, "recon/intensity", "r")[0, iy, ix],
                               rtol=2e-3, atol=2e-3 * np.nanmax(np.abs(shown)))
    labels = page.evaluate("() => Bokeh.documents[0].get_model_by_name('pattern_legend').items"
                           ".map(i => i.label.value)")
    assert "Ni (d)" in labels
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "view-page.png"))
    page.close()
    assert load_s < 60


@pytest.mark.browser
@pytest.mark.slow
def test_browser_page_without_token_is_refused(page_url, browser):
    """The page without its token (or with a wrong one) answers 403 and shows no viewer."""
    from xrdct_dask.view.server import REFUSED

    page = browser.new_page()
    base = page_url.split("?")[0]
    for url in (base, base + "?token=not-it"):
        resp = page.goto(url)
        assert resp.status == 403 and REFUSED in page.content()
        assert page.evaluate("() => typeof window.Bokeh") == "undefined"
    page.close()
