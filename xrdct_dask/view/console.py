"""The messages a run gives its user, apart from the progress bars (kept light: the CLI imports it)."""

from __future__ import annotations

import logging
import sys

console = logging.getLogger("xrdct_dask.view.console")
"""What a run tells its user: the dashboard link, the tasks kept from an earlier run, the summary.
The library writes nothing to stdout itself; the command line shows these messages there
(:func:`show_messages`), a notebook sees them after ``show_messages()`` or through logging."""


def show_messages(stream=None) -> None:
    """Print the run messages of :data:`console` on ``stream`` (default: the current ``sys.stdout``),
    as bare lines.  Idempotent: a second call replaces the first one's handler (so a test runner
    that swaps ``sys.stdout`` per command gets them in the right place)."""
    for h in [h for h in console.handlers if getattr(h, "xrdct_console", False)]:
        console.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.xrdct_console = True
    handler.setFormatter(logging.Formatter("%(message)s"))
    console.addHandler(handler)
    console.setLevel(logging.INFO)
    console.propagate = False
