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
        bench bench-fanout bench-guard bench-api clean

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
	$(BIN)/ruff check daemon api checks tests bench demo

typecheck: venv
	$(BIN)/mypy

pytest: deps
	$(BIN)/pytest -q $(PYTEST_ARGS)

check-config: venv
	$(BIN)/pushguard check-config -c config.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
