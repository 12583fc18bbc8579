# Trade-Up Engine.  `make run`: install and serve on the embedded database with demo data.
#                   `make test`: install and run the whole test suite.
# Everything runs in the project's own virtualenv (VENV, created with `python3 -m venv`), so
# neither Debian's externally-managed Python nor packages already on the machine break or hide
# anything. CI passes VENV=<a new directory> to start from nothing every run.
BASE_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.tradeup-installed
BIN := $(CURDIR)/bin
GHZ_VERSION := v0.120.0
GRPCURL_VERSION := v1.9.3
HEALTH_PROBE_VERSION := v0.4.62
# buf (protos lint and breaking-change check), pinned by tools/buf/package-lock.json.
BUF := tools/buf/node_modules/.bin/buf
# The Node client of tests/test_errors.py, pinned by tests/node/package-lock.json (npm writes this file).
NODE_CLIENT := tests/node/node_modules/.package-lock.json

.PHONY: install build-deps system-deps build protos run migrate seed test test-python bench bench-engine bench-db \
	bench-growth bench-server bench-fleet bench-watch bench-search loadtest soak chaos tools buf node-client \
	constraints clean deploy-deps deploy-test

# What building needs, from Debian's packages when missing: a C compiler, the Python headers
# and venv (Debian splits both out of python3).
build-deps:
	@missing=""; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	$(BASE_PYTHON) -c 'import ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	$(BASE_PYTHON) -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_path("include") + "/Python.h")' \
	  >/dev/null 2>&1 || missing="$$missing python3-dev"; \
	$(call apt_install,$$missing)

# What the tests need besides: MariaDB, Redis, h2load, openssl (test certificates), npm (buf, the Node client).
system-deps: build-deps
	@missing=""; \
	command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server mariadb-client"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v h2load >/dev/null 2>&1 || missing="$$missing nghttp2-client"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	$(call apt_install,$$missing)

define apt_install
if [ -n "$(1)" ]; then \
  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
  echo "installing Debian packages:$(1)"; \
  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $(1) >/dev/null; \
fi
endef

$(PYTHON): | build-deps
	$(BASE_PYTHON) -m venv $(VENV)

# The project (editable, the kernel compiled in place) with its test extra, at the versions of constraints.txt.
$(INSTALLED): pyproject.toml setup.py constraints.txt | $(PYTHON)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

install: $(INSTALLED)

# Rebuild the compiled kernel after editing _kernel.pyx (Cython lives in the build environment).
engine_ext/_kernel.c: engine_ext/_kernel.pyx | install
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps -e .

build: install engine_ext/_kernel.c

# Regenerate the committed stubs from protos/tradeup/v1/*.proto (a test fails when they are stale).
protos: install
	$(PYTHON) -m protos.generate

run: build
	TRADEUP_METRICS_PORT=$${TRADEUP_METRICS_PORT:-9464} $(PYTHON) -m server

migrate: build
	$(PYTHON) -m server migrate

# The demo data, on request only (the embedded database is seeded at start when empty).
seed: build
	$(PYTHON) -m server seed --replace

# The ghz/grpcurl/grpc_health_probe/kube-check tests need the tools: built here when Go is there.
test: system-deps build buf node-client
	@[ -x $(BIN)/ghz ] && [ -x $(BIN)/grpcurl ] && [ -x $(BIN)/grpc-health-probe ] && [ -x $(BIN)/kube-check ] || \
	  ! command -v go >/dev/null 2>&1 || $(MAKE) --no-print-directory tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m pytest -q

# What running the deployment needs: podman with the runc runtime, catatonit (the pause process of
# `podman kube play`) and mmdebstrap (a stand-in base image when the registry's cannot be pulled);
# podman's settings for them as a containers.conf drop-in (deploy/podman-containers.conf).
PODMAN_CONF := /etc/containers/containers.conf.d/tradeup-engine.conf
deploy-deps:
	@missing=""; \
	for tool in podman runc catatonit mmdebstrap; do \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || [ -x /usr/bin/$$tool ] || missing="$$missing $$tool"; \
	done; \
	$(call apt_install,$$missing)
	@cmp -s deploy/podman-containers.conf $(PODMAN_CONF) || { sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo install -D -m 0644 deploy/podman-containers.conf $(PODMAN_CONF); }

