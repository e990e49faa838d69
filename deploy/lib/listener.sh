# shellcheck shell=bash
# The cohortstream DICOM listener (C-STORE SCP, `cohortstream dicom-scp`), started
# after the services it needs are healthy and the settings file is written. Received
# instances are staged under $STATE_DIR/listener/staging (the worker reads them there:
# stack.env carries COHORTSTREAM_STAGING_DIR), unreadable ones are kept in
# $STATE_DIR/listener/quarantine. It runs from the repo's virtual environment;
# COHORTSTREAM_STACK_LISTENERS=N (`make up LISTENERS=N`) runs N listener processes on the
# port (SO_REUSEPORT). COHORTSTREAM_STACK_LISTENER_NICE=N (`make up LISTENER_NICE=N`, 0-19,
# default 0) starts them at that niceness: where every service shares a few cores, the
# archive and the views then get the CPU first and the listener acknowledges only as fast
# as they drain, so no backlog grows (docs/operations.md "One host, few cores").

listener_staging_dir() { printf '%s/listener/staging' "$STATE_DIR"; }
listener_quarantine_dir() { printf '%s/listener/quarantine' "$STATE_DIR"; }

listener_install() {
  require_stack_cli listener
}

# The command prefix that starts the listener at COHORTSTREAM_STACK_LISTENER_NICE.
listener_nice_prefix() {
  local nice="${COHORTSTREAM_STACK_LISTENER_NICE:-0}"
  if [[ ! "$nice" =~ ^[0-9]{1,2}$ ]] || ((10#$nice > 19)); then
    log "listener: COHORTSTREAM_STACK_LISTENER_NICE (make up LISTENER_NICE=N) must be 0-19, got '$nice'"
    return 1
  fi
  if ((10#$nice > 0)); then printf 'nice -n %d' "$((10#$nice))"; fi
}

listener_start() {
  mkdir -p "$(listener_staging_dir)" "$(listener_quarantine_dir)"
  local prefix niced=()
  prefix="$(listener_nice_prefix)" || return 1
  read -ra niced <<<"$prefix"
  require_free_ports listener "$DICOM_SCP_PORT" || return 1
  # Topics are created explicitly (idempotent; the worker may have done it already).
  "$STACK_CLI" --env-file "$STATE_DIR/stack.env" topics create >>"$(svc_log listener)" 2>&1 || return 1
  local kenv=()
  mapfile -t kenv < <(kafka_client_env listener)
  if is_secure; then
    # DICOM TLS only, callers must show a certificate of the stack's CA (deploy/tls_certs.sh
    # makes one for senders: dicom-sender.pem/.key).
    require_free_ports listener "$DICOM_SCP_TLS_PORT" || return 1
    kenv+=(COHORTSTREAM_DICOM_SCP_PLAINTEXT=false "COHORTSTREAM_DICOM_SCP_TLS_PORT=$DICOM_SCP_TLS_PORT"
      "COHORTSTREAM_DICOM_SCP_TLS_CERTFILE=$(tls_dir)/dicom.pem" "COHORTSTREAM_DICOM_SCP_TLS_KEYFILE=$(tls_dir)/dicom.key"
      "COHORTSTREAM_DICOM_SCP_TLS_CAFILE=$(tls_dir)/ca.pem")
  fi
  spawn listener "${niced[@]}" env "${kenv[@]}" \
    COHORTSTREAM_DICOM_SCP_HOST=127.0.0.1 \
    COHORTSTREAM_DICOM_SCP_PORT="$DICOM_SCP_PORT" \
    COHORTSTREAM_DICOM_SCP_AET="$DICOM_SCP_AET" \
    COHORTSTREAM_STAGING_DIR="$(listener_staging_dir)" \
    COHORTSTREAM_QUARANTINE_DIR="$(listener_quarantine_dir)" \
    COHORTSTREAM_DICOM_SCP_PROCESSES="${COHORTSTREAM_STACK_LISTENERS:-1}" \
    "$STACK_CLI" --env-file "$STATE_DIR/stack.env" dicom-scp
}

# Healthy = answers a real C-ECHO (dcmtk's echoscu when installed, else pynetdicom).
listener_health_once() {
  if is_secure; then
    /usr/bin/echoscu -to 2 -ta 2 -td 2 +tls "$(tls_dir)/dicom-sender.key" "$(tls_dir)/dicom-sender.pem" \
      +cf "$(tls_dir)/ca.pem" -aet STACKCHECK -aec "$DICOM_SCP_AET" 127.0.0.1 "$DICOM_SCP_TLS_PORT" >/dev/null 2>&1
    return
  fi
  if [[ -x /usr/bin/echoscu ]]; then
    /usr/bin/echoscu -to 2 -ta 2 -td 2 -aet STACKCHECK -aec "$DICOM_SCP_AET" 127.0.0.1 "$DICOM_SCP_PORT" \
      >/dev/null 2>&1
  else
    "$STACK_VENV/bin/python" - "$DICOM_SCP_AET" "$DICOM_SCP_PORT" >/dev/null 2>&1 <<'PY'
import sys
from pynetdicom import AE
from pynetdicom.sop_class import Verification
ae = AE(ae_title="STACKCHECK")
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2
ae.add_requested_context(Verification)
assoc = ae.associate("127.0.0.1", int(sys.argv[2]), ae_title=sys.argv[1])
ok = assoc.is_established and getattr(assoc.send_c_echo(), "Status", None) == 0
if assoc.is_established:
    assoc.release()
sys.exit(0 if ok else 1)
PY
  fi
}

listener_port_desc() {
  if is_secure; then printf 'TLS %s (AET %s)' "$DICOM_SCP_TLS_PORT" "$DICOM_SCP_AET"; else printf '%s (AET %s)' "$DICOM_SCP_PORT" "$DICOM_SCP_AET"; fi
}
listener_url() {
  if is_secure; then printf 'dicom-tls://%s@127.0.0.1:%s' "$DICOM_SCP_AET" "$DICOM_SCP_TLS_PORT"; else printf 'dicom://%s@127.0.0.1:%s' "$DICOM_SCP_AET" "$DICOM_SCP_PORT"; fi
}
listener_timeout() { printf '%s' "${COHORTSTREAM_STACK_LISTENER_TIMEOUT:-60}"; }
