# Fresh machine: `make demo` runs the scoring job on the bundled samples; `make test` runs the suite.
# Both create/update the virtual environment first.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Network hygiene: nothing talks to any address but loopback (see ../shared/docs/design.md).
export RAY_USAGE_STATS_ENABLED=0
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=true
export AWS_EC2_METADATA_DISABLED=true
export HF_HUB_OFFLINE=1
export HTTP_PROXY=http://127.0.0.1:9
export HTTPS_PROXY=http://127.0.0.1:9
export NO_PROXY=127.0.0.1,localhost
export RAY_AUTH_MODE=disabled

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/piqa score samples/portraits --out demo-out/scores --shard-size 4 --overwrite
	$(BIN)/piqa show demo-out/scores
	$(BIN)/piqa filter demo-out/scores --out demo-out/curated --require-face --top-fraction 0.5 --report \
		--reshard-to demo-out/curated/tars --shard-size 4
	@echo "scores: demo-out/scores/*.parquet (manifest: _manifest.json); curated: demo-out/curated/ (report.html)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

bench: $(STAMP)
	$(BIN)/python bench/pipeline_throughput.py

clean:
	rm -rf demo-out bench/out .pytest_cache
