# Set-up and the two everyday commands.  `make quickstart` and `make test` install
# everything they need on a fresh machine (a venv in .venv, CPU PyTorch first).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup quickstart loop-demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(VENV)/bin/raypipe run configs/quickstart.yaml

lint: setup
	$(VENV)/bin/ruff check raypipe tests benchmarks docs/hooks tools
	$(VENV)/bin/lint-imports
	$(PY) tools/mypy_ratchet.py
	$(VENV)/bin/raypipe validate configs/*.yaml
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

loop-demo: setup
	$(VENV)/bin/raypipe loop demo --out bench-out/closed_loop

test: lint
	$(PY) -m pytest -q -ra --durations=25

bench: setup
	$(PY) -m benchmarks.overhead --out bench-out/overhead

clean:
	rm -rf .raypipe bench-out .pytest_cache
