# rotations: the gRPC service in a slim image, with the bundled tiny GPT-2 under /models.
#
#   docker build -t rotations .
#   docker run --rm -p 50051:50051 rotations
#
# Three stages. Build-time inputs that change least come first in every stage, so an edit under src/
# rebuilds only the last layers of the `build` stage and the binary layer of the runtime image:
#   ort      ONNX Runtime's shared library from its PyPI wheel, and for VARIANT=cuda the NVIDIA libraries its
#            CUDA provider loads, from theirs (depends only on scripts/fetch-ort and scripts/fetch-cuda-libs)
#   build    dependencies compiled from Cargo.toml/Cargo.lock alone, then our sources
#   runtime  ${RUNTIME_IMAGE} + non-root user + [NVIDIA libraries] + libonnxruntime + bundled model + the binary
#
# Build arguments:
#   RUST_IMAGE     build image; must be the same Debian release as the runtime (the binary links glibc
#                  dynamically)                                     [rust:1.95-bookworm]
#   RUNTIME_IMAGE  runtime base                                     [debian:bookworm-slim]
#   VARIANT        cpu: onnxruntime==1.32.0 (CPU)                   [cpu]
#                  cuda: onnxruntime-gpu==1.31.1, `cargo build --features cuda`, and exactly the NVIDIA libraries
#                  its CUDA provider loads (CUDA 13.0 runtime, cuBLAS, cuRAND, NVRTC, cuDNN 9) from their pinned
#                  PyPI wheels (scripts/fetch-cuda-libs) under /opt/nvidia; same Debian base, no nvidia/cuda image.
#                  The driver's libcuda.so.1 comes from the host (NVIDIA Container Toolkit):
#                    docker build --build-arg VARIANT=cuda -t rotations:cuda .
#                    docker run --gpus all -p 50051:50051 rotations:cuda
#                  docs/src/cuda-image.md: its size layer by layer, what was checked without a GPU.
#   VERSION, REVISION, CREATED   OCI labels (scripts/docker-test passes them)
#
# Works with BuildKit and with the legacy builder (no RUN --mount, no COPY --chmod).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG VARIANT=cpu

# ---------------------------------------------------------------------------------------------------------
# ONNX Runtime from its PyPI wheel, through the same script `make ort` uses. Its own stage: it depends only
# on scripts/fetch-ort and VARIANT, so it is cached across every source change.
FROM ${RUST_IMAGE} AS ort
ARG VARIANT
# The wheel is fetched with pip; rust:*-bookworm images may lack it.
RUN if ! python3 -m pip --version >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /ort
# The NVIDIA libraries first: the largest download (1.1 GB of wheels), and pinned, so it is cached longest.
# Empty folders for the CPU variant, so the runtime stage's COPY works for both.
COPY scripts/fetch-cuda-libs scripts/fetch-cuda-libs
RUN case "$VARIANT" in \
      cuda) scripts/fetch-cuda-libs nvidia ;; \
      *) mkdir -p nvidia/cu13/lib nvidia/cudnn/lib ;; \
    esac
COPY scripts/fetch-ort scripts/fetch-ort
RUN case "$VARIANT" in \
      cpu) scripts/fetch-ort cpu && mv .ort/lib lib ;; \
      cuda) scripts/fetch-ort gpu && mv .ort-gpu/lib lib ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && ls -l lib

# ---------------------------------------------------------------------------------------------------------
# The release binary.
FROM ${RUST_IMAGE} AS build
ARG VARIANT
WORKDIR /src
# Same settings for the dependency build and the final build, or the dependencies would be rebuilt.
# Stripped: no symbol table in the image (a few MB); panics still print their messages.
ENV CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_STRIP=symbols

# 1. Download the crates (the only step that needs crates.io), keyed on Cargo.toml and Cargo.lock alone.
#    Placeholder sources make the manifest valid; only this host's target is fetched.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src bench \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && echo 'fn main() {}' > bench/batching.rs \
    && echo 'fn main() {}' > build.rs \
    && cargo fetch --locked --target "$(rustc -vV | sed -n 's/^host: //p')"

# 2. Compile every dependency (most of the build time) against the placeholders, still keyed on the
#    lockfile only: editing src/, proto/ or build.rs does not invalidate this layer. The placeholder
#    build.rs makes cargo build the build-dependencies (tonic-prost-build, protox) here too.
RUN case "$VARIANT" in cuda) features="--features cuda" ;; *) features="" ;; esac \
    && cargo build --release --locked --offline --bins $features

# 3. Our sources, then the real build: only this crate and its build script are compiled. The touch makes
#    sure cargo sees them as newer than the placeholder build of step 2 (COPY keeps the files' mtimes).
COPY build.rs ./
COPY proto proto
COPY src src
RUN touch build.rs src/main.rs src/lib.rs \
    && case "$VARIANT" in cuda) features="--features cuda" ;; *) features="" ;; esac \
    && cargo build --release --locked --offline --bins $features \
    && mkdir -p /out && cp target/release/rotations /out/rotations \
    && /out/rotations --version

