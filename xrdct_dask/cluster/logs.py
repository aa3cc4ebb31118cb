"""A run's logging on its workers: quiet local workers, no traceback for a store that cannot be written."""

from __future__ import annotations

import logging

from distributed import WorkerPlugin

log = logging.getLogger(__name__)


class RunLogPlugin(WorkerPlugin):
    """Distributed worker plugin for a run's logging on its workers.

    A task that cannot write the store raises :class:`~xrdct_dask.store.safety.StoreWriteError`; the
    client stops the run with one line naming the cause, so the worker's own "Compute Failed"
    block with its traceback is left out for that exception (every other failure keeps it).
    ``level``: the level of the ``distributed`` loggers in the workers (a local cluster follows
    the client's, so a quiet command line is not interleaved with worker chatter); None leaves
    a cluster's own logging as it is."""

    name = "xrdct-run-logging"
    idempotent = False

    def __init__(self, level: int | None = None):
        self.level = level

    def setup(self, worker):
        wl = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _StoreErrorFilter) for f in wl.filters):
            wl.addFilter(_StoreErrorFilter())
        if self.level is not None:
            logging.getLogger("distributed").setLevel(self.level)


def worker_log_level() -> int:
    """The ``distributed`` log level of a local cluster's workers: the client's, except that a
    quiet client (ERROR and above: the command line without -v) hears nothing from its workers
    but CRITICAL, since the client itself reports every failure in one line (a worker's own
    shutdown chatter, e.g. a heartbeat to a scheduler closing after Ctrl-C, is noise there)."""
    level = logging.getLogger("distributed").getEffectiveLevel()
    return logging.CRITICAL if level >= logging.ERROR else level


class _StoreErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("Compute Failed") and "StoreWriteError" in str(record.args))