# Build the image from deploy/Dockerfile and run it: the embedded default, two read-only replicas
# on a private MariaDB and Redis, a stop under load, the Kubernetes manifests played
# (tests/test_deploy_run.py, marked `deploy`: `make test` leaves it out).
deploy-test: system-deps deploy-deps build $(BIN)/kube-check
	@[ -x $(BIN)/grpc-health-probe ] || $(MAKE) --no-print-directory tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m pytest -q -s -m deploy tests/test_deploy_run.py

# The whole suite again with the pure-Python kernel serving.
test-python: system-deps build buf node-client
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

# Two instances x 2 processes on MariaDB and Redis under every kind of caller while the database
# restarts, Redis dies, an instance is stopped and cars and parameters change; CHAOS_SECONDS=600
# by default. Prints status codes per RPC and the checks; fails when one fails.
CHAOS_SECONDS ?= 600
chaos: system-deps build
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.chaos --seconds $(CHAOS_SECONDS)

# Every RPC on SQLite and MariaDB, 1 and 2 processes, with ghz and h2load: req/s, p50/p99, errors,
# server CPU per call and the share of the health rate. BENCH_SECONDS per cell (3 by default).
BENCH_SECONDS ?= 3
bench-server: system-deps build
	@[ -x $(BIN)/ghz ] || $(MAKE) tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.bench_server --seconds $(BENCH_SECONDS)

# WatchOffers: change -> watcher latency (polling, Redis), 1,000 watchers idle CPU and one car sold.
bench-watch: system-deps build
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.bench_watch

# SearchService at 100,000 cars: facets, inventory pages, customer pages (median, p95, goals).
bench-search: build
	$(PYTHON) -m tests.bench.bench_search

bench-growth: system-deps build
	@[ -x $(BIN)/ghz ] || $(MAKE) tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.loadtest --growth

# Change propagation (polling vs Redis), incremental refresh at 100,000 cars, Redis cost at c=16.
bench-fleet: system-deps build
	@[ -x $(BIN)/ghz ] || $(MAKE) tools
	PATH="/usr/sbin:$$PATH" $(PYTHON) -m tests.bench.bench_fleet

# buf from the npm registry (the package ships the binary), at the version of the lock file.
$(BUF): tools/buf/package.json tools/buf/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make buf needs npm (apt-get install npm)"; exit 1; }
	npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error
	@touch $@

buf: $(BUF)

$(NODE_CLIENT): tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make node-client needs npm (apt-get install npm)"; exit 1; }
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
	@touch $@

node-client: $(NODE_CLIENT)

# Pin what the project installs now (after a deliberate upgrade).
constraints: install
	{ sed -n '/^#/p' constraints.txt; $(PYTHON) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# ghz, grpcurl and grpc_health_probe, pinned, into ./bin (needs Go); and kube-check
# (tools/kube-check: the Kubernetes manifests decoded strictly into the k8s.io/api types of its go.mod).
define need_go
@command -v go >/dev/null 2>&1 || { echo "make tools needs Go (https://go.dev/dl or apt-get install golang): it builds ghz, grpcurl, grpc_health_probe and kube-check with go install"; exit 1; }
endef

tools: $(BIN)/kube-check
	$(need_go)
	GOBIN=$(BIN) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)
	GOBIN=$(BIN) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	GOBIN=$(BIN) go install github.com/grpc-ecosystem/grpc-health-probe@$(HEALTH_PROBE_VERSION)

$(BIN)/kube-check: tools/kube-check/main.go tools/kube-check/go.mod tools/kube-check/go.sum
	$(need_go)
	cd tools/kube-check && GOBIN=$(BIN) go install .

clean:
	rm -rf build *.egg-info client/build client/*.egg-info engine_ext/_kernel.c engine_ext/*.so
	find . -name __pycache__ -prune -exec rm -rf {} +
