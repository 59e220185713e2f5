# vae-service: the two commands a new user needs are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REPOSITORY ?= artifacts
VERSION ?= 2.0.0
MODEL_DIR ?= $(REPOSITORY)/fashion-mnist-vae/$(VERSION)
RUN ?= runs/fashion-mnist
PORT ?= 8000

.PHONY: serve test test-unit test-integration test-container train eval export bench bench-quick bench-anomaly bench-argument clean help

help:
	@echo "make serve   - install the serving dependencies and serve the bundled model repository ($(REPOSITORY)) on :$(PORT)"
	@echo "make test    - install everything and run the whole test suite"
	@echo "make train / eval / export - train the default model, evaluate it, export it to $(MODEL_DIR)"
	@echo "make bench   - serving and training benchmarks into bench/results/"

# Serving needs no torch: the base install is onnxruntime, numpy, Pillow, FastAPI.
$(BIN)/.serve-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.dev-installed: pyproject.toml $(BIN)/.serve-installed
	$(BIN)/python -m pip install -q -e '.[train,test]'
	touch $@

serve: $(BIN)/.serve-installed
	@echo "vae-serve: the explorer will be at http://localhost:$(PORT)/ (API reference: http://localhost:$(PORT)/docs)"
	$(BIN)/vae-serve --model-repository $(REPOSITORY) --port $(PORT)

# The whole suite: unit and integration tests, then the integration suite against the container
# image (skipped, with a message, where no container engine exists).
test: $(BIN)/.dev-installed
	$(BIN)/python -m pytest tests
	PYTHON=$(BIN)/python bash docker/test-image.sh

train: $(BIN)/.dev-installed
	$(BIN)/vae-train --out $(RUN)

eval: $(BIN)/.dev-installed
	$(BIN)/vae-eval $(RUN)/best.pt --k 5000 --report $(RUN)/report

export: $(BIN)/.dev-installed
	$(BIN)/vae-export $(RUN)/best.pt $(MODEL_DIR) --version $(VERSION) --report $(RUN)/report

# About half an hour on 2 cores: interleaved rounds of short wrk windows (the plans are in bench/run.py and
# bench/scaleout.py: two replicas behind a round-robin proxy against one), the soak, and training
# throughput (1 process x 2 threads against 2 DDP processes x 1 thread).
bench: $(BIN)/.dev-installed
	$(BIN)/python -m bench.decoder_cost
	$(BIN)/python -m bench.inprocess
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.scaleout
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.train_throughput
	$(BIN)/python -m bench.report

# The CI guard, under a minute: /encode vs the minimal app over 5 interleaved rounds, fails below 0.7x.
bench-quick: $(BIN)/.dev-installed
	$(BIN)/python -m bench.run --quick

# The anomaly benchmark (a few minutes on 2 cores): bench/results/anomaly.json, its figure and README table.
bench-anomaly: $(BIN)/.dev-installed
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.anomaly
	$(BIN)/python -m bench.report

# Prior against importance sampling (README: Why z is sampled from q(z|x)), a minute or two on 2 cores, on the
# latest artifacts/fashion-mnist-gaussian/ (or ARGUMENT_MODEL_DIR=...): bench/results/seed_argument.{json,png}.
ARGUMENT_MODEL_DIR ?=
bench-argument: $(BIN)/.dev-installed
	$(BIN)/python -m bench.seed_argument $(if $(ARGUMENT_MODEL_DIR),--model-dir $(ARGUMENT_MODEL_DIR))
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
