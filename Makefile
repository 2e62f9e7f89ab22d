# Fresh machine: `make demo` runs the scoring job on the bundled samples; `make test` runs the suite.
# Both create/update the virtual environment first.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Network hygiene for every run and test: nothing talks to any address but loopback (pipelines/runtime.py).
# Not for the install step, which needs the package index (the dead proxy would block it).
HYGIENE := env RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
	AWS_EC2_METADATA_DISABLED=true HF_HUB_OFFLINE=1 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
	NO_PROXY=127.0.0.1,localhost RAY_AUTH_MODE=disabled

.PHONY: venv demo test lint bench starter report-screenshot demo-samples brisque-env quality clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The demo runs the Ray Data job (--runner ray), as a bucket would; a plain `piqa score` of a few photos runs its
# stages in its own process instead (README, "Small jobs").
demo: $(STAMP)
	$(HYGIENE) $(BIN)/piqa score samples/portraits --out demo-out/scores --shard-size 4 --overwrite --runner ray
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

# Retrain the shipped starter model (piqa_model/assets/starter) from ../shared/data: randomised degradations of every
# kind but `contrast` (held out as an unseen fault), then configs/starter.yaml, then the calibrated bundle.
STARTER_KINDS := blur,noise,jpeg,underexposure,overexposure,colour,resolution,mixture
starter: $(STAMP)
	$(HYGIENE) $(BIN)/piqa data degrade ../shared/data/portraits/london --out starter-data/london-synthetic \
		--levels 3 --max-size 448 --kinds $(STARTER_KINDS)
	$(HYGIENE) $(BIN)/piqa data degrade ../shared/data/portraits/congress --out starter-data/congress-synthetic \
		--levels 3 --max-size 448 --limit 60 --kinds $(STARTER_KINDS)
	$(HYGIENE) $(BIN)/piqa train --config configs/starter.yaml
	$(HYGIENE) $(BIN)/python -m training.starter

# The README's picture of the demo's report, from a fresh `make demo` with the shipped model (Debian's chromium).
CHROMIUM := /usr/bin/chromium
report-screenshot: demo
	test -x $(CHROMIUM) || (apt-get update && apt-get install -y chromium)
	$(CHROMIUM) --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
		--disable-component-update --disable-sync --proxy-server=http://127.0.0.1:9 --hide-scrollbars \
		--user-data-dir=$$(mktemp -d) --window-size=1200,1500 --screenshot=docs/report-demo.png \
		file://$(CURDIR)/demo-out/curated/report.html

# The demo's visibly bad portraits (samples/portraits/degraded_*.jpg), made by the project's degradation code.
demo-samples: $(STAMP)
	$(BIN)/python -m training.samples

# BRISQUE (stock SVM) for bench/quality.py needs numpy < 2 and OpenCV: an environment of its own.
BRISQUE_ENV := bench/out/brisque-env
$(BRISQUE_ENV)/.installed:
	$(PYTHON) -m venv $(BRISQUE_ENV)
	$(BRISQUE_ENV)/bin/pip install -q 'numpy<2' pillow 'brisque[opencv-python-headless]==0.2.0'
	touch $@

brisque-env: $(BRISQUE_ENV)/.installed

# Held-out quality of the shipped starter beside the ones before it (from git: `old`, the small Swin; `lite0`, the
# EfficientNet-Lite0 one) and BRISQUE: BENCHMARKS.md's table.
PREVIOUS_STARTERS := old=b66bf5b lite0=d1680cf
quality: $(STAMP) brisque-env
	bundles="--bundle starter=piqa_model/assets/starter"; \
	for previous in $(PREVIOUS_STARTERS); do name=$${previous%%=*}; dir=bench/out/$$name-starter; mkdir -p $$dir; \
		for f in config.json model.safetensors MODEL_CARD.md; do \
			git show $${previous#*=}:piqa_model/assets/starter/$$f > $$dir/$$f; done; \
		bundles="$$bundles --bundle $$name=$$dir"; done; \
	$(HYGIENE) $(BIN)/python bench/quality.py $$bundles

clean:
	rm -rf demo-out bench/out .pytest_cache
