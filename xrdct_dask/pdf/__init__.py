"""Pair distribution functions G(r) from I(Q), PDFgetX3's ad hoc way, batched over voxels.

The transform (:mod:`.transform`, with xraydb's form factors) is imported on first use (PEP 562):
reading a PDFgetX3 configuration (:mod:`.pdfgetx3`) while a workflow loads does not load it.
"""

from __future__ import annotations

import importlib

__all__ = ["PDFOperator", "PDFParameterError", "PDFResult", "build_operator", "compute_pdf", "finish", "finish_parts", "g_from_fq", "g_from_sq", "gemm_dtype", "linear_transform", "operator_for", "parse_composition", "pattern_scale", "radial_to_q_A", "rescale_fixed", "structure_functions"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.transform"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
