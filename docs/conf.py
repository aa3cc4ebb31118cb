"""Sphinx configuration of the xrdct_dask documentation.

``make docs`` builds it into ``docs/_build/html`` with warnings as errors and the notebooks
executed; ``tests/test_docs.py`` (part of ``make test``) runs the same build without executing
the notebooks (tests/test_notebooks.py executes those).  Nothing here reaches the network:
intersphinx is off unless ``XRDCT_DOCS_INTERSPHINX=1``.  Why Sphinx and not MkDocs:
``docs/index.md``, "About these pages".
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# document this checkout (not whatever is installed), and find the generators in _ext/
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]
# the notebooks' kernels import this checkout too, as tests/test_notebooks.py makes them
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

from xrdct_dask import __version__  # noqa: E402

# numpydoc also reads the docstrings of hypothesis's decorators on the conformance tests and warns
# about their sections (Python warnings about another project's docstrings, not Sphinx's)
warnings.filterwarnings("ignore", message="Unknown section", category=UserWarning, module="numpydoc.docscrape")

project = "xrdct-dask"
author = "the xrdct-dask developers"
copyright = "the xrdct-dask developers, MIT licence"
version = release = __version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and executed notebooks
    "sphinx.ext.autodoc",
    "numpydoc",  # the package's docstrings are numpydoc (its "name : text" lines read as numpydoc shows them)
    "sphinx.ext.intersphinx",
    "xrdct_docs",  # docs/_ext/xrdct_docs.py: the generated reference pages
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "_ext", "**.ipynb_checkpoints"]

# MyST: ::: fences, definition lists, heading anchors for [text](#section) links
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4

# notebooks: executed at build time (make docs); XRDCT_DOCS_EXECUTE=off skips it (tests/test_docs.py)
nb_execution_mode = os.environ.get("XRDCT_DOCS_EXECUTE", "force")
nb_execution_timeout = 300  # seconds per cell (a notebook's whole workflow runs in one)
nb_execution_raise_on_error = True  # a failing notebook fails the build, naming the cell
nb_execution_show_tb = True
nb_execution_in_temp = True  # the kernels start in a temporary folder: nothing written into docs/
nb_merge_streams = True
# notebook 03's last cell shows the viewer (xrdct_dask.view): Bokeh's stored load/exec bundles
# (application/vnd.bokehjs_*) have no static renderer (the page is served by a live kernel); the
# bundle's text/html and javascript parts are rendered, and these two mime types are skipped quietly
suppress_warnings = ["mystnb.unknown_mime_type"]

# autodoc + numpydoc
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # a method without a docstring shows none, not its base class's (distributed's
                                    # use roles of distributed's own documentation)
numpydoc_show_class_members = False  # members are documented by autodoc's :members:, once
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# cross-references to other projects only on request (no network at build time by default)
intersphinx_mapping = {}
if os.environ.get("XRDCT_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "dask": ("https://docs.dask.org/en/stable", None),
        "distributed": ("https://distributed.dask.org/en/stable", None),
        "zarr": ("https://zarr.readthedocs.io/en/stable", None),
        "pyFAI": ("https://www.silx.org/doc/pyFAI/latest", None),
    }

# "--set" and "..." in command-line help stay as typed (no en dashes or ellipses)
smartquotes = False
highlight_language = "text"  # the docstrings' indented blocks are diagrams and layouts, not Python

html_theme = "pydata_sphinx_theme"
html_title = f"xrdct-dask {version}"
html_theme_options = {
    "navigation_depth": 3,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path = ["_static"]
html_css_files = ["xrdct.css"]
html_last_updated_fmt = None
