# K2 developer tasks. Two commands on a fresh machine (Python 3.11, Java 17, Maven; no Docker):
#   make run    set up, start the local stack and a worker, replay the bundled sample into Iceberg
#   make test   set up, start the local stack, run every test (the fault suite in its short version)
#   make test-faults         the fault suite's long version (K2_FAULTS_LONG=1; an hour or so)
#   make test-faults-short   the fault suite's short version alone (it is also part of `make test`)
#   make bench               K2 beside the floor, a bare Faust agent, Quix Streams and Kafka Connect, in three
#                            interleaved rounds (bench/compare.py; BENCH_ARGS="--events 100000 --rounds 5" to vary):
#                            results in bench/results/<date>.json and README's Performance section regenerated from them
#   make bench-short         its short version (floor, faust-bare, k2 on 20,000 events, 2 rounds; also in `make test`)
#   make bench-scaleout      1, 3 and 6 K2 workers on 12 partitions per topic and the REST catalog (bench/scaleout.py;
#                            SCALEOUT_ARGS to vary): bench/results/scaleout/<date>.json and README's Scale-out part
#   make soak                one K2 worker on live input for 60 minutes (bench/soak.py; SOAK_ARGS to vary): its RSS
#                            every 10 s, the second half's growth (at most 0.5 MiB/min, else exit 1) and the peak
#   make image               the image from Dockerfile, k2:latest (deploy/image/build.py): as users build it where
#                            an image registry answers, else on Debian's packages with a wheelhouse made here
#   make test-image          build it (or reuse it, by content hash) and run it against the local stack
#   make test-interop        Apache Spark with the Java Iceberg runtime reads every K2 table, on the embedded and the
#                            REST catalog, before and after `k2 maintain`, and follows tables across a compaction
#                            (tests/interop; its short version, the embedded catalog alone, is part of `make test`)
# The local stack needs no Docker: see deploy/local/stack.py.
#   make stack-up PROFILE=rest             (profiles: rest, prometheus; comma separated)
#   make stack-down [PURGE=1]              (PURGE=1 also deletes the stack's data under var/)
#   make system-deps                        (Debian's prometheus: promtool and a server, for the tests)

PYTHON3 ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
K2 := $(VENV)/bin/k2
PROFILE ?=
STACK := $(PYTHON3) deploy/local/stack.py
STACK_PROFILES := $(if $(strip $(PROFILE)),--profile "$(strip $(PROFILE))")
SAMPLE ?= data/sample
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
comma := ,
# `make run` adds the prometheus profile when Debian's prometheus is installed.
HAVE_PROMETHEUS := $(shell command -v prometheus >/dev/null 2>&1 && echo yes)
RUN_PROFILE := $(strip $(PROFILE)$(if $(HAVE_PROMETHEUS),$(if $(strip $(PROFILE)),$(comma))prometheus))

.PHONY: run test test-faults test-faults-short test-image test-interop image bench bench-short bench-scaleout soak venv interop-deps lint system-deps worker worker-stop stack-up stack-down stack-status clean

# --- the two commands -----------------------------------------------------------------

run: venv
	$(MAKE) --no-print-directory stack-up PROFILE="$(RUN_PROFILE)"
	$(K2) init
	$(MAKE) --no-print-directory worker
	$(K2) replay $(SAMPLE)
	$(K2) tables --wait 120
	@echo
ifeq ($(HAVE_PROMETHEUS),yes)
	$(PYTHON3) deploy/local/scrape.py
else
	@echo "Prometheus is not installed, so there is no scrape to show: 'make system-deps' installs"
	@echo "Debian's prometheus package; 'make run' then starts it with the stack (profile prometheus)."
endif
	@echo
	@echo "The sample is in Iceberg. Look at it with:"
	@echo "  $(K2) tables                                  # rows, commits, offsets, lake lag"
	@echo "  $(K2) tables --head market_data.trades -n 5   # the first rows of a table"
	@echo "  pyiceberg's own CLI and API work too: the catalog is named k2 (see README, Configuration)"
	@echo "  curl -s 'http://127.0.0.1:$${K2_WEB_PORT:-6066}/k2/lag?format=text'   # consumer and lake lag per partition"
	@echo "  curl -s http://127.0.0.1:$${K2_WEB_PORT:-6066}/k2/tables   # snapshots, commit ages, buffered rows"
	@echo "  curl -s http://127.0.0.1:$${K2_WEB_PORT:-6066}/metrics     # what Prometheus scrapes"
	@echo "  curl -s http://127.0.0.1:$${K2_WEB_PORT:-6066}/performance/   # faust's own view of lag"
	@echo "The worker keeps running (log: var/log/worker.log); stop it with 'make worker-stop',"
	@echo "and the stack with 'make stack-down'."

test: venv interop-deps system-deps
	$(STACK) up --profile rest
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure" >&2; fi; \
	exit $$rc

