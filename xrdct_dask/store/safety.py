"""What a store may replace, and how a new one is put in place: this program's stores only
(format marker, nothing foreign, never at or above an input), built aside and renamed into place."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

from xrdct_dask.errors import StoreExistsError, StoreWriteError
from xrdct_dask.io.scantable import ASIDE_SCAN  # the scan table converted beside a store (cleaned here)
from xrdct_dask.store.layout import FORMAT, PDF, RECON, REDUCED, ROOT_ENTRIES, TASKS, TEXTURE, VIEW

ASIDE_NEW, ASIDE_OLD = ".xrdct-new-", ".xrdct-old-"






def root_attrs(path) -> dict | None:
    """The attributes of the zarr group at ``path`` (its root ``zarr.json``), None if there is none
    or it is unreadable.  Read as plain JSON: no zarr machinery for a folder that may not be a store."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("attributes", {}) if isinstance(meta, dict) else None


def is_store(path) -> bool:
    """True when ``path`` is a store this program created (complete or not): its marker is there."""
    return (root_attrs(path) or {}).get("format") == FORMAT


def foreign_entries(path) -> list[str]:
    """Entries of store ``path`` this program never writes: anything at the root other than its
    groups, coordinates and metadata, and anything in a group other than zarr arrays (a folder
    with a ``zarr.json``) and its own ``zarr.json``.  Chunk folders are not walked (nobody keeps
    files there, and a large store holds millions of them)."""
    path = Path(path)
    out = []
    for e in path.iterdir():
        if e.name in ROOT_ENTRIES or e.name.endswith(".partial"):
            if e.is_dir() and e.name in (REDUCED, RECON, PDF, TEXTURE, TASKS, VIEW):
                out += [f"{e.name}/{f.name}" for f in e.iterdir()
                        if not (f.name == "zarr.json" or f.name.endswith(".partial") or (f / "zarr.json").is_file())]
            continue
        out.append(e.name)
    return sorted(out)


def check_replaceable(path, inputs: dict[str, Path] | None = None) -> None:
    """Raise :class:`StoreExistsError` unless creating a store at ``path`` loses nothing: ``path``
    does not exist, is an empty folder, or is a store of this program holding nothing else
    (:func:`foreign_entries`); and it neither is nor lies above any of ``inputs`` (``{key: path}``)."""
    path = Path(path)
    full = path.resolve()
    for key, p in (inputs or {}).items():
        q = Path(p).resolve()
        if q == full or full in q.parents:
            raise StoreExistsError(f"store.path: {path} holds the run's input {key} ({p}): choose another store.path")
    inside = next((a for a in full.parents if is_store(a)), None)
    if inside is not None:  # a store written into another would make that one foreign to its own program
        raise StoreExistsError(f"store.path: {path} lies inside the store {inside}: choose a path outside it")
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise StoreExistsError(f"store.path: {path} exists and is not a folder: choose another store.path")
    if not any(path.iterdir()):
        return
    if not is_store(path):
        raise StoreExistsError(f"store.path: {path} exists and is not a store of xrdct-dask (store.overwrite only "
                               f"ever replaces one): choose another store.path")
    extra = foreign_entries(path)
    if extra:
        raise StoreExistsError(f"store.path: {path} is an xrdct-dask store but also holds {len(extra)} other "
                               f"entr{'y' if len(extra) == 1 else 'ies'} ({', '.join(extra[:3])}): move "
                               f"{'it' if len(extra) == 1 else 'them'} out or choose another store.path")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


_ASIDE_OWNER = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{12}$")


def aside_name(path, kind: str) -> Path:
    """``.run.zarr.xrdct-new-<host>-<pid>-<hex>`` beside ``run.zarr``: where a store is built before
    it is renamed into place (``ASIDE_NEW``), or where the store it replaces waits for deletion.
    The host (a digest of its name) and process id say who builds it (:func:`stale_aside`)."""

    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}{kind}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def stale_aside(folder: Path, path) -> bool:
    """True when ``folder`` (a leftover beside store ``path``) is provably a store this program was
    building and no process is building any more: named by :func:`aside_name` on this host for a
    process that is gone, and holding nothing but this program's entries (its format marker, or
    nothing yet).  Anything else (another host's, a live process's, an older name, a folder with
    other files) is not."""
    path = Path(os.path.abspath(path))
    prefix = f".{path.name}{ASIDE_NEW}"
    m = _ASIDE_OWNER.match(folder.name[len(prefix):]) if folder.name.startswith(prefix) else None
    if m is None or m["host"] != _host_tag() or int(m["pid"]) == os.getpid():
        return False
    try:
        os.kill(int(m["pid"]), 0)
        return False  # alive (or its number reused: kept either way)
    except ProcessLookupError:
        pass
    except OSError:  # EPERM: alive, another user's
        return False
    if folder.is_symlink() or not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    return is_store(folder) and not foreign_entries(folder)


def clean_leftovers(path) -> tuple[list[Path], list[Path]]:
    """Remove the leftovers beside ``path`` that :func:`stale_aside` proves this program's and
    stale (a killed run or reprocess's half-built store); ``(removed, kept)``: what is kept (another
    host's, a running process's, one holding other files, an older store waiting for deletion) is
    for the caller to report."""
    removed: list[Path] = []
    kept: list[Path] = []
    for left in leftovers(path):
        if stale_aside(left, path):
            shutil.rmtree(left, ignore_errors=True)
            (kept if left.exists() else removed).append(left)
        else:
            kept.append(left)
    return removed, kept


def create_aside(path, build, inputs: dict[str, Path] | None = None):
    """Build a new store for ``path`` beside it and rename it into place when whole.

    ``build(tmp)`` writes the whole store at ``tmp`` (:func:`create_store` first, which writes the
    format marker before anything else).  Only then is an existing store at ``path`` (checked by
    :func:`check_replaceable` before anything is written, and again just before the swap) moved
    aside and deleted: a run that fails or is killed while building leaves the old store (or
    nothing) at ``path``, never a half-made one.  A failure removes the half-made copy (it is
    this call's own folder) and raises :class:`StoreWriteError` with one line.  Returns ``build``'s result.
    """
    path = Path(os.path.abspath(path))
    check_replaceable(path, inputs)
    tmp = aside_name(path, ASIDE_NEW)
    try:
        result = build(tmp)
        check_replaceable(path, inputs)
        if path.exists() and any(path.iterdir()):
            old = aside_name(path, ASIDE_OLD)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists():
                path.rmdir()  # an empty folder
            os.rename(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, StoreExistsError):
            raise
        raise StoreWriteError(err.errno or errno.EIO,
                              f"cannot create {path}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def leftovers(path) -> list[Path]:
    """Folders left beside ``path`` by a run killed while building or swapping its store."""
    path = Path(os.path.abspath(path))
    try:
        return sorted(p for p in path.parent.iterdir()
                      if any(p.name.startswith(f".{path.name}{kind}") for kind in (ASIDE_NEW, ASIDE_OLD, ASIDE_SCAN)))
    except OSError:
        return []


def check_writable(path) -> None:
    """Raise :class:`StoreWriteError` unless files can be created in folder ``path``."""
    probe = Path(path) / f".xrdct-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise StoreWriteError(err.errno or errno.EIO,
                              f"{path} is not writable ({err.strerror or err})") from None
