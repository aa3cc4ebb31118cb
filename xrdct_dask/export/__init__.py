"""Export a run to files other programs read: NeXus / HDF5 (:mod:`.nexus`: silx, PyMca, DAWN,
h5py) and PDFgetX3-layout I(Q), S(Q), F(Q), G(r) files (:mod:`.pdffiles`: PDFgui, diffpy.srfit)."""

from __future__ import annotations

from xrdct_dask.errors import ExportError, ExportExistsError
from xrdct_dask.export.nexus import DEFAULT_GROUPS, export_nexus
from xrdct_dask.export.parts import check_parts
from xrdct_dask.export.pdffiles import export_pdf_files, parse_region, parse_voxels

__all__ = [
    "DEFAULT_GROUPS", "ExportError", "ExportExistsError", "check_parts", "export_nexus",
    "export_pdf_files", "parse_region", "parse_voxels",
]
