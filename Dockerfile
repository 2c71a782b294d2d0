# syntax=docker/dockerfile:1
# Recommender image. Two variants from one file (see deploy/README.md):
#   CPU serving (default, slim, no torch):
#     docker build -t ssi-rec:cpu .
#   GPU (CUDA runtime base, `gpu` extra, full profile: serving + training + export):
#     docker build -t ssi-rec:gpu --build-arg VARIANT=gpu --build-arg PROFILE=full .
#   Artifact baked into the image instead of mounted:
#     docker build -t ssi-rec:cpu-baked --target baked --build-context artifact=artifacts/serving .
# Run (artifacts mounted read-only; the server serves <root>/latest):
#     docker run --rm -p 8000:8000 -v "$PWD/artifacts/serving:/artifacts/serving:ro" ssi-rec:cpu
#
# VARIANT: cpu | gpu     (base image and the pyproject extra of the same name)
# PROFILE: serve | full  (serve: protocol/ + serving/ and their dependencies only, torch left out;
#                         full: every dependency and package, e.g. for torchrun training on GPU nodes)
ARG VARIANT=cpu
ARG PROFILE=serve
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------- base images
FROM ${PYTHON_IMAGE} AS base-cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv

FROM ${CUDA_IMAGE} AS base-gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# FROM with a build argument: BuildKit builds only the base that VARIANT names.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv

# ------------------------------------------------------------ dependencies (own layer, before source)
FROM base AS deps
ARG VARIANT
ARG PROFILE
# The CPU torch wheel (only installed by PROFILE=full on VARIANT=cpu); PyPI's default torch is the CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /build
COPY pyproject.toml constraints-cpu.txt ./
COPY deploy/docker/requirements.py ./requirements.py
# hadolint ignore=DL3013
RUN python requirements.py pyproject.toml --extra "${VARIANT}" --profile "${PROFILE}" > requirements.txt \
    && cat requirements.txt \
    && pip install --no-cache-dir --upgrade pip \
    && if [ "${VARIANT}" = "cpu" ] && [ "${PROFILE}" = "full" ]; then \
         pip install --no-cache-dir -c constraints-cpu.txt --index-url "${TORCH_INDEX_URL}" torch; \
       fi \
    && if [ "${VARIANT}" = "cpu" ]; then \
         pip install --no-cache-dir -c constraints-cpu.txt -r requirements.txt; \
       else \
         pip install --no-cache-dir -r requirements.txt; \
       fi \
    && if [ "${PROFILE}" = "serve" ]; then python -c "import fastapi, onnxruntime, faiss, numpy"; fi

# ------------------------------------------------------------------------------------ source
FROM base AS src
ARG PROFILE
WORKDIR /src
COPY pyproject.toml ./
COPY protocol/ ./protocol/
COPY serving/ ./serving/
COPY models/ ./models/
COPY training/ ./training/
COPY export/ ./export/
COPY loadtest/ ./loadtest/
# serve profile: the server needs only serving/ and protocol/ (serving -> protocol); drop the rest
# here, in a stage that is not shipped, so it never reaches a layer of the image.
RUN if [ "${PROFILE}" = "serve" ]; then rm -rf models training export loadtest; fi \
    && find . -name __pycache__ -type d -prune -exec rm -rf {} +

# ------------------------------------------------------------------------------------ runtime
FROM base AS app
LABEL org.opencontainers.image.title="ssi-rec" \
      org.opencontainers.image.description="SSI sequential recommender: ONNX encoder + FAISS, served by FastAPI"
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /artifacts/serving /data \
    && chown 10001:10001 /artifacts /artifacts/serving /data
COPY --from=deps /opt/venv /opt/venv
COPY --from=src --chown=10001:10001 /src /app
WORKDIR /app
ENV PYTHONPATH=/app \
    SSI_HOST=0.0.0.0 \
    SSI_PORT=8000 \
    SSI_ARTIFACT_ROOT=/artifacts/serving \
    SSI_DATA_DIR=/data \
    SSI_CACHE_DIR=/tmp/ssi-cache
USER 10001:10001
EXPOSE 8000
# Ready = model loaded and warmed (not just the process up).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('SSI_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "serving"]

# ------------------------------------------- optional: artifact baked in (--target baked)
# Needs a named build context: --build-context artifact=artifacts/serving (the folder holding
# <model>/<version>/ and `latest`); artifacts/ stays out of the main context (.dockerignore).
FROM app AS baked
# hadolint ignore=DL3022
COPY --from=artifact --chown=10001:10001 . /artifacts/serving/

# -------------------------------------------------------------------- default target: mounted
FROM app AS runtime
