# Needs only python3 (with venv and pip) and make. Everything else is installed into .venv.
# VENV=/path/to/venv uses another virtualenv (`make -o /path/to/venv/.installed-dev demo` also skips
# reinstalling into it: the fresh-clone demo test does that to reuse the suite's own environment).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# where `make demo` writes the portfolio report
DEMO_REPORT ?= .healthsync/demo-report.html

.PHONY: demo demo-reset test bench install clean browser postgres

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever the project's dependencies change; pip's output goes to a log, shown only on failure.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "installing healthsync and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --quiet -e '.[dev]' > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

# The main job against the embedded sandbox (no CRM credentials needed). The sandbox world and the
# state are kept: each `make demo` is one emulated day after the previous one and sends only what
# changed. Then the report, the run history, and how to point healthsync at a real CRM.
demo: $(STAMP)
	@$(BIN)/healthsync run
	@$(BIN)/healthsync report --out $(DEMO_REPORT)
	@echo
	@$(BIN)/healthsync status
	@echo
	@echo "To sync your own CRM instead (README: Configuration, Secrets):"
	@echo "  export HEALTHSYNC__HUBSPOT__ACCESS_TOKEN=...   # a HubSpot private app token, or the Salesforce variables"
	@echo "  echo 'sources: {hubspot: {tier: professional}}' > healthsync.yaml   # your settings; its state sits next to it"
	@echo "  $(BIN)/healthsync crm setup --config healthsync.yaml && $(BIN)/healthsync run --config healthsync.yaml"

# Start the demo over: a new sandbox world and an empty demo state on the next `make demo`.
demo-reset: $(STAMP)
	@$(BIN)/healthsync sandbox reset

# Headless Chromium for the report test (Debian package; skipped where apt-get is unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the browser test will be skipped"; }

# PostgreSQL server binaries for the tests that need a real server (tests/postgres_server.py starts
# a private one per test session; Debian package; skipped where apt-get is unavailable).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "postgresql not installed: the PostgreSQL tests will be skipped"; }

# Four workers, one test file each at a time: the end-to-end tests mostly wait on emulated rate
# limits and Slack pacing, so they overlap well even on two cores.
test: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q -n 4 --dist loadfile

# Speed and memory targets; not run by CI. The pytest line runs bench_engine, bench_generator,
# bench_report, bench_warehouse and bench_offline_duckdb (score --input against the default model in
# DuckDB SQL, 300,000 accounts; BENCH_OFFLINE_ACCOUNTS / BENCH_OFFLINE_ROUNDS / BENCH_OFFLINE_DIR).
bench: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/benchmarks -o python_files="bench_*.py" -o norecursedirs="" --timeout=3600
	$(BIN)/python tests/benchmarks/bench_sandbox.py 100000
	$(BIN)/python tests/benchmarks/bench_connectors.py 10000
	$(BIN)/python tests/benchmarks/bench_playbooks.py 1000000
	$(BIN)/python tests/benchmarks/bench_validation.py --telco
	nice $(BIN)/python tests/benchmarks/bench_e2e.py --accounts 20000

clean:
	rm -rf $(VENV) .healthsync build *.egg-info
