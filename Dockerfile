# syntax=docker/dockerfile:1
# The service image: every its-camera-ai service, one process per container
# (`docker run IMAGE serve <unit>`; the default command serves them all).
#
#   docker build --target production -t its-camera-ai .
#   docker run --shm-size=1g -p 50051:50051 -p 8000:8000 \
#     -e ITS_DATABASE__DSN=postgresql://its@db/its -v /path/to/tls:/etc/its/tls:ro \
#     -v /path/to/metrics-token:/etc/its/metrics/token:ro its-camera-ai
#
# The image runs config/production.yaml (TLS 1.3 with client certificates, a database DSN
# and a metrics token are required; override any key with ITS_<SECTION>__<KEY>). Frame rings
# live in /dev/shm, which Docker caps at 64 MiB: give decoders `--shm-size` (or a memory
# emptyDir on Kubernetes) of about 2 x ring slots x frame bytes per camera.
#
# GPU variant: the same recipe with PyTorch's CUDA wheels and the gpu extra (TensorRT,
# NVML metrics); run it with the NVIDIA container toolkit (`--gpus all`):
#   docker build --target production \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     --build-arg PROJECT_EXTRAS='[gpu]' -t its-camera-ai:gpu .
#
# Extra model files (a YOLO export, a newer detector manifest and weights) land in
# /opt/its/models from a named build context; point ITS_INFERENCE__MODEL_MANIFEST or
# ITS_INFERENCE__YOLO_MODEL at them:
#   docker build --target production --build-context models=/path/to/models .
#
# tests/deploy/test_dockerfile.py runs the builder stage's steps in a fresh virtual
# environment and checks the production stage, so this file cannot drift from the project.

# Empty unless the build names a `models` context, which then replaces this stage.
FROM scratch AS models


FROM python:3.11-slim AS builder

# PyTorch's CPU-only wheels: PyPI's Linux torch pulls several GB of CUDA libraries. It is an
# *extra* index: everything else still comes from PyPI. torch is installed first and exactly,
# so the project's torch range is already met and pip takes nothing more for it.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional extras of the project, e.g. "[gpu]".
ARG PROJECT_EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Every dependency ships wheels for this platform: no compilers needed.
RUN python -m venv /opt/venv

# Its own layer: the biggest download changes only with TORCH_VERSION, not with the code.
# hadolint ignore=DL3059
RUN pip install --extra-index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"

WORKDIR /opt/its-src
COPY pyproject.toml README.md ./
COPY src ./src
COPY clients/python ./clients/python
# Regular (not editable) installs into site-packages: the client distribution (the generated
# `its` stubs), and the service with its shipped detector (package data of
# its_camera_ai.inference.models). One command, so that pip resolves the service's
# its-camera-ai-client requirement to this copy (local paths: nothing to pin).
# hadolint ignore=DL3013
RUN pip install ./clients/python ".$PROJECT_EXTRAS"


FROM python:3.11-slim AS production

ARG ITS_UID=10001

LABEL org.opencontainers.image.title="its-camera-ai" \
      org.opencontainers.image.description="Traffic-camera analytics: decode, detect, track, count and query over gRPC." \
      org.opencontainers.image.source="https://github.com/its-camera-ai/its-camera-ai" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ITS_ENVIRONMENT=production \
    XDG_CACHE_HOME=/srv/its/var/cache

# A fixed uid, so volume ownership and Kubernetes' runAsUser can name it. The working
# directory stays root's; only var/ (engine caches, spools) is the service's to write, and
# config/ resolves to the files below, so ITS_ENVIRONMENT still picks among them.
RUN groupadd --system --gid "$ITS_UID" its \
    && useradd --system --uid "$ITS_UID" --gid its --home-dir /srv/its \
       --shell /usr/sbin/nologin its \
    && install -d -o its -g its /srv/its/var /srv/its/var/cache \
    && ln -s /etc/its/config /srv/its/config

COPY --from=builder /opt/venv /opt/venv
COPY config /etc/its/config
COPY --from=models . /opt/its/models/

WORKDIR /srv/its
USER ${ITS_UID}:${ITS_UID}

# gRPC (every service, health and reflection) and the HTTP side port (/metrics, /health, /live).
EXPOSE 50051 8000

# Liveness of the HTTP side port, with the standard library (slim images have no curl): any
# failure raises, and an uncaught exception exits 1 (unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('ITS_HTTP__PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/live', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["its-camera-ai"]
CMD ["serve", "all"]
