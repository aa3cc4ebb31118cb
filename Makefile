# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test quick install bench clean slurm-up slurm-down notebooks throughputs docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xrdct demo --out-dir demo

# pytest exits 5 when nothing was collected (e.g. a marker filter): not a failure here
test: $(STAMP) slurm-up
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) || [ $$? -eq 5 ]

# the quick loop while editing: everything but the end-to-end runs marked `slow` (10 s and more
# each: whole workflows, notebooks, the wheel, kills and resumes); `make test` runs them too
quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The slurm-marked tests need a SLURM: as root, start the one-node SLURM of cluster/local-slurm/
# (installs Debian's slurm-wlm + munge with apt-get when missing) and leave it running for the
# next run (`make slurm-down` stops it).  Never fails: the tests skip and say why, from the log.
# XRDCT_LOCAL_SLURM=0 skips this step.
XRDCT_LOCAL_SLURM ?= 1
slurm-up:
	@mkdir -p build
	@if [ "$(XRDCT_LOCAL_SLURM)" = 0 ]; then \
		echo "local SLURM not started: XRDCT_LOCAL_SLURM=0" > build/local-slurm.log; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "local SLURM not started: make test is not running as root" > build/local-slurm.log; \
	else \
		cluster/local-slurm/start.sh > build/local-slurm.log 2>&1 \
			|| echo "local SLURM did not start (cluster/local-slurm/start.sh failed, see build/local-slurm.log)" >> build/local-slurm.log; \
	fi; tail -n 1 build/local-slurm.log

slurm-down:
	cluster/local-slurm/stop.sh

# the notebooks as nbmake runs them (tests/test_notebooks.py also checks that they show figures)
notebooks: $(STAMP)
	$(BIN)/python -m pytest -q --nbmake notebooks

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
	rm -rf demo .pytest_cache .hypothesis docs/_build
