#!/usr/bin/env bash
# Make the TLS material of a cohortstream deployment with openssl: a private CA and one
# key + certificate per server (Kafka, the DICOM listener, the API, MongoDB) and per
# TLS client that must prove who it is (a DICOM sender, the Kafka broker on its
# controller link). Nothing here is ever committed (.gitignore: deploy/tls/, *.key, *.p12).
#
# Usage: deploy/tls_certs.sh OUTDIR [EXTRA_SAN...]
#   EXTRA_SAN: more DNS names for the server certificates (compose service names such as
#   kafka, mongo, api, listener, or the hospital's host names). localhost and 127.0.0.1
#   are always in.
# Idempotent: existing files are kept (delete OUTDIR, or one name's files, to rotate).
#
# Output (OUTDIR, mode 700, keys 600):
#   ca.pem ca.key                      the CA (keep ca.key offline in production)
#   <name>.pem <name>.key              PEM certificate and PKCS#8 key, for
#                                      kafka dicom api mongo (servers) and
#                                      dicom-sender (a DICOM TLS client)
#   <name>.bundle.pem                  key + certificate in one file (MongoDB's --tlsCertificateKeyFile)
#   kafka.p12 kafka.truststore.p12     PKCS#12 keystore/truststore for the broker
#   kafka-keystore.password            their password
set -euo pipefail

OUT="${1:?usage: tls_certs.sh OUTDIR [EXTRA_SAN...]}"
shift
DAYS="${COHORTSTREAM_STACK_TLS_DAYS:-825}"
SERVERS="kafka dicom api mongo"
CLIENTS="dicom-sender"

command -v openssl >/dev/null || { echo "tls_certs: openssl not found" >&2; exit 1; }
umask 077
mkdir -p "$OUT"
chmod 700 "$OUT"

san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do san+=",DNS:$name"; done

if [[ ! -s "$OUT/ca.pem" ]]; then
  openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days "$DAYS" \
    -subj "/O=cohortstream/CN=cohortstream local CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
fi

# issue NAME CN USAGE SAN : a key and a CA-signed certificate for NAME.
issue() {
  local name="$1" cn="$2" usage="$3" names="$4" ext
  [[ -s "$OUT/$name.pem" && -s "$OUT/$name.key" ]] && return 0
  ext="$(mktemp)"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$usage" >"$ext"
  [[ -n "$names" ]] && printf 'subjectAltName=%s\n' "$names" >>"$ext"
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/O=cohortstream/CN=$cn" \
    -keyout "$OUT/$name.key" -out "$OUT/$name.csr" 2>/dev/null
  openssl x509 -req -sha256 -days "$DAYS" -in "$OUT/$name.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" \
    -CAcreateserial -extfile "$ext" -out "$OUT/$name.pem" 2>/dev/null
  rm -f "$OUT/$name.csr" "$ext"
  cat "$OUT/$name.key" "$OUT/$name.pem" >"$OUT/$name.bundle.pem"
}

for name in $SERVERS; do
  # The broker's certificate is also its client certificate on the mutual-TLS controller link.
  usage=serverAuth
  [[ "$name" == kafka ]] && usage="serverAuth,clientAuth"
  issue "$name" "cohortstream-$name" "$usage" "$san"
done
for name in $CLIENTS; do
  issue "$name" "cohortstream-$name" clientAuth ""
done

if [[ ! -s "$OUT/kafka.p12" ]]; then
  [[ -s "$OUT/kafka-keystore.password" ]] || head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 >"$OUT/kafka-keystore.password"
  pw="$(<"$OUT/kafka-keystore.password")"
  openssl pkcs12 -export -name kafka -inkey "$OUT/kafka.key" -in "$OUT/kafka.pem" -certfile "$OUT/ca.pem" \
    -passout "pass:$pw" -out "$OUT/kafka.p12"
  rm -f "$OUT/kafka.truststore.p12"
  if command -v keytool >/dev/null; then
    # A truststore holding only the CA (keytool marks it a trusted entry, which Java needs).
    rm -f "$OUT/kafka.truststore.p12"
    keytool -importcert -noprompt -alias cohortstream-ca -file "$OUT/ca.pem" -storetype PKCS12 \
      -keystore "$OUT/kafka.truststore.p12" -storepass "$pw" >/dev/null 2>&1
  else
    openssl pkcs12 -export -nokeys -in "$OUT/ca.pem" -jdktrust anyExtendedKeyUsage \
      -passout "pass:$pw" -out "$OUT/kafka.truststore.p12"
  fi
fi
chmod 600 "$OUT"/*  # deploy/compose_secrets.sh then opens them to the containers' users
echo "tls_certs: TLS material in $OUT" >&2
