# The two sacred commands: `make demo` and `make test`. Both create .venv when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: demo demo-shapes demo-xar demo-seed demo-layton demo-vat test test-fast setup clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

demo-shapes: $(STAMP)
	$(BIN)/python scripts/demo_shapes.py

demo-xar: $(STAMP)
	$(BIN)/python scripts/demo_xar.py

demo-seed: $(STAMP)
	$(BIN)/python scripts/demo_seed.py

demo-layton: $(STAMP)
	$(BIN)/python scripts/demo_layton.py
	$(BIN)/python scripts/demo_layton.py --data mnist

demo-vat: $(STAMP)
	$(BIN)/python scripts/demo_vat.py

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 2 -q

test-fast: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/trainer_overhead.py

clean:
	rm -rf runs
