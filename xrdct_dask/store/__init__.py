"""The zarr store of a run, in one place: its layout (names, dimensions, chunks, attrs), the
done-markers, the guards on what may be replaced, and chunk-aligned reads and writes.

Imports only the science layer (``io``) below it.  See :mod:`xrdct_dask.store.layout` for the
layout of a store."""

from __future__ import annotations

from xrdct_dask.store.arrays import (
    background_rows_of,
    consolidate,
    layout_of,
    open_array,
    read_attrs,
    read_chunked,
    run_attrs,
    write_chunked,
    write_reduced,
    write_region,
)
from xrdct_dask.store.layout import (
    COMPRESSORS,
    COORDS,
    FORMAT,
    PDF,
    PDF_VOXEL_FIGURES,
    RECON,
    REDUCED,
    ROOT_ENTRIES,
    SUM_ARRAYS,
    TASKS,
    TEMPLATE_WRITES,
    TEXTURE,
    TEXTURE_SECTOR,
    TEXTURE_VOXEL,
    VARIABLE_ATTRS,
    VIEW,
    FrameBlock,
    array_specs,
    create_store,
    describe_variables,
    file_digest,
    frame_blocks,
    frame_status_attrs,
    q_blocks,
    region_for,
    versions,
)
from xrdct_dask.store.markers import TaskState, mark_done, mark_template_complete, set_stage_status, task_state
from xrdct_dask.store.safety import (
    ASIDE_NEW,
    ASIDE_OLD,
    ASIDE_SCAN,
    StoreExistsError,
    StoreWriteError,
    aside_name,
    check_replaceable,
    check_writable,
    clean_leftovers,
    create_aside,
    foreign_entries,
    is_store,
    leftovers,
    root_attrs,
    stale_aside,
)
from xrdct_dask.store.specs import ArraySpec, MarkerSpec

__all__ = [
    "COMPRESSORS", "REDUCED", "RECON", "PDF", "TEXTURE", "SUM_ARRAYS", "TEXTURE_VOXEL", "TEXTURE_SECTOR", "TASKS",
    "FORMAT", "TEMPLATE_WRITES", "MarkerSpec", "FrameBlock", "frame_blocks", "region_for", "q_blocks", "versions",
    "file_digest", "COORDS", "ROOT_ENTRIES", "VIEW", "ArraySpec", "array_specs", "create_store", "PDF_VOXEL_FIGURES",
    "VARIABLE_ATTRS", "frame_status_attrs", "describe_variables", "StoreWriteError", "ASIDE_NEW", "ASIDE_OLD",
    "ASIDE_SCAN", "StoreExistsError", "root_attrs", "is_store", "foreign_entries", "check_replaceable", "aside_name",
    "create_aside", "leftovers", "check_writable", "clean_leftovers", "stale_aside", "TaskState", "task_state",
    "mark_done", "mark_template_complete", "set_stage_status", "open_array", "read_chunked", "write_chunked",
    "write_region", "write_reduced", "layout_of", "background_rows_of", "consolidate", "run_attrs", "read_attrs",
]
