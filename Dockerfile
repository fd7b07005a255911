# Controller and serving image: PipelineService and ServingService (Ollama runs beside
# it as a sidecar). `make images` builds it as ghcr.io/tuneship/tuneship:<version>.
#
# Two stages: the builder makes /opt/venv with the pinned dependencies and the
# package; the final stage is the same base with only that venv, run as a non-root
# user with a read-only root filesystem (the chart mounts emptyDirs on /tmp).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY services ./services
RUN pip install -c requirements.lock '.[controller,serve,console]'

FROM ${PYTHON_IMAGE}
ARG TUNESHIP_VERSION=unknown
LABEL org.opencontainers.image.title="tuneship" \
      org.opencontainers.image.description="tuneship controller and serving service" \
      org.opencontainers.image.source="https://github.com/tuneship/tuneship" \
      org.opencontainers.image.version="${TUNESHIP_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/venv /opt/venv
# Everything that writes (caches, the default data and work dirs) goes under /tmp.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp XDG_CACHE_HOME=/tmp/.cache HF_HOME=/tmp/.cache/huggingface \
    TUNESHIP_DATA_DIR=/tmp/tuneship-data TUNESHIP_WORK_DIR=/tmp/tuneship
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["tuneship"]
CMD ["serve", "controller"]
