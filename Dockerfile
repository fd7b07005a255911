# Controller and serving image: PipelineService, ServingService (Ollama runs as a sidecar).
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY services ./services
RUN python -m pip install -c requirements.lock '.[controller,serve]'
USER 65532:65532
ENTRYPOINT ["tuneship"]
CMD ["serve", "controller"]
