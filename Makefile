# Fresh machine: `make demo` runs the scoring job on the bundled samples; `make test` runs the suite.
# Both create/update the virtual environment first.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Network hygiene for every run and test: nothing talks to any address but loopback (../shared/docs/design.md).
# Not for the install step, which needs the package index (the dead proxy would block it).
HYGIENE := env RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
	AWS_EC2_METADATA_DISABLED=true HF_HUB_OFFLINE=1 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
	NO_PROXY=127.0.0.1,localhost RAY_AUTH_MODE=disabled

.PHONY: venv demo test lint bench starter clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(HYGIENE) $(BIN)/piqa score samples/portraits --out demo-out/scores --shard-size 4 --overwrite
	$(HYGIENE) $(BIN)/piqa show demo-out/scores
	$(HYGIENE) $(BIN)/piqa filter demo-out/scores --out demo-out/curated --require-face --top-fraction 0.5 --report \
		--reshard-to demo-out/curated/tars --shard-size 4
	@echo "scores: demo-out/scores/*.parquet (manifest: _manifest.json); curated: demo-out/curated/ (report.html)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(HYGIENE) $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

bench: $(STAMP)
	$(HYGIENE) $(BIN)/python bench/pipeline_throughput.py

# Retrain the shipped starter model (piqa_model/assets/starter) from ../shared/data; ~2.5 h on 2 idle CPU cores.
starter: $(STAMP)
	$(HYGIENE) $(BIN)/piqa data degrade ../shared/data/portraits/london --out starter-data/london-synthetic \
		--levels 4 --max-size 256
	$(HYGIENE) $(BIN)/piqa data degrade ../shared/data/portraits/congress --out starter-data/congress-synthetic \
		--levels 4 --max-size 256 --limit 60
	$(HYGIENE) $(BIN)/piqa train --config configs/starter.yaml
	$(HYGIENE) $(BIN)/piqa train --config configs/starter-finetune.yaml
	$(HYGIENE) $(BIN)/piqa train --config configs/starter-stage3.yaml
	$(HYGIENE) $(BIN)/piqa train --config configs/starter-stage4.yaml
	$(HYGIENE) $(BIN)/piqa train --config configs/starter-stage5.yaml
	$(HYGIENE) $(BIN)/python -m training.starter

clean:
	rm -rf demo-out bench/out .pytest_cache
