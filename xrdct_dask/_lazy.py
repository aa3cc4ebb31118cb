"""Lazy exports of a package (PEP 562): its names are imported from their modules on first use.

Used where a package's light parts must load without its heavy ones: ``io`` (reading a frame's
header must not import the decoders' numba) and ``pdf`` (reading a PDFgetX3 configuration while a
workflow loads must not import xraydb)."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package`` whose name ``n`` lives in submodule ``exports[n]``."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
