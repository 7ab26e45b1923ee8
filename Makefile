# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment on first use (python3 -m venv + pip install -e '.[test]' with the exact versions of
# constraints.txt, the tested set) and reuses it until pyproject.toml or constraints.txt changes.
# `make test` runs the linter (ruff, configured in pyproject.toml) before the tests.
PYTHON ?= python3
VENV ?= .venv
DEMO_OUT ?= demo_out
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.mmrec-installed

.PHONY: demo test lint env clean

env: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmrec demo --out $(DEMO_OUT)

test: lint
	$(VENV)/bin/python -m pytest -q --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
