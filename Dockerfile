# SPA service images, two targets of one file (docker-compose.yml builds both):
#   docker build --target api    -t spa-service:api .      # the API (and `spa db`, `spa admin`): no torch
#   docker build --target worker -t spa-service:worker .   # a Celery worker: torch + the library
# GPU workers: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 on the worker target.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPA_DATA_DIR=/var/lib/spa

WORKDIR /srv/spa
RUN useradd --create-home --uid 10001 spa \
    && mkdir -p /var/lib/spa && chown spa /var/lib/spa

# What the dependency layers are keyed on: the project file and empty packages, so that code edits
# do not reinstall the dependencies.
COPY pyproject.toml README.md ./
COPY pruning_core/__init__.py pruning_core/__init__.py
COPY app/__init__.py app/__init__.py
COPY worker/__init__.py worker/__init__.py
COPY client/__init__.py client/__init__.py
COPY migrations/__init__.py migrations/__init__.py

# The source, in one place for both targets.
FROM scratch AS source
COPY pruning_core /src/pruning_core
COPY app /src/app
COPY worker /src/worker
COPY client /src/client
COPY migrations /src/migrations
COPY alembic.ini /src/alembic.ini

# -- worker: the pruning library (onnx, onnxruntime, torch) and the Celery worker ------------------
FROM base AS worker

# The CPU wheel of torch first: a bare `torch` requirement would pull the multi-GB CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
RUN pip install '.[worker]' && pip uninstall -y spa-service

COPY --from=source /src/ ./
RUN pip install --no-deps .

USER spa
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "cpu", "-c", "1", "--pool", "prefork", "-l", "INFO"]

# -- api: FastAPI, the database and the broker client; no torch, no onnx (the default target) -----
FROM base AS api

RUN pip install '.[api]' && pip uninstall -y spa-service

COPY --from=source /src/ ./
RUN pip install --no-deps .

USER spa
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez').status != 200)"

CMD ["uvicorn", "app.api.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
