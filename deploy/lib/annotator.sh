# shellcheck shell=bash
# The annotation worker (`cohortstream annotate worker`): its own faust app and consumer
# group, started after the services it needs are healthy. It uses the GPU when torch
# sees one and the CPU otherwise. It runs from the repo's virtual environment.

annotator_install() {
  require_stack_cli annotator
}

annotator_start() {
  local d; d="$(svc_dir annotator)"
  mkdir -p "$d/data"
  "$STACK_CLI" --env-file "$STATE_DIR/stack.env" topics create >>"$(svc_log annotator)" 2>&1 || return 1
  local kenv=()
  mapfile -t kenv < <(kafka_client_env annotator)
  spawn annotator env "${kenv[@]}" COHORTSTREAM_DATA_DIR="$d/data" COHORTSTREAM_ANNOTATOR_METRICS_PORT="$ANNOTATOR_METRICS_PORT" \
    "$STACK_CLI" --env-file "$STATE_DIR/stack.env" annotate worker
}

# Ready = the app printed streams/app.py READY_MARKER since the latest start marker (at any log level).
annotator_health_once() {
  awk '/^===== .*: starting annotator =====/ { ready = 0 } /cohortstream: stream app ready/ { ready = 1 } END { exit !ready }' \
    "$(svc_log annotator)" 2>/dev/null
}

annotator_port_desc() { printf 'metrics %s' "$ANNOTATOR_METRICS_PORT"; }
annotator_url() { printf 'faust app %s-annotator' "${COHORTSTREAM_APP_ID:-cohortstream}"; }
annotator_timeout() { printf '%s' "${COHORTSTREAM_STACK_ANNOTATOR_TIMEOUT:-120}"; }
