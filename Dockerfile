# The cohortstream services: worker, annotation worker, DICOM listener, REDCap trigger
# endpoint and API (the BIDS export in the API needs dcm2niix).
#
# EXTRAS=annotation adds the annotation worker's model stack (torch, MONAI, deepbet's
# weights); without it the image holds every other service and is about 5 GB smaller.
# TORCH_INDEX_URL picks the torch build installed first: the CPU-only wheels
# (https://download.pytorch.org/whl/cpu, docker-compose's `annotator`) or, when empty,
# PyPI's default Linux wheel, which bundles the CUDA runtime (`annotator-gpu`; the host
# needs the NVIDIA driver and container toolkit, no CUDA base image).
FROM python:3.11-slim
ARG EXTRAS=""
ARG TORCH_INDEX_URL=""

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
RUN if [ -n "$EXTRAS" ] && [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
    && pip install ".${EXTRAS:+[$EXTRAS]}"

# The OHIF viewer the API serves at /ohif/: the files of the pinned monailabel wheel only.
COPY deploy/install_ohif.sh ./deploy/install_ohif.sh
RUN COHORTSTREAM_CACHE_DIR=/opt/cohortstream/cache deploy/install_ohif.sh
ENV COHORTSTREAM_OHIF_DIR=/opt/cohortstream/cache/ohif/monailabel-0.8.5/ohif

USER cohortstream
ENTRYPOINT []
CMD ["cohortstream", "--help"]
