"""Pair distribution functions G(r) from I(Q), PDFgetX3's ad hoc way, batched over voxels."""

from xrdct_dask.pdf.transform import (
                        PDFOperator,
                        PDFParameterError,
                        PDFResult,
                        build_operator,
                        compute_pdf,
                        finish,
                        finish_parts,
                        g_from_fq,
                        g_from_sq,
                        gemm_dtype,
                        linear_transform,
                        operator_for,
                        parse_composition,
                        pattern_scale,
                        radial_to_q_A,
                        rescale_fixed,
                        structure_functions,
)

__all__ = ["PDFOperator", "PDFParameterError", "PDFResult", "build_operator", "compute_pdf", "finish",
           "finish_parts", "g_from_fq", "g_from_sq", "gemm_dtype", "linear_transform", "operator_for",
           "parse_composition", "pattern_scale", "radial_to_q_A", "rescale_fixed", "structure_functions"]
