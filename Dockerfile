# palletreid API image. CPU-only PyTorch wheels come from PyTorch's CPU index (much smaller than CUDA builds).
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/palletreid

# Dependencies first (cached while only the source changes): the service's base dependencies only.
COPY pyproject.toml README.md ./
RUN mkdir -p app models migrations bench \
    && touch app/__init__.py models/__init__.py migrations/__init__.py bench/__init__.py \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && pip uninstall -y palletreid \
    && rm -rf app models migrations bench build

# The package itself, installed (not editable): migrations and the shipped model come as package data,
# so the image needs no source tree at run time.
COPY app ./src/app
COPY models ./src/models
COPY migrations ./src/migrations
COPY bench ./src/bench
RUN cp pyproject.toml README.md src/ \
    && pip install --no-deps ./src \
    && rm -rf src \
    && useradd --system --home-dir /srv/palletreid palletreid \
    && mkdir -p /srv/palletreid/var/images && chown -R palletreid /srv/palletreid/var

USER palletreid
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# Applies migrations (DATABASE_URL), loads the model, serves. Several replicas: run `palletreid serve
# --migrate-only` once and the replicas with --no-migrate (docker-compose.yml); several processes in one
# container: --workers N.
CMD ["palletreid", "serve", "--host", "0.0.0.0", "--port", "8000"]


# Test image: the runtime plus the offline extras, pytest/ruff/mypy and a source tree to test, run against the
# compose database.
FROM runtime AS test
USER root
COPY . ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -e ".[dev]" \
    && chown -R palletreid /srv/palletreid
USER palletreid
CMD ["pytest", "-q"]
