# Two commands a new user needs: `make bench` and `make test`. Each sets itself up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Dependencies, extras and tool settings live in pyproject.toml; a change there reinstalls.
STAMP := $(VENV)/.install.stamp
DEV_STAMP := $(VENV)/.dev.stamp

# The main job on the embedded default data: ASA against random initialisation on the synthetic abdomen CT, each
# with three pretraining seeds tied to their transfer seeds, under the two representation probes at 12.5% labels
# (a Hydra sweep: random first, so the board written after ASA compares the two); sized for 20 min on 2 CPU cores.
BENCH_ARGS ?= -m method=random,asa suite=abdomen budget=laptop 'protocol=[voxel_probe,knn_seg]' label_fraction=0.125 pretrain_seed=tied

.PHONY: bench test test-all lint venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The checkout, editable, with the test extra (why editable: see the top of pyproject.toml).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

# The linters (the dev extra: ruff, mypy, pre-commit), only for `make lint`.
$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

venv: $(STAMP)

bench: $(STAMP)
	$(BIN)/python run_bench.py $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Include the slow end-to-end tests.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q --runslow

# ruff's lint rules and its formatter (check only) on the whole tree, mypy on bench/ (settings in pyproject.toml).
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy bench/

clean:
	rm -rf runs .pytest_cache
