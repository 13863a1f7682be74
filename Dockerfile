# The image `kiln launch k8s --image` runs: CUDA, Python and Kiln with S3 support, as an unprivileged user.
# Build from the repository root:  docker build -t REGISTRY/kiln:TAG .
# The devel image carries nvcc, which DeepSpeed needs to build its fused GPU ops at first use.
FROM nvidia/cuda:12.8.1-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/kiln/venv \
    PATH=/opt/kiln/venv/bin:$PATH \
    TORCH_EXTENSIONS_DIR=/opt/kiln/torch-extensions

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ninja-build \
 && rm -rf /var/lib/apt/lists/*

# uid 1000 is the user the rendered pods run as (runAsUser); the base image's own user is removed to free it.
RUN (userdel --remove ubuntu 2>/dev/null || true) && useradd --create-home --uid 1000 --user-group kiln

WORKDIR /opt/kiln/src
COPY pyproject.toml README.md ./
COPY cluster cluster
COPY data_shards data_shards
COPY launch launch
COPY llm llm
COPY ops ops
COPY configs configs
# torch first and pinned, as on every Kiln machine; here its default build is the CUDA one.
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir ".[s3,zstd]" \
 && mkdir -p "$TORCH_EXTENSIONS_DIR" && chown kiln:kiln "$TORCH_EXTENSIONS_DIR"

USER 1000:1000
WORKDIR /home/kiln
CMD ["kiln", "--help"]
