# kafcel: `make demo` and `make test` do all the set-up on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=
CHAOS_ARGS ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: all venv setup test-setup lint format test demo chaos bench dev-up dev-down clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# System packages, from Debian when absent: redis-server, rabbitmq-server (Celery's broker
# in the RabbitMQ tests, chaos rows and bench row, which start their own on ports of their
# own, as Redis), a JDK (17 or newer) and Maven
# (Apache Kafka: Maven copies its pinned jars from Maven Central into .kafcel/kafka/ once,
# on the first `kafcel dev up`), chromium for the tests only (the browser the dashboard test
# drives with Playwright; Playwright's own download is not used), and nftables and iproute2
# (nft, ip: the chaos suite's network partitions). Tansu, the second broker, comes from the
# dev extras.
CHROMIUM ?= /usr/bin/chromium
APT_INSTALL = \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; \
		else echo "missing:$$missing; this user cannot install it: apt-get install$$missing" >&2; exit 1; fi; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

JAVA_MAJOR = $$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
STACK_PACKAGES = \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1; } \
		|| missing="$$missing rabbitmq-server"; \
	[ "$(JAVA_MAJOR)" -ge 17 ] 2>/dev/null || missing="$$missing default-jdk-headless"; \
	command -v mvn >/dev/null 2>&1 || missing="$$missing maven"; \
	{ [ -x /usr/sbin/nft ] || command -v nft >/dev/null 2>&1; } || missing="$$missing nftables"; \
	{ [ -x /usr/sbin/ip ] || command -v ip >/dev/null 2>&1; } || missing="$$missing iproute2";

setup: venv
	@missing=""; \
	$(STACK_PACKAGES) \
	$(APT_INSTALL)

test-setup: venv
	@missing=""; \
	$(STACK_PACKAGES) \
	[ -x "$(CHROMIUM)" ] || missing="$$missing chromium"; \
	$(APT_INSTALL)

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix src tests benchmarks examples
	$(BIN)/ruff format src tests benchmarks examples

test: test-setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/kafcel demo $(DEMO_ARGS)

# Faults injected into a running pipeline (own Apache Kafka and Redis on free ports;
# --broker tansu for Tansu); N=10,000 per scenario by default.
# Example: make chaos CHAOS_ARGS="--tasks 1000 --only poison"
chaos: setup
	$(BIN)/kafcel chaos $(CHAOS_ARGS)

# kafcel against plain Celery and Celery's Kafka transport, on its own Apache Kafka (or
# --broker tansu) and Redis (docs/benchmarks.md).
# Examples: make bench BENCH_ARGS="--quick"; BENCH_ARGS="--json --docs"
bench: setup
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

dev-up: setup
	$(BIN)/kafcel dev up

dev-down: venv
	$(BIN)/kafcel dev down

clean:
	rm -rf $(VENV) .kafcel .pytest_cache .mypy_cache .ruff_cache
