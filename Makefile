# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse the
# virtualenv and install the locked dependencies first.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
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
	$(BIN)/pytest

test-fast: $(STAMP)  ## the edit loop: ruff, then every test not marked slow or service (under 2 minutes)
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not slow and not service"

lint-segments: $(STAMP)  ## check every segment file, for analysts
	$(BIN)/lifecycle lint

bench: $(STAMP)  ## DAG parsing with 50 segment files; an hourly cart-abandonment run at 100k customers; planning at 20k and 100k; send throughput against plain client loops
	$(BIN)/python benchmarks/parse_dags.py
	$(BIN)/python benchmarks/cart_abandonment_run.py
	$(BIN)/python benchmarks/plan_scale.py
	$(BIN)/python benchmarks/send_throughput.py

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
