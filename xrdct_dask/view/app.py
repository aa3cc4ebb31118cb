"""The viewer's page: one Bokeh document per browser tab (``xrdct view``) or notebook cell.

    [ map of the slice                ] [ patterns: the slice's mean, the clicked voxel, the q  ]
    [ (q, a q range, G at r, per-voxel  ] [ shown (line), the q range (band), phase d-spacings;  ]
    [  maps); click a voxel            ] [ click to choose q                                    ]
    [ sinogram at the same q, flagged  ] [ G(r) of the voxel and of the slice, the r shown       ]
    [ frames marked                    ] [                                                      ]
    controls: map, z, q, q range, r, colour map, colour percentiles, exact reads; save PNG / .xy / .gr
    status: what is done in the store (and the live acquisition's progress), refreshed every poll

Every callback reads what it shows through :class:`~xrdct_dask.view.data.RunData` (read-only);
the page keeps no copy of the store.  Files are sent to the browser as downloads (a data source
that a small script turns into a file), so nothing is written on the server either.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import time

import numpy as np

from xrdct_dask import store
from xrdct_dask.pipeline.stages import FRAMES_STAGE, writer_of
from xrdct_dask.view.data import RunData, ViewError, robust_limits
from xrdct_dask.view.figure import view_figure
from xrdct_dask.view.live import live_status

RECONSTRUCTED = writer_of(f"{store.RECON}/intensity")  # the stage whose markers say a slice is reconstructed
G_DONE = writer_of(f"{store.PDF}/G")  # ... and its G(r) computed

log = logging.getLogger(__name__)

KIND_Q, KIND_RANGE, KIND_G = "intensity at q", "intensity summed over a q range", "G at r"
COLOUR_MAPS = ("viridis", "magma", "inferno", "cividis", "gray", "turbo", "RdBu_r")
MAP_SIZE = 520  # pixels of the map's plot
_DOWNLOAD_JS = """
const d = source.data;
if (!d.name || d.name.length == 0) { return; }
const bytes = Uint8Array.from(atob(d.b64[0]), c => c.charCodeAt(0));
const url = URL.createObjectURL(new Blob([bytes], {type: d.mime[0]}));
const a = document.createElement('a');
a.href = url; a.download = d.name[0]; document.body.appendChild(a); a.click(); a.remove();
setTimeout(() => URL.revokeObjectURL(url), 10000);
"""


@functools.cache
def palette(name: str) -> tuple[str, ...]:
    """256 hex colours of a matplotlib colour map."""
    # lazy: matplotlib takes a second to import; only drawing needs it
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return tuple(to_hex(c) for c in colormaps[name](np.linspace(0, 1, 256)))


def _edges(values: np.ndarray) -> tuple[float, float]:
    """The outer edges of pixels centred on evenly spaced ``values``."""
    step = (values[-1] - values[0]) / (values.size - 1) if values.size > 1 else 1.0
    return float(values[0] - step / 2), float(values[-1] + step / 2)


class Viewer:
    """The widgets, figures and callbacks of one page on the store of ``data``."""

    def __init__(self, data: RunData, *, z: int = 0, map_name: str | None = None, poll_s: float = 2.0):
        # lazy: bokeh is optional (the view extra)
        from bokeh.layouts import column, row
        from bokeh.models import (
            BoxAnnotation,
            Button,
            CheckboxGroup,
            ColorBar,
            ColumnDataSource,
            CustomJS,
            Div,
            LinearColorMapper,
            RangeSlider,
            Select,
            Slider,
            Span,
        )
        from bokeh.plotting import figure

        self.data, self.poll_s = data, poll_s
        d = data
        self.state = d.state()
        self.z = min(max(0, z), d.nz - 1)
        self.qi = int(np.nanargmax(np.nan_to_num(self._mean(), nan=-np.inf))) if d.nq else 0
        self.q_range = (max(0, self.qi - 5), min(d.nq, self.qi + 6))
        self.ri = 0
        self.voxel: tuple[int, int] | None = None
        self.live_seen: float | None = None
        self.signature = None
        self.requests = 0  # map updates done: the page shows it (tests and benchmarks wait on it)
        kinds = [KIND_Q, KIND_RANGE] + ([KIND_G] if d.has_pdf else []) + d.voxel_maps()
        kind = {None: KIND_Q, "recon": KIND_Q, "pdf/G": KIND_G}.get(map_name, map_name)
        if kind not in kinds:
            raise ViewError(f"{d.path}: no map {map_name!r} (there are: recon, {', '.join(k for k in kinds[2:])})"
                            .replace(KIND_G, "pdf/G"))
        self.kind = kind
        if d.has_pdf:
            gm = np.nan_to_num(np.abs(self._mean_g()), nan=-1.0)
            self.ri = int(np.argmax(gm))

        # ---- widgets ----
        q = d.q.values
        self.w_kind = Select(title="map", value=kind, options=kinds, width=260, name="kind")
        self.w_z = Slider(title=f"slice ({d.z.label})", start=0, end=max(1, d.nz - 1), value=self.z, step=1,
                          disabled=d.nz == 1, width=260, name="z")
        self.w_q = Slider(title=d.q.label, start=float(q[0]), end=float(q[-1]), value=float(q[self.qi]),
                          step=float((q[-1] - q[0]) / max(1, q.size - 1)), format="0.000", width=520, name="q")
        self.w_range = RangeSlider(title=f"{d.q.name} range summed ({d.q.units})", start=float(q[0]), end=float(q[-1]),
                                   value=(float(q[self.q_range[0]]), float(q[self.q_range[1] - 1])),
                                   step=self.w_q.step, format="0.00", width=520, name="q_range")
        rv = d.r_view
        self.w_r = Slider(title="r (Å)", start=float(rv[0]) if rv is not None else 0.0,
                          end=float(rv[-1]) if rv is not None else 1.0,
                          value=float(rv[self.ri]) if rv is not None else 0.0,
                          step=float((rv[-1] - rv[0]) / max(1, rv.size - 1)) if rv is not None else 0.1,
                          disabled=rv is None, format="0.000", width=520, name="r")
        self.w_cmap = Select(title="colour map", value="viridis", options=list(COLOUR_MAPS), width=120, name="cmap")
        self.w_pct = RangeSlider(title="colour limits (percentiles)", start=0, end=100, value=(1, 99), step=0.5,
                                 width=250, name="percentiles")
        self.w_exact = CheckboxGroup(labels=["read the run's chunks (exact, full resolution; slow on big slices)"],
                                     active=[], name="exact")
        self.b_png = Button(label="save PNG", width=100, name="save_png")
        self.b_xy = Button(label="voxel .xy", width=100, disabled=True, name="save_xy")
        self.b_gr = Button(label="voxel .gr", width=100, disabled=True, name="save_gr")
        self.status = Div(text="", width=1100, name="status")
        self.info = Div(text="", width=1100, name="info")

        # ---- the map ----
        self.mapper = LinearColorMapper(palette=list(palette("viridis")), nan_color=(0, 0, 0, 0))
        self.map_src = ColumnDataSource(data={"image": [np.zeros((1, 1), np.float32)], "x": [0.0], "y": [0.0],
                                              "dw": [1.0], "dh": [1.0]})
        x0, x1 = _edges(d.x.values)
        y0, y1 = _edges(d.y.values)
        self.map_fig = figure(width=MAP_SIZE + 90, height=MAP_SIZE, x_range=(x0, x1), y_range=(y0, y1),
                              match_aspect=True, tools="tap,pan,wheel_zoom,box_zoom,reset,save",
                              x_axis_label=d.x.label, y_axis_label=d.y.label, name="map")
        self.map_fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.map_src,
                           color_mapper=self.mapper)
        self.colour_bar = ColorBar(color_mapper=self.mapper, title="", width=14, name="colour_bar")
        self.map_fig.add_layout(self.colour_bar, "right")
        self.pick_src = ColumnDataSource(data={"x": [], "y": []})
        self.map_fig.scatter("x", "y", source=self.pick_src, marker="square_x", size=14, fill_alpha=0,
                             line_color="red", line_width=2)

        # ---- the patterns ----
        self.pat_src = ColumnDataSource(data={"q": q, "mean": self._mean(), "voxel": np.full(q.size, np.nan)})
        self.pat_fig = figure(width=560, height=300, x_axis_label=d.q.label,
                              y_axis_label=f"intensity ({d.units(f'{store.RECON}/intensity')})",
                              tools="tap,pan,wheel_zoom,box_zoom,reset,save", name="patterns")
        self.pat_fig.line("q", "mean", source=self.pat_src, color="gray", legend_label="slice mean")
        self.pat_fig.line("q", "voxel", source=self.pat_src, color="#1f77b4", legend_label="voxel", name="voxel_line")
        self.q_line = Span(location=float(q[self.qi]), dimension="height", line_color="red", line_width=1)
        self.q_band = BoxAnnotation(left=float(q[self.q_range[0]]), right=float(q[self.q_range[1] - 1]),
                                    fill_alpha=0.15, fill_color="orange", visible=False)
        self.pat_fig.add_layout(self.q_line)
        self.pat_fig.add_layout(self.q_band)
        colours = ("#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
        for k, (name, xs) in enumerate(d.phase_lines().items()):
            src = ColumnDataSource(data={"x": xs})
            self.pat_fig.ray(x="x", y=0, length=0, angle=np.pi / 2, source=src, color=colours[k % len(colours)],
                             line_dash="dashed", legend_label=f"{name} (d)")
        self.pat_fig.legend.name = "pattern_legend"
        self.pat_fig.legend.location = "top_right"
        self.pat_fig.legend.click_policy = "hide"

        # ---- the sinogram at q, flagged frames marked ----
        w0, w1 = _edges(d.omega.values)
        self.sino_mapper = LinearColorMapper(palette=list(palette("viridis")), nan_color=(0, 0, 0, 0))
        self.sino_src = ColumnDataSource(data={"image": [np.zeros((1, 1), np.float32)], "x": [x0], "y": [w0],
                                               "dw": [x1 - x0], "dh": [w1 - w0]})
        self.flag_src = ColumnDataSource(data={"x": [], "y": []})
        self.sino_fig = figure(width=MAP_SIZE + 90, height=300, x_range=(x0, x1), y_range=(w0, w1),
                               x_axis_label=d.x.label, y_axis_label=d.omega.label, tools="pan,wheel_zoom,reset,save",
                               name="sinogram")
        self.sino_fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.sino_src,
                            color_mapper=self.sino_mapper)
        self.sino_fig.scatter("x", "y", source=self.flag_src, marker="x", color="red", size=7,
                              legend_label="flagged frames")
        self.sino_bar = ColorBar(color_mapper=self.sino_mapper, title="", width=14)
        self.sino_fig.add_layout(self.sino_bar, "right")

        # ---- G(r) ----
        self.g_src = ColumnDataSource(data={"r": rv if rv is not None else [], "mean": self._mean_g() if rv is not None
                                            else [], "voxel": np.full(0 if rv is None else rv.size, np.nan)})
        self.g_fig = figure(width=560, height=300, x_axis_label="r (Å)", y_axis_label="G(r) (Å⁻²)",
                            tools="tap,pan,wheel_zoom,box_zoom,reset,save", name="gr", visible=d.has_pdf)
        self.g_fig.line("r", "mean", source=self.g_src, color="gray", legend_label="slice mean")
        self.g_fig.line("r", "voxel", source=self.g_src, color="#1f77b4", legend_label="voxel")
        self.r_line = Span(location=float(rv[self.ri]) if rv is not None else 0.0, dimension="height",
                           line_color="red")
        self.g_fig.add_layout(self.r_line)

        # ---- downloads ----
        self.download = ColumnDataSource(data={"name": [], "mime": [], "b64": []}, name="download")
        self.download.js_on_change("data", CustomJS(args={"source": self.download}, code=_DOWNLOAD_JS))

        # ---- callbacks ----
        # lazy: bokeh is optional (the view extra)
        from bokeh.events import Tap

        self.w_kind.on_change("value", lambda a, o, n: self._set(kind=n))
        self.w_z.on_change("value_throttled", lambda a, o, n: self._set(z=int(n)))
        self.w_q.on_change("value_throttled", lambda a, o, n: self._set(qi=self._q_index(n)))
        self.w_range.on_change("value_throttled", lambda a, o, n: self._set(
            q_range=(self._q_index(n[0]), self._q_index(n[1]) + 1), kind=KIND_RANGE))
        self.w_r.on_change("value_throttled", lambda a, o, n: self._set(ri=self._r_index(n), kind=KIND_G))
        self.w_cmap.on_change("value", lambda a, o, n: self._restyle())
        self.w_pct.on_change("value_throttled", lambda a, o, n: self._restyle())
        self.w_exact.on_change("active", lambda a, o, n: self._set())
        self.map_fig.on_event(Tap, self._tap_map)
        self.pat_fig.on_event(Tap, lambda ev: self._set(qi=self._q_index(ev.x), kind=KIND_Q))
        self.g_fig.on_event(Tap, lambda ev: self._set(ri=self._r_index(ev.x), kind=KIND_G))
        self.b_png.on_click(self._save_png)
        self.b_xy.on_click(lambda: self._send(*self._xy()))
        self.b_gr.on_click(lambda: self._send(*self._gr()))

        controls = column(row(self.w_kind, self.w_z, self.w_cmap, self.w_pct), row(self.w_q, self.w_r),
                          row(self.w_range, self.w_exact), row(self.b_png, self.b_xy, self.b_gr))
        self.layout = column(Div(text=f"<b>{d.path.name}</b> &nbsp; {d.path}", name="title"), self.status, controls,
                             self.info, row(self.map_fig, column(self.pat_fig, self.g_fig)), self.sino_fig,
                             name="viewer")
        self._poll(force=True)

    # ---- reading ----------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return bool(self.w_exact.active) if hasattr(self, "w_exact") else False

    def _copy(self) -> bool:
        """Read slice z from the view copy (written and not overridden by 'exact')."""
        return not self.exact and self.data.copy_done(self.z, self.state)

    def _mean(self) -> np.ndarray:
        return self.data.mean_pattern(self.z) if self._slice_reconstructed() else np.full(self.data.nq, np.nan)

    def _mean_g(self) -> np.ndarray:
        rv = self.data.r_view if self._copy() else (self.data.r.values if self.data.r is not None else None)
        if rv is None:
            return np.zeros(0)
        return self.data.mean_g(self.z) if self._slice_g_done() else np.full(rv.size, np.nan)

    def _slice_reconstructed(self) -> bool:
        return bool(self.state[RECONSTRUCTED][self.z].all())

    def _slice_g_done(self) -> bool:
        g = self.state.get(G_DONE)
        return g is not None and bool(g[self.z].all())

    def _q_index(self, value: float) -> int:
        return int(np.clip(np.searchsorted(self.data.q.values, value), 0, self.data.nq - 1)) if self.data.nq == 1 else \
            int(np.argmin(np.abs(self.data.q.values - value)))

    def _r_axis(self) -> np.ndarray:
        return self.data.r_view if self._copy() else self.data.r.values

    def _r_index(self, value: float) -> int:
        return int(np.argmin(np.abs(self._r_axis() - value)))

    # ---- updates ----------------------------------------------------------------------------
    def _set(self, **kw) -> None:
        """Change what is shown (z, qi, q_range, ri, kind) and redraw what depends on it."""
        t0 = time.perf_counter()
        old_z = self.z
        for k, v in kw.items():
            setattr(self, k, v)
        if "kind" in kw and self.w_kind.value != self.kind:
            self.w_kind.value = self.kind  # its callback comes back here with nothing changed
        q = self.data.q.values
        self.q_line.location = float(q[self.qi])
        self.q_band.update(left=float(q[self.q_range[0]]), right=float(q[self.q_range[1] - 1]),
                           visible=self.kind == KIND_RANGE)
        if self.data.has_pdf:
            rv = self._r_axis()
            self.ri = min(self.ri, rv.size - 1)
            self.r_line.location = float(rv[self.ri])
        if self.z != old_z or "z" in kw:
            self.pat_src.data.update(mean=self._mean())
            if self.data.has_pdf:
                self.g_src.data = {"r": self._r_axis(), "mean": self._mean_g(), "voxel": np.full(self._r_axis().size,
                                                                                                np.nan)}
        self._draw_map()
        self._draw_sinogram()
        if self.voxel is not None:
            self._show_voxel()
        self.requests += 1
        self._info(time.perf_counter() - t0)

    def _map_image(self) -> tuple[np.ndarray, str, str]:
        """The current map, its label (with units) and what it is."""
        d, z, copy = self.data, self.z, self._copy()
        if self.kind == KIND_Q:
            if not self._slice_reconstructed() and not copy:
                return np.full((d.ny, d.nx), np.nan, np.float32), "", f"slice {z}: not reconstructed yet"
            img = d.q_map(z, self.qi, copy=copy)
            dq = d.d_of(self.qi)
            what = f"{d.q.name} = {d.q.values[self.qi]:.3f} {d.q.units}" + (f" (d = {dq:.4f} Å)" if dq else "")
            return img, f"intensity ({d.units(f'{store.RECON}/intensity')})", what
        if self.kind == KIND_RANGE:
            if not self._slice_reconstructed() and not copy:
                return np.full((d.ny, d.nx), np.nan, np.float32), "", f"slice {z}: not reconstructed yet"
            a, b = self.q_range
            img = d.q_range_map(z, a, b, copy=copy)
            return img, f"intensity summed ({d.units(f'{store.RECON}/intensity')})", (
                f"{d.q.name} = {d.q.values[a]:.3f} .. {d.q.values[b - 1]:.3f} {d.q.units} ({b - a} bins summed)")
        if self.kind == KIND_G:
            if not self._slice_g_done() and not copy:
                return np.full((d.ny, d.nx), np.nan, np.float32), "", f"slice {z}: no G(r) yet"
            img = d.g_map(z, self.ri, copy=copy)
            return img, "G (Å⁻²)", f"r = {self._r_axis()[self.ri]:.3f} Å"
        img = d.voxel_map(self.kind, z)
        units = d.units(self.kind)
        return img, f"{self.kind}" + (f" ({units})" if units and units != "1" else ""), self.kind

    def _draw_map(self) -> None:
        img, label, what = self._map_image()
        d = self.data
        x0, x1 = _edges(d.x.values)
        y0, y1 = _edges(d.y.values)
        self.map_src.data = {"image": [np.ascontiguousarray(img, np.float32)], "x": [x0], "y": [y0], "dw": [x1 - x0],
                             "dh": [y1 - y0]}
        self.current = (img, label, what)
        self.colour_bar.title = label
        if self.kind == KIND_G and self.w_cmap.value == "viridis":
            self.w_cmap.value = "RdBu_r"  # G changes sign: diverging colours (its callback restyles)
        self._restyle()
        binned = d.view.s if self._copy() and self.kind in (KIND_Q, KIND_RANGE, KIND_G) else 1
        self.what = what + (f"; view copy: {binned} x {binned} voxel blocks averaged" if binned > 1 else "")
        self.map_fig.title.text = f"slice {self.z}: {what}"

    def _restyle(self) -> None:
        img = self.current[0]
        lo, hi = robust_limits(img, *self.w_pct.value)
        if self.w_cmap.value == "RdBu_r" or self.kind == KIND_G:  # centred on 0
            top = max(abs(lo), abs(hi))
            lo, hi = -top, top
        if tuple(self.mapper.palette) != palette(self.w_cmap.value):  # 256 colours to validate: only on a change
            self.mapper.palette = list(palette(self.w_cmap.value))
        self.mapper.update(low=lo, high=hi)

    def _draw_sinogram(self) -> None:
        d, z = self.data, self.z
        done = bool(self.state[FRAMES_STAGE][z].all())
        at_q = done and (self._copy() or d.sinogram_cheap)
        exact = d.sinogram_cheap or not self._copy()
        # what it shows: a q bin, the copy's q plane, or the q sum; redrawn when that or the store changes
        key = (z, (self.qi if exact else self.qi // d.view.sino_q) if at_q else None, self.signature, self.exact)
        if key == getattr(self, "_sino_key", None):
            return
        self._sino_key = key
        if at_q:
            img, what = d.sinogram(z, self.qi, copy=not exact)
        elif done:
            img, what = d.total_sinogram(z), "summed over q"
        else:
            img, what = d.total_sinogram(z), "summed over q, as integrated so far"
        flags = d.frame_flags(z)
        wi, xi = np.nonzero(flags == 1)
        self.flag_src.data = {"x": d.x.values[xi], "y": d.omega.values[wi]}
        x0, x1 = _edges(d.x.values)
        w0, w1 = _edges(d.omega.values)
        self.sino_src.data = {"image": [np.ascontiguousarray(img, np.float32)], "x": [x0], "y": [w0],
                              "dw": [x1 - x0], "dh": [w1 - w0]}
        lo, hi = robust_limits(img, 1, 99)
        self.sino_mapper.update(low=lo, high=hi)
        self.sino_bar.title = f"intensity ({d.units(f'{store.REDUCED}/intensity')})"
        n_bad = int((flags == 1).sum())
        pending = int((flags == -1).sum())
        self.sino_fig.title.text = (f"sinogram, slice {z}, {what}: {n_bad} flagged frame{'s' if n_bad != 1 else ''}"
                                    + (f", {pending} not yet integrated" if pending else ""))

    def _tap_map(self, ev) -> None:
        d = self.data
        ix = int(np.argmin(np.abs(d.x.values - ev.x)))
        iy = int(np.argmin(np.abs(d.y.values - ev.y)))
        self.voxel = (iy, ix)
        t0 = time.perf_counter()
        self._show_voxel()
        self.requests += 1
        self._info(time.perf_counter() - t0)

    def _show_voxel(self) -> None:
        d = self.data
        iy, ix = self.voxel
        copy = self._copy()
        self.pick_src.data = {"x": [d.x.values[ix]], "y": [d.y.values[iy]]}
        pat = d.voxel_pattern(self.z, iy, ix, copy=copy) if (copy or self._slice_reconstructed()) else \
            np.full(d.nq, np.nan)
        self.pat_src.data.update(voxel=np.asarray(pat, np.float32))
        s = d.view.s if copy else 1
        where = f"voxel y={iy}, x={ix}" + (f" ({s} x {s} block)" if s > 1 else "")
        self.pat_fig.title.text = f"slice {self.z}: {where}"
        self.b_xy.disabled = False
        if d.has_pdf:
            g = d.voxel_g(self.z, iy, ix, copy=copy) if (copy or self._slice_g_done()) else None
            r = self._r_axis()
            self.g_src.data.update(voxel=np.full(r.size, np.nan) if g is None else np.asarray(g, np.float32))
            self.g_fig.title.text = f"G(r), {where}"
            self.b_gr.disabled = False

    def _info(self, seconds: float) -> None:
        self.info.text = (f"<span id='xrdct-info' data-requests='{self.requests}'>{self.what} &nbsp;·&nbsp; "
                          f"{1e3 * seconds:.0f} ms</span>")

    # ---- live -------------------------------------------------------------------------------
    def _poll(self, force: bool = False) -> None:
        """Read the markers (and the live status) and redraw what changed; every ``poll_s``."""
        try:
            state = self.data.state(refresh=True)
        except Exception as err:  # a store being replaced: try again next time
            log.warning("%s: %s", self.data.path, err)
            return
        sig = tuple((k, a.tobytes()) for k, a in state.marks.items())
        live = live_status(store_path=self.data.path)
        self.state = state
        counts = state.counts()
        parts = [f"{k} {d}/{t}" for k, (d, t) in counts.items()]
        text = "tasks done: " + ", ".join(parts)
        if live is not None and not live.get("finished"):
            text = (f"<b>live</b>: {live['frames_integrated']} of {live['frames_total']} frames integrated, "
                    f"{live['frames_per_s']:.0f} frames/s, lag {live['lag_s']:.2f} s, slices done "
                    f"{live['slices_done']} &nbsp;·&nbsp; " + text)
        self.status.text = text
        if force or sig != self.signature:
            changed = self.signature is not None
            self.signature = sig
            if changed and live is not None and not live.get("finished"):
                self._follow(state)
            else:
                self._set(z=self.z)

    def _follow(self, state: store.TaskState) -> None:
        """During an acquisition: show the newest slice being integrated, or the newest one done."""
        integrated = state[FRAMES_STAGE]
        integrating = [z for z in range(integrated.shape[0]) if integrated[z].any()]
        z = integrating[-1] if integrating else self.z
        self.w_z.value = z
        self._set(z=z)

    def start(self, doc) -> None:
        doc.add_root(self.layout)
        doc.title = f"xrdct view: {self.data.path.name}"
        if self.poll_s > 0:
            doc.add_periodic_callback(self._poll, int(self.poll_s * 1000))

    # ---- files ------------------------------------------------------------------------------
    def _send(self, name: str, mime: str, payload: bytes) -> None:
        self.download.data = {"name": [name], "mime": [mime], "b64": [base64.b64encode(payload).decode()]}

    def _stem(self) -> str:
        iy, ix = self.voxel
        return f"{self.data.path.stem}_z{self.z}_y{iy}_x{ix}"

    def _xy(self) -> tuple[str, str, bytes]:
        iy, ix = self.voxel
        return f"{self._stem()}.xy", "text/plain", self.data.xy_text(self.z, iy, ix).encode()

    def _gr(self) -> tuple[str, str, bytes]:
        iy, ix = self.voxel
        return f"{self._stem()}.gr", "text/plain", self.data.gr_text(self.z, iy, ix).encode()

    def _save_png(self) -> None:
        buf = io.BytesIO()
        view_figure(self).savefig(buf, format="png", dpi=90)
        self._send(f"{self.data.path.stem}_z{self.z}_view.png", "image/png", buf.getvalue())

    def snapshot(self) -> dict:
        """What the page shows, as plain values (tests)."""
        return {"z": self.z, "qi": self.qi, "kind": self.kind, "voxel": self.voxel, "requests": self.requests,
                "what": self.what, "limits": (self.mapper.low, self.mapper.high),
                "voxel_pattern": np.asarray(self.pat_src.data["voxel"]), "map": self.current[0]}


def make_document(doc, path, *, z: int = 0, map_name: str | None = None, poll_s: float = 2.0,
                  phases: dict | None = None) -> Viewer:
    """Build the page for store ``path`` into Bokeh document ``doc`` (a server session or a
    notebook cell); ``phases`` (``{name: [d, ...]}``, angstrom) overrides the workflow's
    ``view.phases``; returns the :class:`Viewer`."""
    viewer = Viewer(RunData(path, phases), z=z, map_name=map_name, poll_s=poll_s)
    viewer.start(doc)
    return viewer
