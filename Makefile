# Two commands on a fresh machine: `make plan` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLEET ?= examples/fleet.yaml
OUT ?= out
# The five-year example's robustness pass, sized to a few minutes on two cores: fewer SAA replications and
# foresight solves than the defaults, no sensitivity re-solves. `make plan PLAN_FLAGS=` runs the full pass.
PLAN_FLAGS ?= --oos-scenarios 200 --replications 2 --wait-and-see 20 --no-sensitivity

.PHONY: venv plan test lint bench clean schema protos browser

$(BIN)/hashpivot: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/hashpivot

plan: venv
	$(BIN)/hashpivot plan $(FLEET) --out $(OUT) $(PLAN_FLAGS)

# Headless Chromium for the report screenshot test (tests/services/test_report_browser.py): installed only when
# absent, with apt as root; otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y chromium || { apt-get update && apt-get install -y chromium; } || true; \
	  else echo "chromium not found: the report screenshot test will skip (apt-get install -y chromium)"; fi

test: venv browser
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
