# shellcheck shell=bash
# The local MongoDB-wire server: secantusd-rs, the Rust daemon of SecantusDB on
# WiredTiger (crate `secantus-mdb`, GPL-2.0-only, beta, one maintainer). It runs as a
# separate process and is pinned to one version. Why this server and not FerretDB v1:
# FerretDB v1 uses an index only for `_id` equality and wedged on update commands with
# ~100 statements matching existing documents; secantusd-rs uses secondary indexes for
# equality, `$in`, ranges and counts, and takes bulk upserts of hundreds of statements
# (docs/view-store.md has the measurements). No `mongod` is packaged on any registry
# this project can reach; docker-compose deploys MongoDB 7 itself.

SECANTUS_CRATE=secantus-mdb
SECANTUS_VERSION=0.5.3-beta.196
SECANTUS_HOME="$CACHE_DIR/secantus/$SECANTUS_VERSION"
SECANTUS_BIN="$SECANTUS_HOME/bin/secantusd-rs"
MONGO_CACHE_SIZE="${COHORTSTREAM_STACK_MONGO_CACHE_SIZE:-1G}"

mongo_install() {
  if [[ -x "$SECANTUS_BIN" ]]; then
    log "mongo: install skipped ($SECANTUS_BIN present)"
    return 0
  fi
  command -v cargo >/dev/null || die "mongo: cargo not found (needed once to build $SECANTUS_CRATE $SECANTUS_VERSION)"
  log "mongo: building $SECANTUS_CRATE $SECANTUS_VERSION into $SECANTUS_HOME (first build takes ~5 min on 2 cores; cached after)"
  mkdir -p "$SECANTUS_HOME"
  # --locked: the crate's own Cargo.lock (reproducible); --ignore-rust-version: the crate
  # declares a newer rustc than Debian's toolchain here, and builds fine with it.
  # Build into a temporary root and move it in place, so an interrupted build never
  # leaves a half-installed binary that the check above would take as done.
  rm -rf "$SECANTUS_HOME.tmp"
  cargo install "$SECANTUS_CRATE" --version "$SECANTUS_VERSION" --locked --ignore-rust-version \
      --root "$SECANTUS_HOME.tmp" --quiet \
    || die "mongo: cargo install $SECANTUS_CRATE $SECANTUS_VERSION failed"
  [[ -x "$SECANTUS_HOME.tmp/bin/secantusd-rs" ]] || die "mongo: the build produced no secantusd-rs binary"
  rm -rf "$SECANTUS_HOME"
  mv "$SECANTUS_HOME.tmp" "$SECANTUS_HOME"
}

# Secure mode: TLS (the stack's CA) and SCRAM-SHA-256 authentication (--auth) in a data dir of its own; the users
# (root, and the application's with readWrite on its database only) are made by
# mongo_secure_setup once the server answers.
MONGO_APP_USER=cohortstream
MONGO_DATABASE=cohortstream

mongo_data_dir() {
  if is_secure; then printf '%s/data-secure' "$(svc_dir mongo)"; else printf '%s/data' "$(svc_dir mongo)"; fi
}

mongo_start() {
  local extra=()
  require_free_ports mongo "$MONGO_PORT" || return 1
  mkdir -p "$(mongo_data_dir)"
  if is_secure; then
    ensure_tls
    extra=(--auth --tls-cert-file "$(tls_dir)/mongo.pem" --tls-key-file "$(tls_dir)/mongo.key")
  fi
  spawn mongo "$SECANTUS_BIN" \
    --host 127.0.0.1 \
    --port "$MONGO_PORT" \
    --storage-path "$(mongo_data_dir)" \
    --cache-size "$MONGO_CACHE_SIZE" \
    "${extra[@]}"
}

# The application's connection string, in a file (mode 600) that stack.env names.
mongo_app_url_file() {
  local f; f="$(secrets_dir)/mongo-app-url"
  (umask 077 && printf 'mongodb://%s:%s@127.0.0.1:%s/?authSource=admin&tls=true&tlsCAFile=%s\n' \
    "$MONGO_APP_USER" "$(<"$(stack_secret mongo-app)")" "$MONGO_PORT" "$(tls_dir)/ca.pem" >"$f")
  printf '%s' "$f"
}

mongo_secure_setup() {
  "$STACK_VENV/bin/python" "$DEPLOY_DIR/mongo_users.py" --port "$MONGO_PORT" \
    --root-password-file "$(stack_secret mongo-root)" --app-user "$MONGO_APP_USER" \
    --app-password-file "$(stack_secret mongo-app)" --database "$MONGO_DATABASE" --tls-ca "$(tls_dir)/ca.pem" \
    >>"$(svc_log mongo)" 2>&1
}

# Ready = a real OP_MSG {ping: 1} round trip answers ok: 1.
mongo_health_once() {
  local extra=()
  if is_secure; then extra=(--tls-ca "$(tls_dir)/ca.pem"); fi
  python3 "$DEPLOY_DIR/wait_mongo.py" --port "$MONGO_PORT" --timeout 0 "${extra[@]}" >/dev/null 2>&1
}

mongo_port_desc() { printf '%s' "$MONGO_PORT"; }
mongo_url() { printf 'mongodb://127.0.0.1:%s/' "$MONGO_PORT"; }
mongo_timeout() { printf '%s' "$HEALTH_TIMEOUT_MONGO"; }
