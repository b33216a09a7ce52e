# Each command is defined once here; .ci/run calls `make test`.
# On a fresh Debian machine as root, `make test` and `make demo` install what
# is missing: the Debian packages the tests and the demo run for real
# (influxdb, openssh-server, pssh for the fan-out benchmark) and a .venv with
# the project and its test tools.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEBIAN_PACKAGES := influxdb openssh-server pssh
PYTEST_ARGS ?=

.PHONY: test lint typecheck pytest deps system-deps venv check-config \
        bench bench-fanout bench-guard bench-falsealarms bench-api clean demo demo-check

test: deps lint typecheck pytest

deps: system-deps venv

# installs only what is missing, so a second run costs nothing
system-deps:
	@missing=""; \
	command -v influxd >/dev/null 2>&1 || missing="$$missing influxdb"; \
	test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	command -v parallel-ssh >/dev/null 2>&1 || missing="$$missing pssh"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

pytest: deps
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: bench-fanout bench-guard bench-falsealarms bench-api

bench-fanout: deps
	$(BIN)/python -m bench.fanout

bench-guard: venv
	$(BIN)/python -m bench.guard

bench-falsealarms: venv
	$(BIN)/python -m bench.falsealarms --nab-gauges 100

bench-api: venv
	$(BIN)/python -m bench.api

check-config: venv
	$(BIN)/pushguard check-config -c config.toml

# the local sandbox: sshd hosts, InfluxDB, a shop with traffic and the daemon
# playing a story of pushes in the foreground; Ctrl-C stops all of it
demo: deps
	$(BIN)/python -m demo

# the same story headless with timings of seconds; exits 0 only if every step happened
demo-check: deps
	$(BIN)/python -m demo --check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# the long reliability runs (the suite runs short variants of both): SIGKILLs at random
# moments under both policies with bad changes among the good, and 25 pushes in a row to
# ten hosts under scraping and polling; each prints its figures
CHAOS_KILLS ?= 20
LOAD_PUSHES ?= 25
.PHONY: chaos load

chaos: deps
	CHAOS_KILLS=$(CHAOS_KILLS) CHAOS_BAD=0.2 CHAOS_POLICIES=halt,rollback \
	  $(BIN)/pytest -q -p no:cacheprovider -s tests/test_chaos.py

load: deps
	LOAD_PUSHES=$(LOAD_PUSHES) $(BIN)/pytest -q -p no:cacheprovider -s tests/test_load.py
