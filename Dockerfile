# The cohortstream services: worker, annotation worker, DICOM listener, REDCap trigger
# endpoint and API (the BIDS export in the API needs dcm2niix).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 cohortstream \
    && mkdir -p /var/lib/cohortstream && chown cohortstream /var/lib/cohortstream
RUN apt-get update && apt-get install -y --no-install-recommends dcm2niix && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/cohortstream

COPY pyproject.toml README.md ./
COPY cohortstream ./cohortstream
COPY avro_schemas ./avro_schemas
COPY producers ./producers
COPY streams ./streams
COPY consumers ./consumers
COPY api ./api
COPY export ./export
RUN pip install .

USER cohortstream
ENTRYPOINT []
CMD ["cohortstream", "--help"]
