# SPA service image: the API and the workers run from the same image (docker-compose.yml).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/spa

# The CPU wheel of torch first: a bare `torch` requirement would pull the multi-GB CUDA build.
# (The gpu-worker service builds with TORCH_INDEX=https://download.pytorch.org/whl/cu124.)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

# Dependencies before the source, so code edits do not reinstall them.
COPY pyproject.toml README.md ./
COPY pruning_core/__init__.py pruning_core/__init__.py
COPY app/__init__.py app/__init__.py
COPY worker/__init__.py worker/__init__.py
COPY client/__init__.py client/__init__.py
COPY migrations/__init__.py migrations/__init__.py
RUN pip install '.[server]' && pip uninstall -y spa-service

COPY pruning_core pruning_core
COPY app app
COPY worker worker
COPY client client
COPY migrations migrations
COPY alembic.ini ./
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 spa \
    && mkdir -p /var/lib/spa && chown spa /var/lib/spa

USER spa
ENV SPA_DATA_DIR=/var/lib/spa
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez').status != 200)"

CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