# ---------------------------------------------------------------------------------------------------------
# The runtime image: layers ordered from the one that changes least (the user) to the one that changes
# with every commit (the binary), so a rebuild after a source change ships one new small layer.
FROM ${RUNTIME_IMAGE} AS runtime
ARG VARIANT
ARG RUNTIME_IMAGE

# A fixed, non-root uid/gid (numeric in USER below, so orchestrators can verify runAsNonRoot).
RUN groupadd --gid 10001 rotations \
    && useradd --uid 10001 --gid rotations --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin rotations

# CUDA variant only (empty folders in the CPU image): the NVIDIA libraries, in the wheels' layout, one layer
# each for the CUDA 13.0 libraries and cuDNN (the largest and most stable layers, so first).
COPY --from=ort /ort/nvidia/cu13/lib/ /opt/nvidia/cu13/lib/
COPY --from=ort /ort/nvidia/cudnn/lib/ /opt/nvidia/cudnn/lib/

# ONNX Runtime; `rotations` also finds it here by itself (../lib of its own directory), and ONNX Runtime its
# provider libraries beside it. It needs only libstdc++ and libgcc_s besides glibc, which debian:bookworm-slim
# already has (apt depends on them); installed only when a different base lacks them.
# CUDA variant: the dynamic linker finds the NVIDIA libraries through ld.so.cache (the provider has no RUNPATH
# and dlopen()s cuDNN and NVRTC by name); every dependency must resolve except the driver's libcuda.so.1, which
# the NVIDIA Container Toolkit mounts at run time. cuDNN needs libz.so.1, also in the slim base.
COPY --from=ort /ort/lib/ /usr/local/lib/
RUN if ldd /usr/local/lib/libonnxruntime.so | grep -q 'not found'; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libstdc++6 libgcc-s1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && ! ldd /usr/local/lib/libonnxruntime.so | grep 'not found' \
    && if [ "$VARIANT" = cuda ]; then \
         printf '%s\n' /opt/nvidia/cu13/lib /opt/nvidia/cudnn/lib >/etc/ld.so.conf.d/nvidia-cuda-wheels.conf \
         && ldconfig \
         && ldd /usr/local/lib/libonnxruntime_providers_cuda.so | grep -q 'libcublasLt.so.13 => /opt/nvidia/cu13/lib/' \
         && ! ldd /usr/local/lib/libonnxruntime_providers_cuda.so /opt/nvidia/*/lib/*.so* \
              | grep 'not found' | grep -v '^[[:space:]]*libcuda\.so\.1 '; \
       fi

# The bundled model (random weights; hf/ is left out by .dockerignore). Mount a volume over /models, or a
# folder under it, for a real model such as GPT-2 XL.
COPY models/gpt2-tiny-random/ /models/gpt2-tiny-random/

COPY --from=build /out/rotations /usr/local/bin/rotations

# Every server setting is a ROTATIONS_* variable (see `rotations serve --help`); `docker run -e` overrides
# these, and flags appended to `docker run IMAGE` are passed to `rotations serve`. The bare binary listens
# on 127.0.0.1 only; the image listens on all interfaces, gRPC and metrics (reachable only where the port
# is published). NO_COLOR: plain text logs (no ANSI colour codes in `docker logs`); RUST_LOG sets the log
# filter (default info,ort=warn).
# ORT_DISABLE_TELEMETRY: ONNX Runtime 1.32 would otherwise try to send usage telemetry over HTTPS (and
# warn at start-up that it cannot: the image has no CA bundle).
ENV ROTATIONS_MODEL_DIR=/models/gpt2-tiny-random \
    ROTATIONS_HOST=0.0.0.0 \
    ROTATIONS_METRICS_HOST=0.0.0.0 \
    ROTATIONS_PORT=50051 \
    ROTATIONS_EXECUTION_PROVIDER=${VARIANT} \
    ROTATIONS_THREADS=0 \
    ROTATIONS_LOG_FORMAT=text \
    ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so \
    ORT_DISABLE_TELEMETRY=1 \
    NO_COLOR=1

VOLUME ["/models"]
USER 10001:10001
WORKDIR /
EXPOSE 50051

# SERVING only once the model is loaded and warmed; a large model (GPT-2 XL) takes a while, hence the
# start period. Follows ROTATIONS_PORT when it is overridden.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD rotations health --server "http://127.0.0.1:${ROTATIONS_PORT:-50051}" || exit 1

# The server is PID 1: it handles SIGTERM itself (NOT_SERVING, drain requests in flight, exit).
ENTRYPOINT ["rotations", "serve"]
CMD []

# Last, since VERSION/REVISION/CREATED differ from build to build.
ARG VERSION=""
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="rotations" \
      org.opencontainers.image.description="gRPC service: how far GPT-2's hidden state of a token rotates from layer to layer, with per-layer paired t-tests (ONNX Runtime; bundled random-weight tiny GPT-2 under /models)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
