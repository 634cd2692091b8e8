# The two README commands: `make demo` and `make test`. Each sets everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8050

.PHONY: setup demo serve test test-sqlite test-postgres test-fast system-deps lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build that lies on this machine; nothing later upgrades it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,postgres,cluster]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/prunescope demo --port $(PORT)

serve: setup
	$(VENV)/bin/prunescope serve --port $(PORT)

system-deps:
	bash scripts/install-system-deps.sh

# The whole suite on SQLite, then every test that uses the database again on PostgreSQL.
test: test-sqlite test-postgres

test-sqlite: setup system-deps
	$(PY) -m pytest -q

test-postgres: setup system-deps
	PRUNESCOPE_TEST_DATABASE=postgres $(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not e2e"

lint: setup
	$(VENV)/bin/ruff check prunescope server dashboard workers models tests bench

clean:
	rm -rf $(VENV) .venv-py3* .prunescope .pytest_cache
