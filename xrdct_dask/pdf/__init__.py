"""Pair distribution functions G(r) from I(Q), PDFgetX3's ad hoc way, batched over voxels.

The transform (:mod:`.transform`, with xraydb's form factors) is imported on first use (PEP 562):
reading a PDFgetX3 configuration (:mod:`.pdfgetx3`) while a workflow loads does not load it.
"""

from __future__ import annotations

from xrdct_dask._lazy import lazy_exports

__all__ = [
    "PDFOperator", "PDFParameterError", "PDFResult", "build_operator", "compute_pdf", "finish", "finish_parts",
    "g_from_fq", "g_from_sq", "gemm_dtype", "linear_transform", "operator_for", "parse_composition", "pattern_scale",
    "radial_to_q_A", "rescale_fixed", "structure_functions",
]


__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "transform"))
