"""Pair distribution functions G(r) from I(Q), batched over voxels."""

from .transform import PDFOperator, PDFParameterError, PDFResult, build_operator, compute_pdf, operator_for, parse_composition

__all__ = ["PDFOperator", "PDFParameterError", "PDFResult", "build_operator", "compute_pdf", "operator_for",
           "parse_composition"]
