# K2 developer tasks. Two commands on a fresh machine (Python 3.11, Java 17, Maven; no Docker):
#   make run    set up, start the local stack and a worker, replay the bundled sample into Iceberg
#   make test   set up, start the local stack, run every test
# The local stack needs no Docker: see deploy/local/stack.py.
#   make stack-up PROFILE=rest             (profiles: rest, prometheus; comma separated)
#   make stack-down [PURGE=1]              (PURGE=1 also deletes the stack's data under var/)

PYTHON3 ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
K2 := $(VENV)/bin/k2
PROFILE ?=
STACK := $(PYTHON3) deploy/local/stack.py
STACK_PROFILES := $(if $(strip $(PROFILE)),--profile "$(strip $(PROFILE))")
SAMPLE ?= data/sample
PYTEST_ARGS ?=

.PHONY: run test venv lint worker worker-stop stack-up stack-down stack-status clean

# --- the two commands -----------------------------------------------------------------

run: venv stack-up
	$(K2) init
	$(MAKE) --no-print-directory worker
	$(K2) replay $(SAMPLE)
	$(K2) tables --wait 120
	@echo
	@echo "The sample is in Iceberg. Look at it with:"
	@echo "  $(K2) tables                                  # rows, commits, offsets, lake lag"
	@echo "  $(K2) tables --head market_data.trades -n 5   # the first rows of a table"
	@echo "  pyiceberg's own CLI and API work too: the catalog is named k2 (see README, Configuration)"
	@echo "  curl -s http://127.0.0.1:$${K2_WEB_PORT:-6066}/performance/   # the worker's own view of lag"
	@echo "The worker keeps running (log: var/log/worker.log); stop it with 'make worker-stop',"
	@echo "and the stack with 'make stack-down'."

test: venv
	$(STACK) up --profile rest
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure" >&2; fi; \
	exit $$rc

# --- pieces -----------------------------------------------------------------------------

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON3) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "K2 needs Python >= 3.11; set PYTHON3=/path/to/python3.11")'
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

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
