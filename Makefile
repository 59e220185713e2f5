# vae-service: the two commands a new user needs are `make serve` and `make test`; `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REPOSITORY ?= artifacts
RUN ?= runs/fashion-mnist
# `make export` writes a new version into a repository of your own, never into the bundled artifacts/:
# serve it with `make serve REPOSITORY=$(EXPORT_REPOSITORY)`.
EXPORT_REPOSITORY ?= runs/models
MODEL_NAME ?= fashion-mnist-vae
VERSION ?= 1.0.0
MODEL_DIR ?= $(EXPORT_REPOSITORY)/$(MODEL_NAME)/$(VERSION)
# Where `make serve` listens: this machine only, unless HOST=0.0.0.0 (every interface) is asked for.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve install-train protos lint test test-unit test-integration test-container train eval export docs bench bench-quick bench-anomaly bench-argument clean help

help:
	@echo "make serve          - install the serving dependencies and serve the bundled model repository ($(REPOSITORY))"
	@echo "                      on http://$(HOST):$(PORT)/ (HOST=0.0.0.0 for every interface, PORT=... for another port)"
	@echo "make test           - install everything and run the whole test suite"
	@echo "make lint           - the checks CI runs before the tests: ruff check, ruff format --check, mypy"
	@echo "make install-train  - install the training tools (vae-train, vae-eval, vae-average, vae-export) and nothing else"
	@echo "make train / eval   - train the default model into $(RUN) (170 epochs, hours on a CPU), evaluate it"
	@echo "make export         - export $(RUN)/best.pt as a new version, $(MODEL_DIR) (refuses an existing one)"
	@echo "make docs           - build the documentation site into build/site/ (mkdocs build --strict, offline)"
	@echo "make bench          - serving and training benchmarks into bench/results/ (about half an hour)"

# Serving needs no torch: the base install is onnxruntime, numpy, Pillow, FastAPI.
$(BIN)/.serve-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.train-installed: pyproject.toml $(BIN)/.serve-installed
	$(BIN)/python -m pip install -q -e '.[train]'
	touch $@

$(BIN)/.dev-installed: pyproject.toml $(BIN)/.train-installed
	$(BIN)/python -m pip install -q -e '.[train,test]'
	touch $@

$(BIN)/.docs-installed: pyproject.toml $(BIN)/.serve-installed
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

# vae-serve's first line says where it really listens: HOST is passed to it as --host.
serve: $(BIN)/.serve-installed
	$(BIN)/vae-serve --model-repository $(REPOSITORY) --host $(HOST) --port $(PORT)

# The training tools alone (torch, onnx, ...), without starting a run or the test suite.
install-train: $(BIN)/.train-installed
	@echo "installed: $(BIN)/vae-train, vae-eval, vae-average, vae-export"

# The whole suite: unit and integration tests, then the integration suite against the container
# image (skipped, with a message, where no container engine exists).
# The checks CI runs before the tests: ruff's linter and formatter, and mypy (strict on model/core,
# service and export; the configuration is in pyproject.toml).
lint: $(BIN)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(BIN)/.dev-installed
	$(BIN)/python -m pytest tests
	PYTHON=$(BIN)/python bash docker/test-image.sh

train: $(BIN)/.train-installed
	$(BIN)/vae-train --out $(RUN)

eval: $(BIN)/.train-installed
	$(BIN)/vae-eval $(RUN)/best.pt --k 5000 --report $(RUN)/report

# A new version directory only: vae-export replaces an earlier export as a whole, so an existing
# directory (a bundled version among them) is refused here rather than overwritten.
export: $(BIN)/.train-installed
	@if [ -e "$(MODEL_DIR)" ]; then \
		echo "make export: $(MODEL_DIR) already exists; name a new version: make export VERSION=..." >&2; exit 1; \
	fi
	$(BIN)/vae-export $(RUN)/best.pt $(MODEL_DIR) --name $(MODEL_NAME) --version $(VERSION) --report $(RUN)/report

# The documentation site, built offline (no fonts or scripts from a CDN) into build/site/; CI runs it too.
docs: $(BIN)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir build/site

# About half an hour on 2 cores: interleaved rounds of short wrk windows (the plans are in bench/run.py and
# bench/scaleout.py: two replicas behind a round-robin proxy against one), the soak, and training
# throughput (1 process x 2 threads against 2 DDP processes x 1 thread); before them, the bundled
# latent-diffusion autoencoder's encode and decode cost at 28 to 512 px (bench/autoencoder_cost.py).
bench: $(BIN)/.dev-installed
	$(BIN)/python -m bench.decoder_cost
	$(BIN)/python -m bench.autoencoder_cost
	$(BIN)/python -m bench.inprocess
	$(BIN)/python -m bench.tracing_cost
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.hot_path --step before=0ac970c --step now=.
	$(BIN)/python -m bench.scaleout
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.train_throughput
	$(BIN)/python -m bench.grpc_http
	$(BIN)/python -m bench.report

# The gRPC messages' Python module, from service/grpc_server/protos/vae_inference.proto (grpcio-tools' protoc);
# tests/unit/service/grpc_server/test_proto.py fails while the committed module differs from what this writes.
protos: $(BIN)/.dev-installed
	$(BIN)/python -m grpc_tools.protoc -I service/grpc_server/protos --python_out=service/grpc_server \
		--pyi_out=service/grpc_server service/grpc_server/protos/vae_inference.proto

# The CI guard, under a minute: /encode vs the minimal app over 5 interleaved rounds, fails below 0.7x.
bench-quick: $(BIN)/.dev-installed
	$(BIN)/python -m bench.run --quick

# The anomaly benchmark (a few minutes on 2 cores), on the served default version: bench/results/anomaly.json,
# its figure and the table in docs/anomaly.md; then the anomaly maps (bench/results/anomaly_maps.json, about a
# quarter of an hour: it trains three small texture models into runs/bench-anomaly-maps/, reused once trained).
bench-anomaly: $(BIN)/.dev-installed
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.anomaly
	$(BIN)/python -m bench.anomaly_maps
	$(BIN)/python -m bench.report

# Prior against importance sampling (docs/design/sampling.md), a minute or two on 2 cores, on the
# latest artifacts/fashion-mnist-gaussian/ (or ARGUMENT_MODEL_DIR=...): bench/results/seed_argument.{json,png}.
ARGUMENT_MODEL_DIR ?=
bench-argument: $(BIN)/.dev-installed
	$(BIN)/python -m bench.seed_argument $(if $(ARGUMENT_MODEL_DIR),--model-dir $(ARGUMENT_MODEL_DIR))
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
