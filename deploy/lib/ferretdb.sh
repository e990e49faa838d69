# shellcheck shell=bash
# FerretDB v1.24.2 (MongoDB wire protocol) on the SQLite backend, run through
# the small embedding wrapper in deploy/ferretdb/ (see main.go for why the
# stock `go install .../cmd/ferretdb` binary is not used).

FERRETDB_VERSION=1.24.2
FERRETDB_SRC="$DEPLOY_DIR/ferretdb"
FERRETDB_HOME="$CACHE_DIR/ferretdb-$FERRETDB_VERSION"
FERRETDB_BIN="$FERRETDB_HOME/ferretdb-wrapper"

ferretdb_install() {
  local want stamp="$FERRETDB_BIN.sha256"
  want="$(files_hash "$FERRETDB_SRC/main.go" "$FERRETDB_SRC/go.mod" "$FERRETDB_SRC/go.sum")"
  if [[ -x "$FERRETDB_BIN" && -f "$stamp" && "$(<"$stamp")" == "$want" ]]; then
    log "ferretdb: install skipped ($FERRETDB_BIN up to date)"
    return 0
  fi
  command -v go >/dev/null || die "ferretdb: go not found (need Go >= 1.24)"
  log "ferretdb: building FerretDB $FERRETDB_VERSION wrapper into $FERRETDB_BIN (first build takes ~1 min)"
  mkdir -p "$FERRETDB_HOME"
  rm -f "$stamp"
  # -mod=readonly: go.mod/go.sum are authoritative (reproducible build);
  # CGO off: the SQLite driver is pure Go.
  (cd "$FERRETDB_SRC" && CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -trimpath -o "$FERRETDB_BIN.tmp" .) \
    || die "ferretdb: go build failed"
  mv "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
  printf '%s\n' "$want" >"$stamp"
}

ferretdb_start() {
  local d; d="$(svc_dir ferretdb)"
  require_free_ports ferretdb "$MONGO_PORT" || return 1
  mkdir -p "$d/data"
  spawn ferretdb "$FERRETDB_BIN" \
    -listen-addr "127.0.0.1:$MONGO_PORT" \
    -sqlite-dir "$d/data" \
    -log-level "${COHORTSTREAM_STACK_FERRETDB_LOG_LEVEL:-info}"
}

# Ready = a real OP_MSG {ping: 1} round trip answers ok: 1.
ferretdb_health_once() {
  python3 "$DEPLOY_DIR/wait_mongo.py" --port "$MONGO_PORT" --timeout 0 >/dev/null 2>&1
}

ferretdb_port_desc() { printf '%s' "$MONGO_PORT"; }
ferretdb_url() { printf 'mongodb://127.0.0.1:%s/' "$MONGO_PORT"; }
ferretdb_timeout() { printf '%s' "$HEALTH_TIMEOUT_FERRETDB"; }
