"""The display layer: what a person looks at.  It reads stores and never writes into a run's store.

    console.py  the run's messages (the ``xrdct_dask.view.console`` logger the CLI and notebooks show)
    summary.py  the summary picture of a run (``RUN-summary.png``)
    live.py     a watch's status and live picture
    data.py     the viewer's data, read from a store (maps, patterns, sinograms, d-lines, .xy/.gr text;
                the run's view copy, :mod:`xrdct_dask.store.viewcopy`, where there is one)
    app.py      the viewer's page: one Bokeh document (widgets, figures, callbacks, live polling)
    figure.py   the page as a matplotlib figure (its "save PNG")
    server.py   ``xrdct view RUN.zarr``: the page on 127.0.0.1 behind a token

Bokeh, whose server dask's dashboard runs on, draws the viewer (``pip install "xrdct-dask[view]"``).

This module is callable: ``xrdct_dask.view(store)`` is :func:`show`.
"""

from __future__ import annotations

import sys
import types
from functools import partial

INSTALL = 'pip install "xrdct-dask[view]"'


def show(store, *, z: int = 0, map_name: str | None = None, poll_s: float = 2.0, phases: dict | None = None,
         notebook_url: str = "localhost:8888"):
    """Show the viewer of run ``store`` in this notebook's output (JupyterLab, classic Notebook).

    Bokeh serves the page from this kernel (a server app in the kernel's IO loop, as
    ``bokeh.io.show`` does for apps); ``notebook_url`` is where the browser reaches Jupyter
    (``localhost:8888``; a function of the port behind a proxy, see Bokeh's ``show``).  The
    same page as ``xrdct view``: maps, patterns, sinogram, live refresh while a watch fills the
    store; ``phases`` (``{"Ni": [2.034, 1.762]}``, angstrom) marks d-spacings (default: the
    workflow's ``view.phases``).  A store that is not a run of this program is refused
    (ViewError) before anything shows."""
    # lazy: bokeh is optional (the view extra); app and data would pull zarr and dask into --help (view.console)
    from bokeh.io import output_notebook
    from bokeh.io import show as bokeh_show

    from xrdct_dask.view.app import make_document
    from xrdct_dask.view.data import RunData

    RunData(store)
    output_notebook(hide_banner=True)
    return bokeh_show(partial(make_document, path=store, z=z, map_name=map_name, poll_s=poll_s, phases=phases),
                      notebook_url=notebook_url)


class _CallableModule(types.ModuleType):
    def __call__(self, store, **kwargs):
        return show(store, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
