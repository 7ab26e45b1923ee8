# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment on first use (python3 -m venv + pip install -e '.[test]') and reuses it afterwards.
PYTHON ?= python3
VENV ?= .venv
DEMO_OUT ?= demo_out
STAMP := $(VENV)/.mmrec-installed

.PHONY: demo test env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmrec demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --durations=15

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
