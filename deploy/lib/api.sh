# shellcheck shell=bash
# The HTTP API (`cohortstream api`): annotation review, the MONAI Label-compatible
# endpoints, and later the retrieval API and dashboard. Started after the services it
# needs are healthy and the settings file is written; it runs from the repo's venv.

api_install() {
  require_stack_cli api
}

api_start() {
  require_free_ports api "$API_PORT" || return 1
  # The API produces too (audit events, reviews): its topics exist before it serves.
  "$STACK_CLI" --env-file "$STATE_DIR/stack.env" topics create >>"$(svc_log api)" 2>&1 || return 1
  local kenv=()
  mapfile -t kenv < <(kafka_client_env api)
  if is_secure; then
    kenv+=("COHORTSTREAM_API_TLS_CERTFILE=$(tls_dir)/api.pem" "COHORTSTREAM_API_TLS_KEYFILE=$(tls_dir)/api.key")
  fi
  spawn api env "${kenv[@]}" COHORTSTREAM_API_HOST=127.0.0.1 COHORTSTREAM_API_PORT="$API_PORT" \
    "$STACK_CLI" --env-file "$STATE_DIR/stack.env" api
}

# Healthy = the API answers its health check.
api_health_once() {
  if is_secure; then
    curl -fsS -m 2 --cacert "$(tls_dir)/ca.pem" "https://127.0.0.1:$API_PORT/healthz" >/dev/null 2>&1
  else
    curl -fsS -m 2 "http://127.0.0.1:$API_PORT/healthz" >/dev/null 2>&1
  fi
}

api_port_desc() { printf '%s' "$API_PORT"; }
api_url() { if is_secure; then printf 'https'; else printf 'http'; fi; printf '://127.0.0.1:%s/docs' "$API_PORT"; }
api_timeout() { printf '%s' "${COHORTSTREAM_STACK_API_TIMEOUT:-60}"; }
