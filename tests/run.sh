#!/usr/bin/env bash
# `make test`: unit tests, then a separate test stack (own state dir and ports, so a
# running `make up` is left alone), integration tests against it, and the stack stopped
# again whatever happened. Exit status is pytest's (non-zero also when an integration
# test skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

export COHORTSTREAM_STACK_DIR="${COHORTSTREAM_TEST_STACK_DIR:-$PWD/.stack-test}"
export COHORTSTREAM_STACK_KAFKA_PORT="${COHORTSTREAM_TEST_KAFKA_PORT:-19092}"
export COHORTSTREAM_STACK_KAFKA_CONTROLLER_PORT="${COHORTSTREAM_TEST_KAFKA_CONTROLLER_PORT:-19093}"
export COHORTSTREAM_STACK_MONGO_PORT="${COHORTSTREAM_TEST_MONGO_PORT:-37017}"
export COHORTSTREAM_STACK_ORTHANC_HTTP_PORT="${COHORTSTREAM_TEST_ORTHANC_HTTP_PORT:-18042}"
export COHORTSTREAM_STACK_ORTHANC_DICOM_PORT="${COHORTSTREAM_TEST_ORTHANC_DICOM_PORT:-14242}"
# The test stack runs services only; tests start their own faust apps.
export COHORTSTREAM_STACK_SERVICES="${COHORTSTREAM_STACK_SERVICES:-kafka mongo orthanc}"

# -rs lists every skipped test with its reason. Unit tests may skip; an integration test
# that skips fails the run (tests/integration/conftest.py), unless
# COHORTSTREAM_TEST_ALLOW_SKIPS=1 says so on purpose.
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider -rs)

# The tools the tests drive (dcmtk, dicom3tools, dcm2niix, chromium), with apt when
# missing: the same script `make up` runs for the CLI's own tools.
deploy/install_tools.sh test
# The OHIF build the viewer test drives (cached; the same script `make up` runs).
deploy/install_ohif.sh

echo "== unit tests (no services)"
"${PYTEST[@]}" tests/unit

echo "== starting the test stack in $COHORTSTREAM_STACK_DIR"
trap 'echo "== stopping the test stack"; deploy/stack.sh down || true' EXIT
deploy/stack.sh up

echo "== integration tests (real Kafka, secantusd-rs MongoDB-wire server, Orthanc)"
COHORTSTREAM_ENV_FILE="$COHORTSTREAM_STACK_DIR/stack.env" "${PYTEST[@]}" tests/integration
