# shellcheck shell=bash
# The Orthanc change feed (`cohortstream orthanc feed`): publishes an event for every
# instance that reaches Orthanc by a route other than our listener (a C-STORE to
# Orthanc's own port, STOW-RS, an upload, a viewer's save). Started after Kafka, the view
# store and Orthanc are healthy and the settings file is written; its checkpoint lives in
# the view store, so a restart goes on where it stopped. It runs from the repo's venv.

feed_install() {
  require_stack_cli feed
}

feed_start() {
  require_free_ports feed "$FEED_PORT" || return 1
  # It publishes on the catalogue's topics: create them first (idempotent).
  "$STACK_CLI" --env-file "$STATE_DIR/stack.env" topics create >>"$(svc_log feed)" 2>&1 || return 1
  local kenv=()
  mapfile -t kenv < <(kafka_client_env orthanc-feed)
  spawn feed env "${kenv[@]}" \
    COHORTSTREAM_ORTHANC_FEED_HOST=127.0.0.1 \
    COHORTSTREAM_ORTHANC_FEED_PORT="$FEED_PORT" \
    "$STACK_CLI" --env-file "$STATE_DIR/stack.env" orthanc feed
}

# Healthy = /healthz answers 200: the feed read Orthanc's log and holds a checkpoint
# ("degraded" with a gap in the log is still up, and says so in the body).
feed_health_once() {
  curl -fsS -m 2 "http://127.0.0.1:$FEED_PORT/healthz" >/dev/null 2>&1
}

feed_port_desc() { printf '%s (/healthz, /metrics)' "$FEED_PORT"; }
feed_url() { printf 'http://127.0.0.1:%s/healthz' "$FEED_PORT"; }
feed_timeout() { printf '%s' "${COHORTSTREAM_STACK_FEED_TIMEOUT:-60}"; }
