# shellcheck shell=bash
# shellcheck disable=SC2034  # settings below are used by lib/<service>.sh
# Shared helpers for deploy/stack.sh: configuration, logging, process
# management and port probing.  Sourced, never executed.

# ---------------------------------------------------------------------------
# Configuration (env vars with defaults; see deploy/README.md)
# ---------------------------------------------------------------------------
STATE_DIR="${COHORTSTREAM_STACK_DIR:-$REPO_ROOT/.stack}"
CACHE_DIR="${COHORTSTREAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cohortstream}"
KAFKA_PORT="${COHORTSTREAM_STACK_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${COHORTSTREAM_STACK_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${COHORTSTREAM_STACK_KAFKA_HEAP:-512m}"
MONGO_PORT="${COHORTSTREAM_STACK_MONGO_PORT:-27017}"
ORTHANC_HTTP_PORT="${COHORTSTREAM_STACK_ORTHANC_HTTP_PORT:-8042}"
ORTHANC_DICOM_PORT="${COHORTSTREAM_STACK_ORTHANC_DICOM_PORT:-4242}"
ORTHANC_AET="${COHORTSTREAM_STACK_ORTHANC_AET:-ORTHANC}"
DICOM_SCP_PORT="${COHORTSTREAM_STACK_DICOM_SCP_PORT:-11112}"
DICOM_SCP_AET="${COHORTSTREAM_STACK_DICOM_SCP_AET:-COHORTSTREAM}"
REDCAP_WEBHOOK_PORT="${COHORTSTREAM_STACK_REDCAP_PORT:-8091}"
API_PORT="${COHORTSTREAM_STACK_API_PORT:-8090}"
FEED_PORT="${COHORTSTREAM_STACK_FEED_PORT:-8092}"
WORKER_METRICS_PORT="${COHORTSTREAM_STACK_WORKER_METRICS_PORT:-9470}"  # one port per lane: 9470-9478
ANNOTATOR_METRICS_PORT="${COHORTSTREAM_STACK_ANNOTATOR_METRICS_PORT:-9465}"
SERVICES="${COHORTSTREAM_STACK_SERVICES:-kafka mongo orthanc worker annotator listener redcap api feed}"
# Secure mode (make up SECURE=1): Kafka SASL_SSL + ACLs, MongoDB with SCRAM users, DICOM TLS
# on the listener, the API over HTTPS. TLS material and passwords are made once per state
# dir (deploy/tls_certs.sh, stack_secret) and live only there. See docs/security.md.
SECURE="${COHORTSTREAM_STACK_SECURE:-0}"
DICOM_SCP_TLS_PORT="${COHORTSTREAM_STACK_DICOM_SCP_TLS_PORT:-2762}"

# Bounded waits (seconds).
HEALTH_TIMEOUT_KAFKA="${COHORTSTREAM_STACK_KAFKA_TIMEOUT:-90}"
HEALTH_TIMEOUT_MONGO="${COHORTSTREAM_STACK_MONGO_TIMEOUT:-60}"
HEALTH_TIMEOUT_ORTHANC="${COHORTSTREAM_STACK_ORTHANC_TIMEOUT:-60}"
STOP_TIMEOUT="${COHORTSTREAM_STACK_STOP_TIMEOUT:-20}"

ALL_SERVICES="kafka mongo orthanc worker annotator listener redcap api feed"
# Started only after the infrastructure is healthy and stack.env is written.
APP_SERVICES="worker annotator listener redcap api feed"

# The state dir is embedded in every service's command line; down/status use
# it to make sure a pid from a pid file still belongs to *this* stack before
# signalling it (pids are recycled).  Make it absolute so the match is exact.
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"

# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
log()  { printf 'stack: %s\n' "$*" >&2; }
die()  { printf 'stack: %s\n' "$*" >&2; exit 1; }

# Our own services (worker, annotator, listener, REDCap endpoint, API, Orthanc feed) run
# the repo's CLI from its virtual environment (or COHORTSTREAM_STACK_VENV's).
STACK_VENV="${COHORTSTREAM_STACK_VENV:-$REPO_ROOT/.venv}"
STACK_CLI="$STACK_VENV/bin/cohortstream"

# The install step of each of our services: the CLI must be there.
require_stack_cli() {
  [[ -x "$STACK_CLI" ]] || die "$1: $STACK_CLI not found; run 'make install' first (or use 'make up')"
  log "$1: using $STACK_CLI"
}

# ---------------------------------------------------------------------------
# Per-service paths
# ---------------------------------------------------------------------------
svc_dir()  { printf '%s/%s' "$STATE_DIR" "$1"; }
svc_log()  { printf '%s/%s/service.log' "$STATE_DIR" "$1"; }
svc_pidf() { printf '%s/%s/service.pid' "$STATE_DIR" "$1"; }

validate_services() {
  local s
  for s in $SERVICES; do
    case " $ALL_SERVICES " in
      *" $s "*) ;;
      *) die "unknown service '$s' in COHORTSTREAM_STACK_SERVICES (known: $ALL_SERVICES)" ;;
    esac
  done
}

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

# pid_belongs_to_stack PID -> true if PID is alive and its command line
# mentions our state dir (i.e. it is the process we started, not a recycled pid).
pid_belongs_to_stack() {
  local pid="$1" cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$STATE_DIR/"* ]]
}

