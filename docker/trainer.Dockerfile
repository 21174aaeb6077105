# A trainwise worker: the project installed from the repository root (build context `.`, see
# .dockerignore), with projects/ beside it. docker-compose.yml sets its tracking server, Optuna
# storage and command; `docker compose up --scale trainer=N` runs N of them on one study.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Not root: steps write caches and temporary artifacts under the working directory only.
RUN useradd --create-home --uid 1000 trainwise && install -d -o trainwise -g trainwise /app
WORKDIR /app
COPY --chown=trainwise:trainwise . /app

# [postgres]: the driver for the shared Optuna storage. No boto3: artifacts go through the
# MLflow server's proxy, so workers hold no S3 credentials.
# The default torch wheel on Linux bundles CUDA (several GB) and so serves GPU hosts too.
RUN pip install ".[postgres]"

USER trainwise
CMD ["trainwise", "--help"]
