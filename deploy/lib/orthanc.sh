# shellcheck shell=bash
# Orthanc (Debian bookworm: orthanc 1.10.1 + orthanc-dicomweb 1.7), run as our
# own process with a per-stack config -- never through the Debian service.
#
# Bind address: Orthanc 1.10 has no option to choose the listening interface
# (HttpPort/DicomPort are plain integers), so on its own it would listen on
# 0.0.0.0. We start it with deploy/orthanc/bind_loopback.c preloaded, a tiny
# LD_PRELOAD shim that turns wildcard binds into 127.0.0.1 / ::1 binds; the
# health check verifies that both ports really listen on loopback only.
# RemoteAccessAllowed=false and HTTP authentication stay on as a second line.

ORTHANC_BIN=/usr/sbin/Orthanc
ORTHANC_SHIM_SRC="$DEPLOY_DIR/orthanc/bind_loopback.c"
ORTHANC_SHIM="$CACHE_DIR/orthanc-shim/bind_loopback.so"

# Build the loopback-bind shim (cached by source hash).
orthanc_build_shim() {
  local want stamp="$ORTHANC_SHIM.sha256"
  want="$(files_hash "$ORTHANC_SHIM_SRC")"
  if [[ -f "$ORTHANC_SHIM" && -f "$stamp" && "$(<"$stamp")" == "$want" ]]; then
    return 0
  fi
  command -v gcc >/dev/null || die "orthanc: gcc not found (needed for the loopback-bind shim)"
  mkdir -p "$(dirname "$ORTHANC_SHIM")"
  gcc -shared -fPIC -O2 -Wall -Werror -o "$ORTHANC_SHIM.tmp" "$ORTHANC_SHIM_SRC" -ldl \
    || die "orthanc: building $ORTHANC_SHIM_SRC failed"
  mv "$ORTHANC_SHIM.tmp" "$ORTHANC_SHIM"
  printf '%s\n' "$want" >"$stamp"
  log "orthanc: built loopback-bind shim $ORTHANC_SHIM"
}
ORTHANC_USERNAME=cohortstream

orthanc_install() {
  orthanc_build_shim
  if dpkg -s orthanc >/dev/null 2>&1 && dpkg -s orthanc-dicomweb >/dev/null 2>&1; then
    log "orthanc: install skipped (Debian packages orthanc, orthanc-dicomweb already installed)"
    return 0
  fi
  log "orthanc: installing Debian packages orthanc orthanc-dicomweb"
  # The package's maintainer scripts would start the system service
  # (/etc/init.d/orthanc on 8042/4242), which would grab our ports.  A
  # policy-rc.d returning 101 ("action forbidden") prevents that; we only
  # add one temporarily if the machine does not already have one.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    as_root sh -c 'printf "#!/bin/sh\n# temporary, added by cohortstream deploy/stack.sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
    own_policy=1
  fi
  local rc=0
  if ! apt-cache show orthanc-dicomweb >/dev/null 2>&1; then
    as_root apt-get update -qq || rc=$?
  fi
  if ((rc == 0)); then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      orthanc orthanc-dicomweb >/dev/null || rc=$?
  fi
  if ((own_policy)); then
    as_root rm -f /usr/sbin/policy-rc.d
  fi
  ((rc == 0)) || die "orthanc: apt-get install orthanc orthanc-dicomweb failed (rc=$rc)"
  # Belt and braces: if the system service got started anyway (e.g. by
  # systemd ignoring policy-rc.d), stop it -- it would hold 8042/4242.
  if pgrep -f '^/usr/sbin/Orthanc /etc/orthanc' >/dev/null 2>&1; then
    log "orthanc: the Debian orthanc service was auto-started by the package; stopping it"
    as_root /etc/init.d/orthanc stop >/dev/null 2>&1 || true
  fi
}

# The plugin path, as shipped by orthanc-dicomweb.
orthanc_dicomweb_plugin() {
  local p
  p="$(dpkg -L orthanc-dicomweb 2>/dev/null | grep -E '/plugins/libOrthancDicomWeb\.so$' | head -n1)"
  printf '%s' "${p:-/usr/share/orthanc/plugins/libOrthancDicomWeb.so}"
}