# svc_pid SERVICE -> prints the recorded pid if it is alive and ours.
svc_pid() {
  local pidf pid
  pidf="$(svc_pidf "$1")"
  [[ -f "$pidf" ]] || return 1
  pid="$(<"$pidf")"
  pid_belongs_to_stack "$pid" || return 1
  printf '%s' "$pid"
}

# spawn SERVICE CMD... : start CMD detached from this shell (own session, so
# it survives the terminal / CI step that ran `up`), stdout+stderr appended
# to the service log, and record its pid.
spawn() {
  local svc="$1"; shift
  local logf pidf pid
  logf="$(svc_log "$svc")"
  pidf="$(svc_pidf "$svc")"
  printf '\n===== %s: starting %s =====\n' "$(date -u +%FT%TZ)" "$svc" >>"$logf"
  # Non-interactive bash runs background jobs in its own process group, so
  # setsid(1) calls setsid() without forking and $! is the service's pid.
  # 9>&- : do not leak stack.sh's lock fd (see take_lock) into the service,
  # or the lock would stay held for as long as the service runs.
  setsid nohup "$@" >>"$logf" 2>&1 </dev/null 9>&- &
  pid=$!
  # Until the forked shell has exec'd the service, /proc/PID/cmdline is still this
  # script's, and pid_belongs_to_stack would call the service gone (seen on a loaded
  # machine: a healthy restart reported as "exited during start-up"). Wait for the exec.
  local i
  for ((i = 0; i < 100; i++)); do
    pid_belongs_to_stack "$pid" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  printf '%s\n' "$pid" >"$pidf"
  STARTED_SERVICES+=("$svc")
}

# stop_service SERVICE : SIGTERM the recorded pid, wait, then SIGKILL.
stop_service() {
  local svc="$1" pidf pid i
  pidf="$(svc_pidf "$svc")"
  if [[ ! -f "$pidf" ]]; then
    return 0
  fi
  pid="$(<"$pidf")"
  if ! pid_belongs_to_stack "$pid"; then
    log "$svc: pid file $pidf is stale (pid ${pid:-?} not running or not ours); removing it"
    rm -f "$pidf"
    return 0
  fi
  log "$svc: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    pid_belongs_to_stack "$pid" || break
    sleep 0.2
  done
  if pid_belongs_to_stack "$pid"; then
    log "$svc: pid $pid still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidf"
}

# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------

# port_open PORT -> true if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# require_free_ports SERVICE PORT... : refuse to start a service whose port is
# already taken (another stack, a system service...), because the health
# check could otherwise succeed against the wrong server.
require_free_ports() {
  local svc="$1" p i; shift
  for p in "$@"; do
    # A process we just stopped may hold its port for a moment after it died
    # (zombie until reaped, sockets closing): wait a little before giving up.
    for ((i = 0; i < 50; i++)); do
      port_open "$p" || continue 2
      sleep 0.2
    done
    printf '%s: port 127.0.0.1:%s is already in use by another process:\n%s\n' \
      "$(date -u +%FT%TZ)" "$p" "$(ss -Hltnp "sport = :$p" 2>/dev/null || true)" >>"$(svc_log "$svc")"
    return 1
  done
}

# ---------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------

# files_hash FILE... -> sha256 over the contents of the given files.
files_hash() {
  cat "$@" | sha256sum | cut -d' ' -f1
}

# is_secure -> true in secure mode.
is_secure() { [[ "$SECURE" == 1 ]]; }

tls_dir() { printf '%s/tls' "$STATE_DIR"; }
secrets_dir() { printf '%s/secrets' "$STATE_DIR"; }

# ensure_tls : the CA and certificates of this state dir (made once).
ensure_tls() {
  [[ -s "$(tls_dir)/kafka.p12" ]] || "$DEPLOY_DIR/tls_certs.sh" "$(tls_dir)" >/dev/null 2>&1 \
    || die "deploy/tls_certs.sh $(tls_dir) failed"
}

# stack_secret NAME -> prints the path of a file holding a random secret for NAME (made
# once, mode 600). Services get the path (COHORTSTREAM_*_FILE), never the value.
stack_secret() {
  local f; f="$(secrets_dir)/$1"
  if [[ ! -s "$f" ]]; then
    (umask 077 && mkdir -p "$(secrets_dir)" && random_secret >"$f.tmp" && mv "$f.tmp" "$f")
  fi
  printf '%s' "$f"
}

# kafka_client_env ROLE -> env assignments (one a line) that make a service connect to Kafka
# as ROLE; nothing outside secure mode. The role's ACLs (cohortstream/kafka_acls.py) decide
# what it may do.
kafka_client_env() {
  is_secure || return 0
  printf 'COHORTSTREAM_KAFKA_SASL_USERNAME=%s\nCOHORTSTREAM_KAFKA_SASL_PASSWORD_FILE=%s\n' "$1" "$(stack_secret "kafka-$1")"
}

random_secret() {
  # 32 alphanumeric chars: safe in URLs, JSON and shell without quoting.
  local s=""
  while ((${#s} < 32)); do
    s+="$(head -c 64 /dev/urandom | tr -dc 'A-Za-z0-9')"
  done
  printf '%s' "${s:0:32}"
}

# as_root CMD... : run CMD as root (directly, or via sudo when not root).
as_root() {
  if [[ "$(id -u)" == 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}
