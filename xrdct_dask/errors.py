"""The errors of xrdct_dask: one root, :class:`XrdctError`, whose message is one line for a user.

Every error this package raises on purpose derives from it, so a caller (the CLI, the job service,
a notebook) catches one type and shows ``str(err)``.  Each also derives from the built-in type it
always was (``ValueError``, ``OSError``, ``FileExistsError``, ``RuntimeError``), so code that
caught those keeps working.

==========================  ===================================================  ==============
error                       raised when                                          layer
==========================  ===================================================  ==============
:class:`WorkflowError`      a workflow key, input file or size cannot work       config, run
:class:`ProfileError`       a cluster profile is broken or unknown               cluster
:class:`PDFParameterError`  a PDF parameter cannot work                          pdf
:class:`CorruptFrameError`  a frame file cannot be decoded (becomes its status)  io
:class:`StoreExistsError`   ``store.path`` names what this program must keep     store
:class:`StoreWriteError`    a chunk of the store cannot be written               store
:class:`NotARunError`       a path is not a run's store                          store
:class:`RunStopped`         a run cannot go on (its store cannot be written)     run
:class:`TaskFailed`         a task of the run raised                             run
:class:`ExportError`        an export cannot be done                             export
==========================  ===================================================  ==============
"""

from __future__ import annotations


class XrdctError(Exception):
    """The root of this package's errors; ``str(err)`` is one line naming what is wrong."""


class WorkflowError(XrdctError, ValueError):
    """A workflow that cannot run, in one line naming the key (or ``--set`` option) and the problem."""


class ProfileError(XrdctError, ValueError):
    """A cluster profile that is broken or unknown, in one line naming the profile and key."""


class PDFParameterError(XrdctError, ValueError):
    """A PDF parameter that cannot work, named in one line."""


class CorruptFrameError(XrdctError, ValueError):
    """A frame file that cannot be decoded; the message names the file and what is wrong.

    Raised by the readers; a run turns it into the frame's status and goes on."""


class TruncatedFrameError(CorruptFrameError):
    """The file ends inside its binary payload (cut during transfer or writing)."""


class SizeMismatchError(CorruptFrameError):
    """The file is whole but ``X-Binary-Size`` disagrees with where its binary section ends."""


class NotRegularFileError(OSError, CorruptFrameError):
    """A frame path names something other than a regular file (a FIFO, a device, a folder): it is
    never read, since reading a pipe or a device can block forever.  An OSError (the file system
    said so) and a CorruptFrameError (no frame there), as ``io.UnsupportedOperation`` is both."""


class StoreError(XrdctError):
    """Something about a run's store."""


class StoreExistsError(StoreError, FileExistsError):
    """``store.path`` names something this program must not replace; the message is one line."""


class NotARunError(StoreError, ValueError):
    """A path that is not a store this program wrote (no zarr group, or no stored workflow)."""


class StoreWriteError(StoreError, OSError):
    """A chunk of the store could not be written (full disk, read-only or vanished file system).

    Raised by the store's write functions with the array and region named; the task that hit it
    set no done-marker, so a rerun rewrites that chunk.
    """


class RunStopped(XrdctError, RuntimeError):
    """The run cannot go on (the store cannot be written); what is marked done is whole."""


class TaskFailed(XrdctError, RuntimeError):
    """A task of the run raised (its key and the error in one line; ``-v`` shows the traceback).
    What other tasks wrote and marked is whole: the same command resumes after a fix."""


class ExportError(XrdctError, ValueError):
    """An export that cannot be done, in one line naming the store, group, key or file."""


class ExportExistsError(ExportError):
    """The output file exists and replacing it was not asked for.  The message is in the
    library's spelling (``overwrite=True``); the command line says ``--overwrite`` instead
    (:meth:`hint` with the option's spelling), so no message mixes the two."""

    def __init__(self, path, option: str = "overwrite=True"):
        self.path = path
        super().__init__(self.hint(option))

    def hint(self, option: str) -> str:
        return f"{self.path} exists: pass {option} to replace an earlier export of this program"
