# The operator's image: finetune_operator, the core it shares with the trainer (finetune_core) and their
# dependencies, nothing of the trainer's (no torch).
# Build from the repository root:  docker build -t finetune-operator .
# The trainer's image is trainer-image/Dockerfile.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml ./
COPY core/ core/
COPY operator/ operator/
# The base install is the operator only: pyproject's extras (trainer, bench, dev) stay out.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/finetune-operator --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="finetune-operator" \
      org.opencontainers.image.description="Kubernetes operator for fine-tuning LLMs" \
      org.opencontainers.image.licenses="Apache-2.0"
# Only the virtual environment crosses over: no compiler, pip cache or sources in the final image.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FINETUNE_HEALTH_PORT=8081
# A numeric non-root user, so runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
# health (kopf's /healthz, the liveness probe), metrics, progress (HTTPS)
EXPOSE 8081 8080 8443
ENTRYPOINT ["finetune-operator"]
