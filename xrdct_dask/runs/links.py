"""A derived store shares its parent's chunk files (hard links, or copies across file systems),
piece by piece on the run's workers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zarr

from xrdct_dask.cluster.sidework import map_pieces

LINK_PIECE_DIRS = 16  # top-level chunk folders (slices) a linking task walks


def link_group(src, dst, group: str, names: list[str] | None = None, client=None) -> int:
    """Make arrays of group ``group`` of store ``dst`` share the chunk files of store ``src``.

    Chunk files are hard-linked (copied where the two stores are on different file systems):
    no bytes move, and since zarr replaces a chunk by rename rather than writing into it, a later
    write to either store never changes the other.  The arrays must already exist in ``dst`` with
    the same shape, chunks and dtype.  Returns the number of chunk files shared.

    The work is split by the chunk folders of the first dimension (a slice each: only that top
    level is listed here) into pieces of :data:`LINK_PIECE_DIRS`, each a task on the workers of
    ``client`` (a client or a callable making one; None: here, one after the other), so 1e6 links
    or a 12 TB copy across file systems run in parallel (:func:`xrdct_dask.cluster.sidework.map_pieces`).
    """

    src, dst = Path(src), Path(dst)
    sg = zarr.open_group(str(src / group), mode="r")
    pieces = []
    for name in names if names is not None else sorted(sg.array_keys()):
        a, b = sg[name], zarr.open_array(str(dst / group / name), mode="r")
        if (a.shape, a.chunks, a.dtype) != (b.shape, b.chunks, b.dtype):
            raise ValueError(f"{group}/{name}: {src} has shape {a.shape} chunks {a.chunks} {a.dtype} but {dst} has "
                             f"{b.shape} {b.chunks} {b.dtype}; they cannot share chunks")
        top = src / group / name / "c"
        try:
            entries = sorted(os.listdir(top))
        except FileNotFoundError:  # nothing written
            continue
        rel = f"{group}/{name}/c"
        for k in range(0, len(entries), LINK_PIECE_DIRS):
            pieces.append((str(src), str(dst), rel, entries[k:k + LINK_PIECE_DIRS]))
    return sum(map_pieces(client, _link_piece, pieces, f"xrdct-link-{group}"))


def _link_piece(piece) -> int:
    """Link (or copy) the chunk files under ``src/rel/<entry>`` for the piece's entries; a count."""
    src, dst, rel, entries = piece
    src, dst = Path(src), Path(dst)
    n = 0
    for entry in entries:
        first = src / rel / entry
        walk = [(str(first.parent), [], [entry])] if first.is_file() else os.walk(first)
        for dirpath, _, files in walk:
            out = dst / Path(dirpath).relative_to(src)
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                if f.endswith(".partial"):  # an interrupted write of the source: not a chunk
                    continue
                target = out / f
                target.unlink(missing_ok=True)
                try:
                    os.link(Path(dirpath) / f, target)
                except OSError:  # another file system, or links not allowed
                    shutil.copyfile(Path(dirpath) / f, target)
                n += 1
    return n
