"""Export a run to files other programs read: NeXus / HDF5 (:mod:`.nexus`: silx, PyMca, DAWN,
h5py) and PDFgetX3-layout I(Q), S(Q), F(Q), G(r) files (:mod:`.pdffiles`: PDFgui, diffpy.srfit)."""

from __future__ import annotations


class ExportError(ValueError):
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


from .nexus import DEFAULT_GROUPS, _h5_chunks, export_nexus  # noqa: E402
from .pdffiles import export_pdf_files, parse_region, parse_voxels  # noqa: E402

__all__ = ["DEFAULT_GROUPS", "ExportError", "ExportExistsError", "export_nexus", "export_pdf_files", "parse_region", "parse_voxels"]
