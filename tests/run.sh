#!/usr/bin/env bash
# `make test`: unit tests, then a separate test stack (own state dir and ports, so a
# running `make up` is left alone), integration tests against it, and the stack stopped
# again whatever happened. Exit status is pytest's.
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

PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider)

# dcmtk (storescu, echoscu) is the independent DICOM client the listener tests push with;
# dicom3tools' dciodvfy checks the DICOM SEG objects the annotation worker writes.
# dcm2niix converts series to NIfTI for the BIDS export (tests/integration/test_bids_export.py).
# chromium is the real browser the dashboard test drives with Playwright (tests/integration/test_dashboard.py).
missing=()
[[ -x /usr/bin/storescu ]] || missing+=(dcmtk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v dcm2niix >/dev/null || missing+=(dcm2niix)
[[ -x /usr/lib/chromium/chromium ]] || command -v chromium >/dev/null || missing+=(chromium)
if (( ${#missing[@]} )); then
  echo "== installing ${missing[*]} (apt)"
  as_root_cmd=()
  [[ "$(id -u)" == 0 ]] || as_root_cmd=(sudo)
  "${as_root_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { "${as_root_cmd[@]}" apt-get update -q >/dev/null \
         && "${as_root_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

echo "== unit tests (no services)"
"${PYTEST[@]}" tests/unit

echo "== starting the test stack in $COHORTSTREAM_STACK_DIR"
trap 'echo "== stopping the test stack"; deploy/stack.sh down || true' EXIT
deploy/stack.sh up

echo "== integration tests (real Kafka, secantusd-rs MongoDB-wire server, Orthanc)"
COHORTSTREAM_ENV_FILE="$COHORTSTREAM_STACK_DIR/stack.env" "${PYTEST[@]}" tests/integration
