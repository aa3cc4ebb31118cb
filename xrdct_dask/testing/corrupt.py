"""Break a simulated scan on purpose: each kind of bad input a beamline produces, with the status
every broken scan point must get.

Frame files (one acquisition index each):
    truncated       the file cut at 60 % of its length (closing boundary lost)       TRUNCATED
    bad_md5         Content-MD5 of other bytes (checked with inputs.check_md5)      BAD_CHECKSUM
    size_mismatch   X-Binary-Size raised by 1000 on a whole file                    SIZE_MISMATCH
    garbage_header  random bytes over everything before the binary marker           CORRUPT_HEADER
    wrong_shape     a valid CBF one detector row short                              WRONG_SHAPE
    missing         the file deleted                                                 MISSING
    bad_monitor     its I0 set to 0                                                  BAD_MONITOR
Scan file (``scan.csv``) and monitor:
    duplicate       a second record of a point, pointing at a new copy of its frame  DUPLICATE (used)
    out_of_order    two frames acquired in swapped order, the scan file saying so    OUT_OF_ORDER (used)
Calibration images (workflow inputs, not statuses):
    dark / flat     NaN, +inf and -inf pixels (and a 0 in the flat): those pixels must be masked

:func:`corrupt_scan` works in place: copy the folder of a :class:`SimulatedScan` first.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path

import fabio
import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin
from fabio.cbfimage import CbfImage
from fabio.edfimage import EdfImage

from xrdct_dask.io.cbf import BINARY_MARKER
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.simulate import SimulatedScan

FRAME_KINDS = {
    "truncated": FrameStatus.TRUNCATED, "bad_md5": FrameStatus.BAD_CHECKSUM,
    "size_mismatch": FrameStatus.SIZE_MISMATCH, "garbage_header": FrameStatus.CORRUPT_HEADER,
    "wrong_shape": FrameStatus.WRONG_SHAPE, "missing": FrameStatus.MISSING, "bad_monitor": FrameStatus.BAD_MONITOR,
}
SCAN_KINDS = {"duplicate": FrameStatus.DUPLICATE, "out_of_order": FrameStatus.OUT_OF_ORDER}
KINDS = tuple(FRAME_KINDS) + tuple(SCAN_KINDS)


# ------------------------------------------------------------------------------------------
# one file at a time
# ------------------------------------------------------------------------------------------
def truncate(path: Path, keep: float = 0.6) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def break_md5(path: Path) -> None:
    """Replace the Content-MD5 by that of other bytes (same length: nothing else moves)."""
    raw = path.read_bytes()
    other = base64.b64encode(hashlib.md5(b"not this payload").digest())
    new, n = re.subn(rb"(Content-MD5:\s*)([A-Za-z0-9+/=]{24})", lambda m: m.group(1) + other, raw, count=1)
    if n != 1:
        raise ValueError(f"{path}: no Content-MD5 to break")
    path.write_bytes(new)


def set_binary_size(path: Path, delta: int = 1000) -> None:
    raw = path.read_bytes()
    new, n = re.subn(rb"X-Binary-Size:\s*(\d+)", lambda m: b"X-Binary-Size: " + str(int(m.group(1)) + delta).encode(),
                     raw, count=1)
    if n != 1:
        raise ValueError(f"{path}: no X-Binary-Size field")
    path.write_bytes(new)


def garbage_header(path: Path, rng: np.random.Generator) -> None:
    """Random bytes over the whole header (everything before the binary marker), length kept."""
    raw = bytearray(path.read_bytes())
    end = raw.find(BINARY_MARKER)
    end = len(raw) // 4 if end < 0 else end
    raw[:end] = rng.integers(0, 256, end, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def wrong_shape(path: Path) -> None:
    """Rewrite the frame as a valid CBF one row short of the detector."""

    data = fabio.open(str(path)).data
    CbfImage(data=np.ascontiguousarray(data[:-1])).write(str(path))


# ------------------------------------------------------------------------------------------
# a whole scan
# ------------------------------------------------------------------------------------------
@dataclass
class Corruption:
    """What :func:`corrupt_scan` did and what the run must report.

    ``expected`` maps grid points ``(iz, iomega, ix)`` to the status they must get (every other
    point: OK); ``indices`` the acquisition indices touched per kind; ``overrides`` the workflow
    keys the corrupted scan needs (MD5 checking, the broken dark and flat).
    """

    expected: dict[tuple[int, int, int], FrameStatus] = field(default_factory=dict)
    indices: dict[str, list[int]] = field(default_factory=dict)
    overrides: dict[str, object] = field(default_factory=dict)
    nonfinite_pixels: np.ndarray | None = None  # bool (ny, nx): where dark or flat is not finite or 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st in self.expected.values():
            out[st.name] = out.get(st.name, 0) + 1
        return out


def _read_table(path: Path) -> tuple[str, list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0], [ln.split(",") for ln in lines[1:] if ln.strip()]


def corrupt_scan(scan: SimulatedScan, kinds=KINDS, seed: int = 0, dark_flat: bool = True) -> Corruption:
    """Apply each of ``kinds`` to one scan point of ``scan`` (in place) and return what to expect."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown corruption kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    header, rows = _read_table(scan.scan_file)
    monitor = np.loadtxt(scan.monitor, dtype=np.float64, ndmin=1, comments="#")
    nframes = len(rows)
    point = {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}
    n_needed = len(kinds) + sum(k == "out_of_order" for k in kinds)
    picks = [int(i) for i in rng.choice(np.arange(1, nframes), n_needed, replace=False)]
    c = Corruption()
    for kind in kinds:
        i = picks.pop()
        path = scan.frame_path(i)
        c.indices[kind] = [i]
        if kind == "truncated":
            truncate(path)
        elif kind == "bad_md5":
            break_md5(path)
            c.overrides["inputs.check_md5"] = True
        elif kind == "size_mismatch":
            set_binary_size(path, +1000)
        elif kind == "garbage_header":
            garbage_header(path, rng)
        elif kind == "wrong_shape":
            wrong_shape(path)
        elif kind == "missing":
            path.unlink()
        elif kind == "bad_monitor":
            monitor[i] = 0.0
        elif kind == "duplicate":
            # the point recorded again later under a new index; the copy holds the same frame
            new = len(monitor)
            shutil.copyfile(path, scan.frame_path(new))
            rows.append([str(new)] + rows[i][1:])
            monitor = np.append(monitor, monitor[i])
            c.indices[kind] = [i, new]
        elif kind == "out_of_order":
            j = picks.pop()
            # acquired in swapped order: file i holds point j's frame (taken with monitor j), and back
            pi, pj = scan.frame_path(i), scan.frame_path(j)
            tmp = pi.with_suffix(".swap")
            pi.rename(tmp)
            pj.rename(pi)
            tmp.rename(pj)
            monitor[[i, j]] = monitor[[j, i]]
            rows[i][1:], rows[j][1:] = rows[j][1:], rows[i][1:]
            c.indices[kind] = [i, j]
            c.expected[point[j]] = FrameStatus.OUT_OF_ORDER
        status = FRAME_KINDS.get(kind) or SCAN_KINDS[kind]
        c.expected[point[i]] = status
    scan.scan_file.write_text("\n".join([header] + [",".join(r) for r in rows]) + "\n")
    np.savetxt(scan.monitor, monitor, fmt="%.6e", header="I0 monitor, one value per frame in acquisition order")
    if dark_flat:
        c.overrides.update(_broken_dark_flat(scan, rng, c))
    return c


