# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse the
# virtualenv and install the locked dependencies first.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
# Test processes (pytest-xdist): one per core, at most 4. Each has its own embedded PostgreSQL and
# Airflow home; --dist loadfile keeps a module's tests (and its module-scoped shop) in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST_PAR   := -n $(TEST_WORKERS) --dist loadfile
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test test-fast lint lint-segments bench bench-journeys lock clean

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)  ## run every journey through Airflow over the last 3 days on the embedded warehouse
	$(BIN)/lifecycle demo

test: $(STAMP)  ## ruff (with Airflow's AIR rules), then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_PAR)

test-fast: $(STAMP)  ## the edit loop: ruff, then every test not marked slow or service (under 2 minutes)
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_PAR) -m "not slow and not service"

lint-segments: $(STAMP)  ## check every segment file, for analysts
	$(BIN)/lifecycle lint

# Each benchmark runs under supervise.py: in its own session and TMPDIR, and whatever servers it
# leaves running (embedded PostgreSQL, SMTP sink, Airflow) are stopped, on Ctrl-C and failure too.
SUPERVISE := $(BIN)/python benchmarks/supervise.py $(BIN)/python

bench: $(STAMP)  ## DAG parsing; a cart-abandonment run at 100k; planning at 20k/100k; the shop at 100k/1M; batches vs a naive mapped DAG; send throughput against plain client loops; lifting sunsets at 100k; the validate stage per run, old and new
	$(SUPERVISE) benchmarks/parse_dags.py
	$(SUPERVISE) benchmarks/task_startup.py
	$(SUPERVISE) benchmarks/cart_abandonment_run.py
	$(SUPERVISE) benchmarks/plan_scale.py
	$(SUPERVISE) benchmarks/generate_shop.py
	$(SUPERVISE) benchmarks/naive_peer.py
	$(SUPERVISE) benchmarks/send_throughput.py
	$(SUPERVISE) benchmarks/lift_sunsets.py
	$(SUPERVISE) benchmarks/validate_cost.py

bench-journeys: $(STAMP)  ## the journey tests' run windows against their time budgets, and DAG parsing
	$(BIN)/python benchmarks/journey_replays.py

lock:  ## re-resolve requirements.txt into constraints.txt in a throwaway venv
	rm -rf /tmp/lifecycle-lock && $(PYTHON) -m venv /tmp/lifecycle-lock
	/tmp/lifecycle-lock/bin/pip install --quiet -r requirements.txt
	( echo "# Lock file: exact versions of every package (direct and transitive), from a clean install of"; \
	  echo "# requirements.txt on Python 3.11. Regenerate: make lock"; \
	  /tmp/lifecycle-lock/bin/pip freeze --exclude-editable ) > constraints.txt

clean:
	rm -rf .lifecycle demo_output
