#!/usr/bin/env bash
# Make what docker-compose.yml's production configuration reads from Docker secrets:
#   deploy/tls/      the CA, server certificates (Kafka, DICOM listener, API, MongoDB) and a
#                    DICOM sender's client certificate (deploy/tls_certs.sh)
#   deploy/secrets/  random passwords: kafka-admin and kafka-<role> (deploy/kafka/roles),
#                    mongo-root, mongo-app, and mongo-app-url (the application's connection string)
# Neither folder is ever committed (.gitignore). Existing files are kept: delete one and
# rerun to rotate it (docs/security.md, "Rotating secrets").
#
# Usage: deploy/compose_secrets.sh [EXTRA_HOSTNAME...]   (the names clients use for the
# listener and the API, e.g. cohort.hospital.example)
set -euo pipefail
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
TLS="$DEPLOY_DIR/tls"
SECRETS="$DEPLOY_DIR/secrets"

"$DEPLOY_DIR/tls_certs.sh" "$TLS" kafka mongo api listener "$@"
rm -f "$TLS/kafka-keystore-password"
cp "$TLS/kafka-keystore.password" "$TLS/kafka-keystore-password"

umask 077
mkdir -p "$SECRETS"
secret() {
  local f="$SECRETS/$1"
  [[ -s "$f" ]] || head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 >"$f"
}
for role in admin $(cat "$DEPLOY_DIR/kafka/roles"); do secret "kafka-$role"; done
secret mongo-root
secret mongo-app
rm -f "$SECRETS/mongo-app-url"
printf 'mongodb://cohortstream:%s@mongo:27017/?authSource=admin&tls=true&tlsCAFile=/run/secrets/ca.pem\n' \
  "$(<"$SECRETS/mongo-app")" >"$SECRETS/mongo-app-url"

# Containers run as their own users (mongodb, appuser, cohortstream), so the files are
# world-readable inside folders only their owner may enter (0700).
chmod 0700 "$TLS" "$SECRETS"
chmod 0444 "$TLS"/* "$SECRETS"/*
chmod 0400 "$TLS/ca.key"  # no container needs it: keep it offline once the certificates are made
echo "compose_secrets: TLS files in $TLS, passwords in $SECRETS (mode 0700 folders)" >&2
