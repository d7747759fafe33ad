# The two commands: `make run` and `make test`. Everything else is set up by them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test screenshots lint typecheck check clean distclean bench bench-quick wrk nginx caddy valgrind soak fuzz image

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

## run: embedded Postgres (unless DATABASE_URL), migrations, demo account/key/upstream, gateway
run: $(STAMP)
	$(BIN)/python -m gateway.devrun

## test: every test, against a throwaway embedded Postgres (unless DATABASE_URL)
# Real components come from Debian's packages (nothing is downloaded by hand): Chromium for
# the web page's browser tests (Playwright's own download is not possible here), and
# HAProxy, PgBouncer and Prometheus (promtool) for the production-topology tests, nginx and
# Caddy for the shipped ingress configurations (deploy/nginx, deploy/caddy). Without
# them those tests skip with the reason, except under CI=true, where that is a failure.
TEST_PROGRAMS := chromium haproxy pgbouncer prometheus promtool systemd-analyze nginx caddy
TEST_PACKAGES := chromium haproxy pgbouncer prometheus systemd nginx-light caddy
# The opt-in image test builds with podman on a base made by mmdebstrap.
ifeq ($(GATEWAY_TEST_IMAGE),1)
TEST_PROGRAMS += podman mmdebstrap
TEST_PACKAGES += podman mmdebstrap
endif
test: $(STAMP)
	@PATH="$$PATH:/usr/sbin:/sbin" command -v $(TEST_PROGRAMS) >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES) >/dev/null; } || echo "note: could not install $(TEST_PACKAGES) (not root?): the tests that need them will skip, or fail under CI=true"
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

## screenshots: every state of every console page at 1280 and 390 px into docs/screenshots/
## (the browser tests with UPDATE_SCREENSHOTS=1; each state is also checked with axe-core)
screenshots: $(STAMP)
	@PATH="$$PATH:/usr/sbin:/sbin" command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "note: could not install chromium (not root?)"
	rm -f docs/screenshots/*.png
	UPDATE_SCREENSHOTS=1 CI=true $(BIN)/python -m pytest -q tests/test_page.py tests/test_page_keys.py \
		tests/test_page_usage.py tests/test_page_members.py tests/test_page_audit.py tests/test_page_webhooks.py $(PYTEST_ARGS)

## soak: keys churn through the admin API under traffic for minutes, two workers; prints
## the totals and the wrong-decision count (SOAK_SECONDS, SOAK_WORKERS, SOAK_CLIENTS, SOAK_KEYS)
soak: $(STAMP)
	SOAK_SECONDS=$${SOAK_SECONDS:-180} SOAK_WORKERS=$${SOAK_WORKERS:-2} \
		$(BIN)/python -m pytest -s --timeout=0 tests/test_soak.py $(PYTEST_ARGS)

## fuzz: the differential framing fuzz (tests/test_framing_fuzz.py) with fresh random
## examples and a large budget: FRAMING_EXAMPLES per property (default 12000, about 20 minutes)
fuzz: $(STAMP)
	FUZZ_RANDOM=1 FRAMING_EXAMPLES=$${FRAMING_EXAMPLES:-12000} \
		$(BIN)/python -m pytest -q --timeout=0 --hypothesis-show-statistics tests/test_framing_fuzz.py $(PYTEST_ARGS)

## image: the container image from Containerfile (podman; CONTAINER_TOOL=docker works too).
## BASE=... picks the base image (docs/deployment.md: building one where no registry is
## reachable); IMAGE_BUILD_FLAGS=... adds build flags (e.g. --isolation chroot). The
## host's PIP_INDEX_URL and PIP_CERT (a CA bundle) are passed to the build stage.
## GATEWAY_TEST_IMAGE=1 make test builds it and smoke-tests it.
CONTAINER_TOOL ?= podman
IMAGE ?= growpanel-gateway:0.1.0
IMAGE_BUILD_FLAGS ?=
PODMAN_BUILD := $(filter podman,$(CONTAINER_TOOL))
image:
	$(CONTAINER_TOOL) build $(if $(PODMAN_BUILD),--format docker) \
		$(if $(BASE),--build-arg BASE=$(BASE)) \
		$(if $(PIP_INDEX_URL),--build-arg PIP_INDEX_URL=$(PIP_INDEX_URL)) \
		$(if $(and $(PIP_CERT),$(PODMAN_BUILD)),-v $(PIP_CERT):/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt) \
		$(IMAGE_BUILD_FLAGS) -t $(IMAGE) -f Containerfile .

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

## clean: remove the embedded Postgres data kept between `make run`s
clean:
	@if [ -f .data/pg/postmaster.pid ]; then $(BIN)/python -c "from pathlib import Path; from gateway.embedded_pg import EmbeddedPostgres; EmbeddedPostgres(Path('.data/pg')).stop()"; fi
	rm -rf .data

distclean: clean
	rm -rf $(VENV)

## bench: every benchmark figure as ratios from one run (about 20 minutes on 2 cores)
bench: $(STAMP) wrk nginx caddy valgrind
	$(BIN)/python bench/run.py

## bench-quick: the same, shorter runs and fewer keys (about 5 minutes)
bench-quick: $(STAMP) wrk nginx caddy valgrind
	$(BIN)/python bench/run.py --quick

wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || { echo "the benchmark needs wrk (apt-get install wrk)"; exit 1; }

# nginx is the benchmark's optional reference (a C proxy), and with Caddy the ingress in
# front of /_gateway/verify: installed where the OS packages allow, left out of the run
# where they do not.
nginx:
	@PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; } || echo "bench: nginx not installed, its reference figure is left out"

caddy:
	@command -v caddy >/dev/null || { apt-get update -qq && apt-get install -y -qq caddy >/dev/null; } || echo "bench: caddy not installed, its ingress figures are left out"

# valgrind's callgrind counts the instructions a request costs, the one figure that does
# not move with a shared machine's speed: left out where it cannot be installed.
valgrind:
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; } || echo "bench: valgrind not installed, the instruction counts are left out"
