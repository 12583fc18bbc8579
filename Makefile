# Trade-Up Engine. `make run` installs and serves on the embedded database; `make test` runs the suite.
PYTHON ?= python3
STAMP := .make

.PHONY: install build protos test bench bench-engine run clean

$(STAMP)/installed: setup.py pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@mkdir -p $(STAMP) && touch $@

install: $(STAMP)/installed

# The compiled kernel, in place (pip's editable install builds it too; this rebuilds after edits).
engine_ext/_kernel.c: engine_ext/_kernel.pyx | install
	$(PYTHON) setup.py --quiet build_ext --inplace

build: install engine_ext/_kernel.c

test: build
	$(PYTHON) -m pytest -q

bench: bench-engine

bench-engine: build
	$(PYTHON) -m tests.bench.bench_engine

clean:
	rm -rf build *.egg-info $(STAMP) engine_ext/_kernel.c engine_ext/*.so
	find . -name __pycache__ -prune -exec rm -rf {} +
