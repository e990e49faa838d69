# shellcheck shell=bash
# The REDCap Data Entry Trigger endpoint (`cohortstream redcap webhook`), started after
# Kafka is healthy and the settings file is written. It accepts triggers only for the
# projects in COHORTSTREAM_REDCAP_PROJECTS (export it before `make up`; without it every
# trigger is refused with 403, which is the safe default). It runs from the repo's venv.

redcap_install() {
  require_stack_cli redcap
}

redcap_start() {
  require_free_ports redcap "$REDCAP_WEBHOOK_PORT" || return 1
  "$STACK_CLI" --env-file "$STATE_DIR/stack.env" topics create >>"$(svc_log redcap)" 2>&1 || return 1
  local kenv=()
  mapfile -t kenv < <(kafka_client_env redcap-webhook)
  spawn redcap env "${kenv[@]}" \
    COHORTSTREAM_REDCAP_WEBHOOK_HOST=127.0.0.1 \
    COHORTSTREAM_REDCAP_WEBHOOK_PORT="$REDCAP_WEBHOOK_PORT" \
    "$STACK_CLI" --env-file "$STATE_DIR/stack.env" redcap webhook
}

# Healthy = the endpoint answers its health check.
redcap_health_once() {
  curl -fsS -m 2 "http://127.0.0.1:$REDCAP_WEBHOOK_PORT/healthz" >/dev/null 2>&1
}

redcap_port_desc() { printf '%s' "$REDCAP_WEBHOOK_PORT"; }
redcap_url() { printf 'http://127.0.0.1:%s/redcap/trigger' "$REDCAP_WEBHOOK_PORT"; }
redcap_timeout() { printf '%s' "${COHORTSTREAM_STACK_REDCAP_TIMEOUT:-60}"; }
