# PruneScope: API + dashboard (`prunescope serve`), a standalone worker (`prunescope worker`) or a
# Ray node (`ray start ...`); docker-compose.yml runs all three from this one image.
#
# The default build is CPU-only. For GPU nodes, build the same file with torch's CUDA build:
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t prunescope:cuda .
# (PyPI's Linux wheel of torch is a CUDA build; https://download.pytorch.org/whl/cu<version> picks
# a specific CUDA version to match an older NVIDIA driver.)
FROM python:3.11-slim

# torch pinned like the Makefile's; the index decides between the CPU and a CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Every Ray node and the Ray client in `serve` must run the same Ray version (and the same Python
# minor version), so images built on different days must not resolve different Rays.
ARG RAY_VERSION=2.60.0

# NUMBA_CACHE_DIR: umap/pynndescent compile numba functions with cache=True, and site-packages
# is not writable for the non-root user, so numba needs a cache directory it can write.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PRUNESCOPE_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/tmp/numba-cache

RUN groupadd --system --gid 10001 prunescope \
    && useradd --system --uid 10001 --gid prunescope --create-home --home-dir /home/prunescope \
        --shell /usr/sbin/nologin prunescope \
    && mkdir -p /data \
    && chown prunescope:prunescope /data

# torch first, pinned: the package's `torch>=2.6,<2.14` is then already satisfied, so the next
# install never replaces it (e.g. the CPU build by PyPI's much larger CUDA build).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Only what the build needs (pyproject's readme, the light `prunescope` package and the four
# folders that install beneath it); no .venv, tests, bench.
COPY pyproject.toml README.md /src/
COPY prunescope /src/prunescope
COPY server /src/server
COPY dashboard /src/dashboard
COPY workers /src/workers
COPY models /src/models
# `postgres`: psycopg for PostgreSQL. `cluster`: Ray and s3fs. ray[default] adds what the Ray
# head's dashboard and its client server (ray://, used by `serve` with PRUNESCOPE_EXECUTOR=ray)
# need, in the same resolution as the package, at the pinned version.
RUN pip install '/src[postgres,cluster]' "ray[default]==${RAY_VERSION}" \
    && rm -rf /src

WORKDIR /home/prunescope
USER prunescope

EXPOSE 8050

# No curl in slim images: ask the API with the standard library (non-2xx raises, exit 1).
# Services that serve no HTTP (workers, Ray nodes) replace this check in docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8050/api/v1/health', timeout=4)"]

CMD ["prunescope", "serve", "--host", "0.0.0.0", "--port", "8050"]
