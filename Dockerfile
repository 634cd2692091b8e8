# PruneScope: API + dashboard (`prunescope serve`) or a standalone worker (`prunescope worker`).
# CPU-only image. docker-compose.yml runs it against Postgres with a shared data volume.
FROM python:3.11-slim

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

# torch first, pinned, CPU build: the package's `torch>=2.4,<2.14` is then already satisfied,
# so the next install never pulls the (much larger) CUDA build from PyPI.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Only what the build needs (pyproject's readme and the four packages); no .venv, tests, bench.
COPY pyproject.toml README.md /src/
COPY server /src/server
COPY dashboard /src/dashboard
COPY workers /src/workers
COPY models /src/models
RUN pip install '/src[postgres]' \
    && rm -rf /src

WORKDIR /home/prunescope
USER prunescope

EXPOSE 8050

# No curl in slim images: ask the API with the standard library (non-2xx raises, exit 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8050/api/v1/health', timeout=4)"]

CMD ["prunescope", "serve", "--host", "0.0.0.0", "--port", "8050"]
