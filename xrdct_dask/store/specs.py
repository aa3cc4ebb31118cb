"""What a store's arrays are, as data: an array's spec and a stage's done-markers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: ``path`` (``group/name``), shape, chunks, dtype, dimension names,
    fill value, compressed or not (the one-element done-markers are not)."""

    path: str
    shape: tuple
    chunks: tuple
    dtype: str
    dims: tuple
    fill: object
    compressed: bool = True
    shards: tuple | None = None  # zarr shards (a file each) holding the chunks, where the array is sharded

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize

    @property
    def itemsize(self) -> int:
        # a variable-length string (a JSON per slice): numpy's StringDType entry, as zarr reads it
        return np.dtypes.StringDType().itemsize if self.dtype == "str" else np.dtype(self.dtype).itemsize

    @property
    def nchunks(self) -> int:
        return int(np.prod([-(-n // c) for n, c in zip(self.shape, self.chunks)], dtype=np.int64))

    @property
    def nfiles(self) -> int:
        """Chunk files when the array is written whole: a file per shard, else per chunk."""
        if self.shards is None:
            return self.nchunks
        return int(np.prod([-(-n // c) for n, c in zip(self.shape, self.shards)], dtype=np.int64))

    @property
    def chunk_bytes(self) -> int:
        return int(np.prod(self.chunks, dtype=np.int64)) * self.itemsize


@dataclass(frozen=True)
class MarkerSpec:
    """The done-markers of one stage: ``per_slice`` one-element markers per slice (one per task),
    named by ``dim`` (``omega_block``, ``q_block``, ...); ``value``: the marker holds a number per
    slice (NaN until set: the centre), not 0/1.  The stage table gives them
    (:func:`xrdct_dask.pipeline.stages.marker_specs`)."""

    name: str
    per_slice: int
    dim: str
    value: bool = False
    units: str = "1"
    long_name: str = ""
