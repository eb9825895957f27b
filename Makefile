# covidct: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install demo test lint typecheck check clean browser pacs lesion-model

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of PyTorch first, so the range in pyproject.toml installs nothing bigger
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet "torch>=2.2,<3"
	$(BIN)/pip install --quiet -e ".[all,test,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/covidct demo -o $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# the viewer's browser tests drive Debian's headless Chromium (playwright never downloads a browser here)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "make test needs Chromium for the browser tests: install Debian's 'chromium' package (sudo apt-get install chromium)" >&2; \
	    exit 1; \
	  fi; }

# the DICOM node's tests run against a real PACS (Debian's Orthanc with its DICOMweb plugin) and validate
# every object covidct writes with dciodvfy (Debian's dicom3tools)
pacs:
	@{ command -v Orthanc >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1 \
	   && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's orthanc, orthanc-dicomweb and dicom3tools for the DICOM node tests" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb dicom3tools >/dev/null; \
	  else \
	    echo "make test needs Orthanc and dciodvfy for the DICOM node tests: sudo apt-get install orthanc orthanc-dicomweb dicom3tools" >&2; \
	    exit 1; \
	  fi; }

test: $(STAMP) browser pacs
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# retrain, measure and ship the lesion model (models/lesions): about an hour on a 2-core CPU
DATA ?= ../shared/data
LESION_RUN ?= runs/lesions
lesion-model: $(STAMP)
	$(BIN)/covidct train lesions --data $(DATA)/covid-semiseg/train/multiclass \
	  --pseudo $(DATA)/covid-semiseg/train/pseudo-label -o $(LESION_RUN) \
	  --epochs 24 --steps-per-epoch 80 --patience 6 --seed 0 --no-progress
	$(BIN)/python benchmarks/bench_lesions.py --model $(LESION_RUN) --out benchmarks/results/lesions.json
	$(BIN)/python scripts/ship_lesion_model.py $(LESION_RUN) models/lesions --measured benchmarks/results/lesions.json

check: lint typecheck test

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
