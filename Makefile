# Two commands on a fresh machine:  make demo   and   make test
# Neither changes anything outside this checkout and its .venv: the caches (pip's, matplotlib's
# fonts, the integration plans, cupy's kernels), Jupyter's and IPython's files and every temporary
# file go under build/home and build/tmp (`make clean` removes them).  SLURM is installed and
# started only when asked: `make test-slurm`, or `make test` with CI set (as .ci/run does).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOMEDIR := $(CURDIR)/build/home
export TMPDIR         := $(CURDIR)/build/tmp
export XDG_CACHE_HOME := $(HOMEDIR)/cache
export XDG_DATA_HOME  := $(HOMEDIR)/share
export IPYTHONDIR     := $(HOMEDIR)/ipython
export MPLCONFIGDIR   := $(HOMEDIR)/matplotlib
export CUPY_CACHE_DIR := $(HOMEDIR)/cupy
# dask-jobqueue writes its jobqueue.yaml into dask's config folder when imported
export DASK_CONFIG    := $(HOMEDIR)/dask
DIRS := $(TMPDIR) $(XDG_CACHE_HOME) $(XDG_DATA_HOME) $(IPYTHONDIR) $(MPLCONFIGDIR)

.PHONY: demo test test-slow test-all test-slurm test-browser quick quick-tier lint install bench clean slurm-up \
	slurm-down notebooks throughputs chromium docs

$(DIRS):
	@mkdir -p $@

