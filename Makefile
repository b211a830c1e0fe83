# The two commands a newcomer needs: `make demo` and `make test`. Each does its own set-up.
SHELL := /bin/bash
ORT_LIB := $(CURDIR)/.ort/lib/libonnxruntime.so
export ORT_DYLIB_PATH ?= $(ORT_LIB)

.PHONY: demo test python-test ort build release lint fmt bench bench-levers bench-batching clean-demo docker-test

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

## Every test: unit, handlers, the real server on loopback; golden references from PyTorch and scipy; then the Python client.
test: ort
	cargo test --all-targets -- --test-threads=2
	$(MAKE) python-test

## The Python client (clients/python) against the real server on the bundled model, in its own venv .venv-client/.
python-test: build
	test -x .venv-client/bin/python || $${PYTHON:-python3} -m venv .venv-client
	.venv-client/bin/python -m pip install --quiet -r clients/python/requirements-dev.txt
	.venv-client/bin/python -m pip install --quiet --no-build-isolation --no-deps --force-reinstall ./clients/python
	cd clients/python && ../../.venv-client/bin/python -m pytest

## The notebook's PyTorch pipeline vs Analyze at GPT-2 and GPT-2 XL shape; writes BENCHMARKS.md (not part of test).
bench: ort
	scripts/bench

## Each ONNX Runtime lever against the defaults, per model; writes its tables into BENCHMARKS.md.
bench-levers: ort
	scripts/bench --levers

## Build the image, run it, call it from the host through the published port (needs Docker; not part of test).
## VARIANT=cuda: the CUDA image, checked without a GPU (README.md, "GPU (CUDA) variant").
docker-test:
	VARIANT="$(VARIANT)" scripts/docker-test

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
