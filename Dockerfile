# palletreid API image. CPU-only PyTorch wheels come from PyTorch's CPU index (much smaller than CUDA builds).
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/palletreid

# Dependencies first (cached while only the source changes).
COPY pyproject.toml README.md ./
RUN mkdir -p app models \
    && touch app/__init__.py models/__init__.py \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && pip uninstall -y palletreid

COPY alembic.ini ./
COPY migrations ./migrations
COPY models ./models
COPY app ./app
# Editable install: the service finds migrations/ next to app/ (that is where alembic runs them from).
RUN pip install --no-deps -e . \
    && useradd --system --home-dir /srv/palletreid palletreid

USER palletreid
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# Applies migrations (DATABASE_URL), loads the model, serves.
CMD ["palletreid", "serve", "--host", "0.0.0.0", "--port", "8000"]


# Test image: the runtime plus pytest/ruff/mypy and the tests, run against the compose database.
FROM runtime AS test
USER root
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -e ".[dev]"
COPY tests ./tests
USER palletreid
CMD ["pytest", "-q"]