# The fault suite (tests/faults): K2's law under service and process faults, judged from Kafka and the
# lake. One report line per scenario, also appended to var/faults/report.json (K2_FAULTS_REPORT).
# K2_FAULTS_SEED picks the random moments and positions; K2_FAULTS_LAW: both (default: the rows and `k2 audit`), lake or audit.
test-faults: venv system-deps
	$(STACK) up --profile rest
	K2_FAULTS_LONG=1 $(PY) -m pytest -m faults tests/faults -s $(PYTEST_ARGS)

test-faults-short: venv system-deps
	$(STACK) up --profile rest
	$(PY) -m pytest -m faults tests/faults -s $(PYTEST_ARGS)

# The image: `Dockerfile` as users build it (python:3.11-slim, PyPI) where an image registry answers,
# else the same file on a base debootstrap makes of Debian's packages, pip installing from a wheelhouse
# made here by $(PYTHON3) (a 3.11). As root it installs and starts Debian's docker.io when no engine
# answers. IMAGE_BASE=registry|debian forces a path. About 9 minutes from nothing, seconds when unchanged.
IMAGE_BASE ?= auto
image:
	$(PYTHON3) deploy/image/build.py --base $(IMAGE_BASE) --sizes

# The image run as the Deployment runs it, against the local stack (tests/integration/test_image.py):
# too long from nothing for `make test`, which skips it.
test-image: venv
	$(STACK) up --profile rest
	K2_IMAGE_BASE=$(IMAGE_BASE) K2_TEST_IMAGE=1 $(PY) -m pytest -m image tests/integration/test_image.py -s $(PYTEST_ARGS)

# Spark reading K2's lake (tests/interop): pyspark from PyPI (the `interop` extra), Iceberg's Spark runtime,
# iceberg-aws-bundle and sqlite-jdbc from Maven Central into var/interop on first use.
test-interop: venv interop-deps
	$(STACK) up --profile rest
	K2_INTEROP_FULL=1 $(PY) -m pytest tests/interop -s $(PYTEST_ARGS)

# The benchmark (bench/compare.py): Quix Streams gets its own venv under var/bench and Kafka Connect
# its jars from Maven Central on first use. One full run (1M events, three rounds) takes about an hour.
BENCH_ARGS ?=
bench: venv
	$(STACK) up
	$(PY) bench/compare.py --readme $(BENCH_ARGS)

bench-short: venv
	$(STACK) up
	$(PY) bench/compare.py --events 20000 --rounds 2 --once '' --instruments 4 --systems floor,faust-bare,k2 \
	  --no-kill --no-freshness --no-soak --no-maintain --out var/bench/short.json $(BENCH_ARGS)

# Scale-out (bench/scaleout.py): K2 workers in one group on the REST catalog; about 20 minutes.
SCALEOUT_ARGS ?=
bench-scaleout: venv
	$(STACK) up --profile rest
	$(PY) bench/scaleout.py --readme $(SCALEOUT_ARGS)

# A worker's memory over an hour of live input (bench/soak.py): `k2 replay --rate` into fresh topics, the
# worker's RSS sampled every 10 s; fails when the second half grows faster than 0.5 MiB/min. Results in
# var/bench/soak/<run>.json. `--variant NAME:KEY=VALUE,...` soaks workers with other settings beside it.
SOAK_ARGS ?=
soak: venv
	$(STACK) up
	$(PY) bench/soak.py --rate 10000 --seconds 3600 $(SOAK_ARGS)

# --- pieces -----------------------------------------------------------------------------

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON3) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "K2 needs Python >= 3.11; set PYTHON3=/path/to/python3.11")'
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

# pyspark is ~455 MB (a source archive pip builds once, then a cached wheel): kept out of `dev` so that
# `make venv` stays small, installed by the targets whose tests read the lake with Spark.
interop-deps: $(VENV)/.interop-installed

$(VENV)/.interop-installed: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet -e '.[interop]'
	touch $@

# promtool checks the Prometheus configs, rules and exposition, and the integration tests run
# a real Prometheus server: Debian's package, installed only when either tool is missing. The
# operator page is tested in Debian's chromium (headless, driven by playwright's Python client).
system-deps:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
	  && command -v chromium >/dev/null 2>&1; then :; else \
	  echo "installing Debian's prometheus and chromium packages for the tests"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends prometheus chromium; \
	fi

lint: venv
	$(VENV)/bin/ruff check k2 tests deploy bench
	$(VENV)/bin/ruff format --check k2 tests deploy bench
	$(VENV)/bin/mypy

worker: venv
	$(PY) deploy/local/worker.py start

worker-stop:
	$(PYTHON3) deploy/local/worker.py stop

stack-up:
	$(STACK) up $(STACK_PROFILES)

stack-down: worker-stop
	$(STACK) down $(if $(PURGE),--purge)

stack-status:
	$(STACK) status $(STACK_PROFILES)

clean: stack-down
	rm -rf $(VENV) var