$(STAMP): pyproject.toml | $(DIRS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

DEMO_DIR ?= demo
demo: $(STAMP) | $(DIRS)
	$(BIN)/xrdct demo --out-dir $(DEMO_DIR) $(DEMO_ARGS)
	@echo "make demo: done (the store and the picture are named above)"

# pytest exits 5 when nothing was collected (e.g. a marker filter): not a failure here.  The
# slurm-marked tests skip, saying how to run them, unless CI is set (then the one-node SLURM of
# slurm-up is started first, as `make test-slurm` does).
#   make test       make lint, then every test but the end-to-end runs marked `slow` (under 8
#                   minutes on 2 cores)
#   make test-slow  the `slow` ones: whole workflows, notebooks, the wheel, kills and resumes,
#                   live acquisitions, subprocesses of the command line (CI runs them after make test)
#   make test-all   both, in one pytest session
#   make quick      the quick tier (tests/quick.txt: the not-slow tests of <= 1.5 s that start no cluster and
#                   simulate no scan), stopping at the first failure, last failures first (under 3 minutes)
#   make quick-tier measure the not-slow tests again and rewrite tests/quick.txt
ifdef CI
SLURM_FIRST := slurm-up
endif
PYTEST := $(BIN)/python -m pytest -q
define pytest_ok
rc=$$?; if [ $$rc -eq 0 ] || [ $$rc -eq 5 ]; then echo "make $(1): passed (skipped tests say why above)"; \
else echo "make $(1): FAILED (pytest exit $$rc)"; exit $$rc; fi
endef

test: $(STAMP) $(SLURM_FIRST) lint | $(DIRS)
	@start=$$(date +%s); $(PYTEST) -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s"; (exit $$rc); $(call pytest_ok,test)

test-slow: $(STAMP) $(SLURM_FIRST) | $(DIRS)
	@start=$$(date +%s); $(PYTEST) -m slow $(PYTEST_ARGS); rc=$$?; \
	echo "make test-slow: $$(( $$(date +%s) - start )) s"; (exit $$rc); $(call pytest_ok,test-slow)

test-all: $(STAMP) $(SLURM_FIRST) | $(DIRS)
	@$(PYTEST) $(PYTEST_ARGS); $(call pytest_ok,test-all)

# the slurm-marked tests on a real one-node SLURM on this machine (needs root: see slurm-up)
test-slurm: $(STAMP) slurm-up | $(DIRS)
	$(BIN)/python -m pytest -q -m slurm $(PYTEST_ARGS) || [ $$? -eq 5 ]

quick: $(STAMP) | $(DIRS)
	@start=$$(date +%s); $(PYTEST) -m "not slow" --quick -x --ff $(PYTEST_ARGS); rc=$$?; \
	echo "make quick: $$(( $$(date +%s) - start )) s"; (exit $$rc); $(call pytest_ok,quick)

quick-tier: $(STAMP) | $(DIRS)
	$(PYTEST) -m "not slow" --quick-tier-out tests/quick.txt $(PYTEST_ARGS) || [ $$? -eq 5 ]

# the linter (ruff, pyproject.toml's [tool.ruff] rules) and the type checker (mypy on the files of
# [tool.mypy]: the store, pipeline and run layers); both run, and it fails if either finds anything.
# Their caches go under build/home/cache.  `make test` runs it first.
lint: $(STAMP) | $(DIRS)
	@start=$$(date +%s); rc=0; RUFF_CACHE_DIR=$(XDG_CACHE_HOME)/ruff $(BIN)/ruff check xrdct_dask tests benchmarks || rc=1; \
	$(BIN)/mypy --cache-dir $(XDG_CACHE_HOME)/mypy || rc=1; \
	if [ $$rc -eq 0 ]; then echo "make lint: passed ($$(( $$(date +%s) - start )) s)"; else echo "make lint: FAILED (ruff or mypy, above)"; fi; exit $$rc

# the viewer in a real browser (tests/test_view_browser.py): Debian's chromium driven by playwright (the test
# extra); playwright never downloads a browser.  `make test-slow` (and CI) runs them too where chromium is installed.
test-browser: $(STAMP) chromium
	$(BIN)/python -m pytest -q -m browser $(PYTEST_ARGS) tests/test_view_browser.py

# Debian's chromium, installed with apt-get when missing (as root), else say how
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "no chromium: as root, apt-get install chromium (the browser tests skip without it)"

# The slurm-marked tests need a SLURM: as root, start the one-node SLURM of cluster/local-slurm/
# and leave it running for the next run (`make slurm-down` stops it).  This changes the system:
# it installs Debian's slurm-wlm + munge with apt-get when missing, writes /etc/slurm/slurm.conf,
# adds the host name to /etc/hosts when it does not resolve, and starts munged, slurmctld and
# slurmd.  Run only by `make test-slurm`, or `make test` with CI set.  Never fails: the tests
# skip and say why, from the log.  XRDCT_LOCAL_SLURM=0 skips this step.
XRDCT_LOCAL_SLURM ?= 1
slurm-up:
	@mkdir -p build
	@if [ "$(XRDCT_LOCAL_SLURM)" = 0 ]; then \
		echo "local SLURM not started: XRDCT_LOCAL_SLURM=0" > build/local-slurm.log; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "local SLURM not started: not running as root (it installs packages and starts daemons)" > build/local-slurm.log; \
	else \
		cluster/local-slurm/start.sh > build/local-slurm.log 2>&1 \
			|| echo "local SLURM did not start (cluster/local-slurm/start.sh failed, see build/local-slurm.log)" >> build/local-slurm.log; \
	fi; tail -n 1 build/local-slurm.log

slurm-down:
	cluster/local-slurm/stop.sh

# execute the notebooks on tiny simulated data and store their outputs (figures, printed results)
# in them, as a reader sees them; tests/test_notebooks.py (part of make test) executes them again
# and compares the structure of the outputs with what is stored
notebooks: $(STAMP) | $(DIRS)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 notebooks/*.ipynb

# the figures lines of benchmarks/RESULTS.md that `xrdct plan` ships (tests/test_packaging.py keeps them equal)
throughputs: $(STAMP)
	$(BIN)/python -c "import json; from xrdct_dask.runs.plan import read_throughputs; from xrdct_dask.resources import THROUGHPUTS; \
		THROUGHPUTS.write_text(json.dumps({'source': 'benchmarks/RESULTS.md', **read_throughputs('benchmarks/RESULTS.md')}, indent=1) + '\n')"

# the documentation site into docs/_build/html (docs/index.md, "About these pages"): warnings are
# errors and the notebooks are executed (a few minutes); XRDCT_DOCS_EXECUTE=off builds it without
# executing them, as tests/test_docs.py does in `make test`
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cpu.py

clean:
	rm -rf demo .pytest_cache .hypothesis build/home build/tmp docs/_build
