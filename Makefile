# Two commands a new user needs: `make bench` and `make test`. Each sets itself up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements.stamp

# The main job on the embedded default data: ASA on the synthetic abdomen CT, sized for 20 min on 2 CPU cores.
BENCH_ARGS ?= method=asa suite=abdomen budget=laptop seed=0 protocol=finetune

.PHONY: bench test test-all venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when requirements.txt changed.
$(STAMP): requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

bench: $(STAMP)
	$(BIN)/python run_bench.py $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Include the slow end-to-end tests.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q --runslow

clean:
	rm -rf runs .pytest_cache