def _broken_dark_flat(scan: SimulatedScan, rng: np.random.Generator, c: Corruption) -> dict:
    """A dark (small offsets) and a flat (near 1) with non-finite pixels and a zero in the flat."""

    shape = fabio.open(str(scan.mask)).data.shape
    dark = rng.uniform(0.0, 0.5, shape).astype(np.float32)
    flat = rng.uniform(0.95, 1.05, shape).astype(np.float32)
    npix = shape[0] * shape[1]
    pix = rng.choice(npix, 7, replace=False)
    dark.flat[pix[:3]] = [np.nan, np.inf, -np.inf]
    flat.flat[pix[3:]] = [np.nan, np.inf, -np.inf, 0.0]
    bad = np.zeros(shape, bool)
    bad.flat[pix] = True
    c.nonfinite_pixels = bad
    EdfImage(data=dark).write(str(scan.root / "dark.edf"))
    EdfImage(data=flat).write(str(scan.root / "flat.edf"))
    return {"inputs.dark": str(scan.root / "dark.edf"), "inputs.flat": str(scan.root / "flat.edf")}


def copy_scan(scan: SimulatedScan, dest: str | Path) -> SimulatedScan:
    """A copy of a simulated scan folder (frames included) to corrupt without touching the original."""

    dest = Path(dest)
    shutil.copytree(scan.root, dest, ignore=shutil.ignore_patterns("*.zarr", "*summary.png"))
    return replace(scan, root=dest, workflow=dest / scan.workflow.name, poni=dest / scan.poni.name,
                   mask=dest / scan.mask.name, monitor=dest / scan.monitor.name, scan_file=dest / scan.scan_file.name,
                   truth=dest / scan.truth.name)


# ------------------------------------------------------------------------------------------
# faults in the cluster
# ------------------------------------------------------------------------------------------
def _worker_plugin_base():

    return WorkerPlugin


class KillWorkerOnce(_worker_plugin_base()):
    """A distributed worker plugin that SIGKILLs its own worker process once in the whole cluster:
    right after the ``after``-th task whose name starts with ``stage`` finished on that worker
    (its chunk and done-marker written, its result not yet reported), so the scheduler must
    recompute it elsewhere.  ``flag_file`` (created atomically) makes it happen once, and says
    which task it was."""

    name = "xrdct-kill-worker-once"

    def __init__(self, flag_file: str | Path, stage: str = "integrate", after: int = 2):
        self.flag_file = str(flag_file)
        self.stage = stage
        self.after = after
        self.seen = 0

    def transition(self, key, start, finish, **kwargs):

        name = key[0] if isinstance(key, tuple) else str(key)
        if not (start == "executing" and finish == "memory" and str(name).startswith(self.stage)):
            return
        self.seen += 1
        if self.seen < self.after:
            return
        try:
            fd = os.open(self.flag_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{key!r} pid {os.getpid()}".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
