# `make test` is the README's test command (and what .ci/run calls). Every
# target runs scripts/setup.sh first, which installs what the build needs once.
CARGO ?= cargo
# libgomp's threads spin while waiting; on a loaded 2-core machine (parallel
# tests, CI) that spinning starves real work, so they sleep instead.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup build test lint serve default-model

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --release

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

test: lint
	$(CARGO) test

# The service on the shipped default bundle (gRPC :50051, metrics :9090).
# Extra arguments: make serve ARGS="--config config/smoothcert.toml"
serve: build
	target/release/smoothcert serve $(ARGS)

# Rebuilds the shipped default bundle with the whole pipeline (resumable; hours on a CPU).
default-model: setup
	bash scripts/default-model.sh
