# shellcheck shell=bash
# The cohortstream faust worker: one supervised process per lane of agents, each its
# own consumer group (cohortstream/lanes.py), started after the services it needs are
# healthy and the settings file is written. It runs from the repo's
# virtual environment, which `make install` creates.

worker_install() {
  require_stack_cli worker
}

worker_start() {
  local d; d="$(svc_dir worker)"
  mkdir -p "$d/data"
  # Topics are created explicitly (partitions, replication, min ISR from settings)
  # before anything consumes from them.
  "$STACK_CLI" --env-file "$STATE_DIR/stack.env" topics create >>"$(svc_log worker)" 2>&1 || return 1
  local kenv=()
  mapfile -t kenv < <(kafka_client_env worker)
  spawn worker env "${kenv[@]}" COHORTSTREAM_DATA_DIR="$d/data" COHORTSTREAM_WORKER_METRICS_PORT="$WORKER_METRICS_PORT" \
    COHORTSTREAM_WORKER_REPLICAS="${COHORTSTREAM_STACK_WORKERS:-1}" \
    "$STACK_CLI" --env-file "$STATE_DIR/stack.env" worker
}

# Ready = the supervisor saw every lane report faust's Ready since the latest start marker
# (streams/supervisor.py READY_LINE).
worker_health_once() {
  awk '/^===== .*: starting worker =====/ { ready = 0 } /worker ready: every lane is running/ { ready = 1 } END { exit !ready }' \
    "$(svc_log worker)" 2>/dev/null
}

worker_port_desc() { printf 'metrics %s+lane' "$WORKER_METRICS_PORT"; }
worker_url() { printf 'faust app %s' "${COHORTSTREAM_APP_ID:-cohortstream}"; }
worker_timeout() { printf '%s' "${COHORTSTREAM_STACK_WORKER_TIMEOUT:-90}"; }