# Credentials are generated once per state dir and never stored in the repo.
orthanc_credentials() {
  local d f; d="$(svc_dir orthanc)"; f="$d/credentials"
  mkdir -p "$d"
  if [[ ! -s "$f" ]]; then
    (umask 077 && printf 'ORTHANC_USERNAME=%s\nORTHANC_PASSWORD=%s\n' \
      "$ORTHANC_USERNAME" "$(random_secret)" >"$f.tmp" && mv "$f.tmp" "$f")
  fi
  chmod 600 "$f"
  ORTHANC_PASSWORD="$(sed -n 's/^ORTHANC_PASSWORD=//p' "$f")"
  ORTHANC_USERNAME="$(sed -n 's/^ORTHANC_USERNAME=//p' "$f")"
  [[ -n "$ORTHANC_PASSWORD" && -n "$ORTHANC_USERNAME" ]] || die "orthanc: malformed $f"
}

orthanc_write_config() {
  local d; d="$(svc_dir orthanc)"
  orthanc_credentials
  mkdir -p "$d/storage" "$d/index"
  # JSON is produced by python so every value is escaped correctly.
  (umask 077 && python3 - "$d/orthanc.json" <<EOF
import json, sys
cfg = {
    "Name": "cohortstream-orthanc",
    "StorageDirectory": "$d/storage",
    "IndexDirectory": "$d/index",
    "HttpServerEnabled": True,
    "HttpPort": $ORTHANC_HTTP_PORT,
    "DicomServerEnabled": True,
    "DicomPort": $ORTHANC_DICOM_PORT,
    "DicomAet": "$ORTHANC_AET",
    # Loopback-only comes from the bind shim; this rejects non-local HTTP clients too.
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": True,
    "RegisteredUsers": {"$ORTHANC_USERNAME": "$ORTHANC_PASSWORD"},
    "Plugins": ["$(orthanc_dicomweb_plugin)"],
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                 "WadoRoot": "/wado", "Ssl": False},
    "StableAge": 5,
    "OverwriteInstances": False,
    # Hardening for a dev stack: no Lua/filesystem access through REST.
    "ExecuteLuaEnabled": False,
    "RestApiWriteToFileSystemEnabled": False,
    "LuaScripts": [],
}
with open(sys.argv[1], "w") as fh:
    json.dump(cfg, fh, indent=2)
    fh.write("\n")
EOF
  )
}

orthanc_start() {
  local d; d="$(svc_dir orthanc)"
  [[ -x "$ORTHANC_BIN" ]] || { log "orthanc: $ORTHANC_BIN missing; run 'stack.sh install'"; return 1; }
  require_free_ports orthanc "$ORTHANC_HTTP_PORT" "$ORTHANC_DICOM_PORT" || return 1
  orthanc_write_config
  # TCP_NODELAY=1: the DCMTK inside Orthanc leaves Nagle's algorithm on without it, and
  # every C-STORE response then waits ~40 ms for a delayed ACK (measured here: 22.6 inst/s
  # instead of 605 on one association); senders need it in their environment too.
  spawn orthanc env LD_PRELOAD="$ORTHANC_SHIM" TCP_NODELAY=1 "$ORTHANC_BIN" "$d/orthanc.json"
}

# listens_on_loopback_only PORT -> true if every listener on PORT is 127.0.0.1/::1.
listens_on_loopback_only() {
  local addrs
  addrs="$(ss -Hltn "sport = :$1" 2>/dev/null | awk '{print $4}')"
  [[ -n "$addrs" ]] || return 1
  ! grep -qvE '^(127\.0\.0\.1|\[::1\]):' <<<"$addrs"
}

# Ready = both ports listen on loopback only, and an authenticated REST call and
# the DICOMweb plugin both answer.
orthanc_health_once() {
  listens_on_loopback_only "$ORTHANC_HTTP_PORT" && listens_on_loopback_only "$ORTHANC_DICOM_PORT" || return 1
  orthanc_credentials
  local base="http://127.0.0.1:$ORTHANC_HTTP_PORT" auth
  # credentials go through a curl config on a pipe, not argv (visible in ps)
  auth="user = \"$ORTHANC_USERNAME:$ORTHANC_PASSWORD\""
  curl -fsS -o /dev/null --max-time 5 -K <(printf '%s\n' "$auth") "$base/system" 2>/dev/null \
    && curl -fsS -o /dev/null --max-time 5 -K <(printf '%s\n' "$auth") "$base/dicom-web/studies" 2>/dev/null
}

orthanc_port_desc() { printf '%s (DICOM %s, AET %s)' "$ORTHANC_HTTP_PORT" "$ORTHANC_DICOM_PORT" "$ORTHANC_AET"; }
orthanc_url() { printf 'http://127.0.0.1:%s' "$ORTHANC_HTTP_PORT"; }
orthanc_timeout() { printf '%s' "$HEALTH_TIMEOUT_ORTHANC"; }
