# The README's two commands: `make demo` and `make test`. Everything else is a helper of those or `make bench`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint types pytest bench fmt clean

$(STAMP): pyproject.toml scripts/bootstrap-venv.sh
	PYTHON=$(PYTHON) scripts/bootstrap-venv.sh
	touch $@

## make demo: the router, a DNS server standing in for Cloud Map and demo backends, all on loopback
demo: $(STAMP)
	$(BIN)/whaleray-router demo

## make test: lint, types and the whole test suite (what .ci/run runs)
test: lint types pytest

lint: $(STAMP)
	$(BIN)/ruff check router tests benchmarks
	$(BIN)/ruff format --check router tests benchmarks

types: $(STAMP)
	$(BIN)/mypy --strict router

pytest: $(STAMP)
	$(BIN)/pytest

## make bench: the router side by side with Nginx on loopback (installs nginx and wrk with apt-get)
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

fmt: $(STAMP)
	$(BIN)/ruff format router tests benchmarks
	$(BIN)/ruff check --fix router tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
