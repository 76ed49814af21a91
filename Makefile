# Two commands on a fresh machine: `make plan` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLEET ?= examples/fleet.yaml
OUT ?= out

.PHONY: venv plan test lint bench clean schema protos

$(BIN)/hashpivot: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/hashpivot

plan: venv
	$(BIN)/hashpivot plan $(FLEET) --out $(OUT)

test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: venv
	$(BIN)/python bench/bench_formulation.py

clean:
	rm -rf $(VENV) $(OUT)

schema: venv
	$(BIN)/hashpivot schema > schemas/fleet.schema.json

# Regenerate the gRPC code and stubs from protos/hashpivot/v1/*.proto, then lint the contract.
protos: venv
	PYTHON=$(BIN)/python scripts/gen_protos.sh
	$(BIN)/buf lint
