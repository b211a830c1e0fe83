# The two commands a newcomer needs: `make demo` and `make test`. Each does its own set-up.
SHELL := /bin/bash
ORT_LIB := $(CURDIR)/.ort/lib/libonnxruntime.so
export ORT_DYLIB_PATH ?= $(ORT_LIB)

.PHONY: demo test ort build release lint fmt bench bench-batching clean-demo

## ONNX Runtime from its PyPI wheel into .ort/ (git-ignored).
ort: $(ORT_LIB)
$(ORT_LIB):
	scripts/fetch-ort

build: ort
	cargo build --bins

release: ort
	cargo build --release --bins

## The whole analysis on the bundled model: tables, CSV, JSON and the two figures in demo-output/.
demo: build
	scripts/demo

## Every test: unit, handlers, the real server on loopback; golden references from PyTorch and scipy.
test: ort
	cargo test --all-targets -- --test-threads=2

## Throughput of 32 small concurrent clients, with and without dynamic batching.
bench-batching: ort
	cargo bench --bench batching

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt

clean-demo:
	rm -rf demo-output
