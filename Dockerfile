# The cohortstream services (worker, and later the listener, API and annotation worker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 cohortstream \
    && mkdir -p /var/lib/cohortstream && chown cohortstream /var/lib/cohortstream
WORKDIR /opt/cohortstream

COPY pyproject.toml README.md ./
COPY cohortstream ./cohortstream
COPY avro_schemas ./avro_schemas
COPY producers ./producers
COPY streams ./streams
COPY consumers ./consumers
RUN pip install .

USER cohortstream
ENTRYPOINT []
CMD ["cohortstream", "--help"]
