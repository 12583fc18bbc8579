# Trade-Up Engine.  `make run`: install and serve on the embedded database with demo data.
#                   `make test`: install and run the whole test suite.
PYTHON ?= python3
STAMP := .make
BIN := $(CURDIR)/bin
GHZ_VERSION := v0.120.0
GRPCURL_VERSION := v1.9.3
HEALTH_PROBE_VERSION := v0.4.62

.PHONY: install system-deps build protos run migrate seed test test-python bench bench-engine bench-db \
	bench-growth bench-fleet bench-watch loadtest soak tools clean

# MariaDB (for the tests) and a C compiler, from Debian's packages when missing.
system-deps:
	@missing=""; \
	command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server mariadb-client"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP)/installed: setup.py pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@mkdir -p $(STAMP) && touch $@

install: $(STAMP)/installed

# The compiled kernel, in place (the editable install builds it too; this rebuilds after edits).
engine_ext/_kernel.c: engine_ext/_kernel.pyx | install
	$(PYTHON) setup.py --quiet build_ext --inplace

build: install engine_ext/_kernel.c

# Regenerate the committed stubs from protos/tradeup/v1/*.proto (a test fails when they are stale).
protos: install
	$(PYTHON) -m protos.generate

run: build
	TRADEUP_METRICS_PORT=$${TRADEUP_METRICS_PORT:-9464} $(PYTHON) -m server

migrate: build
	$(PYTHON) -m server migrate

seed: build
	$(PYTHON) -m server seed --replace

# The ghz/grpcurl/grpc_health_probe tests need the tools: built here when Go is there.
test: system-deps build
	@[ -x $(BIN)/ghz ] && [ -x $(BIN)/grpcurl ] && [ -x $(BIN)/grpc-health-probe ] || \
	  ! command -v go >/dev/null 2>&1 || $(MAKE) --no-print-directory tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m pytest -q

# The whole suite again with the pure-Python kernel serving.
test-python: system-deps build
	PATH="/usr/sbin:$$PATH" TRADEUP_ENGINE=python $(PYTHON) -m pytest -q

bench: bench-engine bench-db

bench-engine: build
	$(PYTHON) -m tests.bench.bench_engine

bench-db: system-deps build
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.bench_db

# ghz against the real server and MariaDB with the demo data; reports in results/.
loadtest: system-deps build
	@[ -x $(BIN)/ghz ] || $(MAKE) tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.loadtest

# Constant load at ~80 % of capacity; MINUTES=10 by default.
MINUTES ?= 10
soak: system-deps build
	@[ -x $(BIN)/ghz ] || $(MAKE) tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.soak --minutes $(MINUTES)

# WatchOffers: change -> watcher latency (polling, Redis), 1,000 watchers idle CPU and one car sold.
bench-watch: system-deps build
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.bench_watch

bench-growth: system-deps build
	@[ -x $(BIN)/ghz ] || $(MAKE) tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.loadtest --growth

# Change propagation (polling vs Redis), incremental refresh at 100,000 cars, Redis cost at c=16.
bench-fleet: system-deps build
	@[ -x $(BIN)/ghz ] || $(MAKE) tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.bench_fleet

# ghz, grpcurl and grpc_health_probe, pinned, into ./bin (needs Go).
tools:
	@command -v go >/dev/null 2>&1 || { echo "make tools needs Go (https://go.dev/dl or apt-get install golang): it builds ghz, grpcurl and grpc_health_probe with go install"; exit 1; }
	GOBIN=$(BIN) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)
	GOBIN=$(BIN) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	GOBIN=$(BIN) go install github.com/grpc-ecosystem/grpc-health-probe@$(HEALTH_PROBE_VERSION)

clean:
	rm -rf build *.egg-info $(STAMP) engine_ext/_kernel.c engine_ext/*.so
	find . -name __pycache__ -prune -exec rm -rf {} +
