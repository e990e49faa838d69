#!/bin/sh
# The Kafka broker of docker-compose.yml in production mode: SASL_SSL (SCRAM-SHA-512) for
# clients, mutual TLS on the controller link, the StandardAuthorizer with no access
# without an ACL -- the same configuration as the local stack's secure mode
# (deploy/lib/kafka.sh). Every /run/secrets/kafka-<user> file becomes a SCRAM user when
# the storage is formatted (first start); `cohortstream kafka-acls --apply` (service
# topics-init) then grants each role what it needs. Nothing secret is printed.
set -eu
S=/run/secrets
CONF=/tmp/server.properties
DATA=/var/lib/kafka/data
pw="$(cat "$S/kafka-keystore-password")"
umask 077
cat >"$CONF" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@kafka:9093
listeners=SASL_SSL://:9092,CONTROLLER://:9093
advertised.listeners=SASL_SSL://kafka:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$S/kafka-admin")";
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location=$S/kafka.p12
ssl.keystore.password=$pw
ssl.key.password=$pw
ssl.truststore.type=PKCS12
ssl.truststore.location=$S/kafka.truststore.p12
ssl.truststore.password=$pw
ssl.enabled.protocols=TLSv1.3,TLSv1.2
ssl.principal.mapping.rules=RULE:^CN=([^,]+),.*\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:cohortstream-kafka
log.dirs=$DATA
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
cat >/tmp/admin-client.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$S/kafka-admin")";
ssl.truststore.type=PEM
ssl.truststore.location=$S/ca.pem
PROPS
if [ ! -f "$DATA/meta.properties" ]; then
  set --
  for f in "$S"/kafka-*; do
    user="${f##*/kafka-}"
    case "$user" in keystore-password|*.p12|*.pem) continue ;; esac
    set -- "$@" --add-scram "SCRAM-SHA-512=[name=$user,password=$(cat "$f")]"
  done
  /opt/kafka/bin/kafka-storage.sh format -t "$(/opt/kafka/bin/kafka-storage.sh random-uuid)" -c "$CONF" "$@" >/dev/null
  echo "kafka: storage formatted with $# SCRAM option(s)" >&2
fi
exec /opt/kafka/bin/kafka-server-start.sh "$CONF"
