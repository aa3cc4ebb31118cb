"""Export a run to files other programs read: NeXus / HDF5 (:mod:`.nexus`: silx, PyMca, DAWN,
h5py) and PDFgetX3-layout I(Q), S(Q), F(Q), G(r) files (:mod:`.pdffiles`: PDFgui, diffpy.srfit)."""

from __future__ import annotations


class ExportError(ValueError):
    """An export that cannot be done, in one line naming the store, group, key or file."""


from xrdct_dask.export.nexus import DEFAULT_GROUPS, _h5_chunks, export_nexus  # noqa: E402
from xrdct_dask.export.pdffiles import export_pdf_files, parse_region, parse_voxels  # noqa: E402

__all__ = ["DEFAULT_GROUPS", "ExportError", "export_nexus", "export_pdf_files", "parse_region", "parse_voxels"]
