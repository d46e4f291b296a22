# Needs only python3 (with venv and pip) and make. Everything else is installed into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test bench install clean browser postgres

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job, a full sync cycle, against the embedded sandbox (no CRM credentials needed).
demo: $(STAMP)
	$(BIN)/healthsync run

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

# Speed and memory targets; not run by CI.
bench: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/benchmarks -o python_files="bench_*.py" -o norecursedirs="" --timeout=3600
	$(BIN)/python tests/benchmarks/bench_sandbox.py 100000
	$(BIN)/python tests/benchmarks/bench_connectors.py 10000
	$(BIN)/python tests/benchmarks/bench_playbooks.py 1000000
	$(BIN)/python tests/benchmarks/bench_validation.py --telco

clean:
	rm -rf $(VENV) .healthsync build *.egg-info
