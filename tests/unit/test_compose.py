"""docker-compose.yml cannot run here (no Docker engine), so check it statically: real
images, health checks, named volumes, no secrets, and settings that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cohortstream.kafka_acls import ROLES
from cohortstream.settings import ENV_PREFIX, Settings, env_var_name, file_env_var_name, secret_field_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = {name: svc for name, svc in SERVICES.items() if "build" in svc}
SETTING_VARS = {env_var_name(name) for name in Settings.model_fields} | {
    file_env_var_name(name) for name in secret_field_names()
}
SECRET_PATH = re.compile(r"^/run/secrets/[a-z0-9.-]+$")
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b", re.I)
SUBSTITUTION = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")


def test_the_infrastructure_uses_the_real_images() -> None:
    images = {name: svc.get("image", "") for name, svc in SERVICES.items()}
    assert images["kafka"].startswith("apache/kafka:3.9")
    assert images["mongo"].startswith("mongo:7")
    assert images["orthanc"].startswith("orthancteam/orthanc:")
    assert SERVICES["orthanc"]["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert "KAFKA_PROCESS_ROLES" in SERVICES["kafka"]["environment"]  # KRaft, no ZooKeeper


def test_kafka_never_creates_a_topic_on_a_metadata_request() -> None:
    """With auto-creation, a client asking for a changelog's metadata before faust declared
    it created it with one partition, and series completion broke across two workers
    (tests/integration/test_dicom_faults.py). Compose and the local stack both turn it off."""
    assert SERVICES["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    kafka_sh = (ROOT / "deploy" / "lib" / "kafka.sh").read_text()
    assert "\nauto.create.topics.enable=false\n" in kafka_sh
    assert "auto.create.topics.enable=true" not in kafka_sh


def test_our_services_are_built_from_the_repo_dockerfile() -> None:
    assert OURS, "no service is built from the repository"
    assert (ROOT / "Dockerfile").is_file()
    for svc in OURS.values():
        build = svc["build"]
        assert build == "." or build["context"] == ".", build
        assert set(build.get("args", {}) if isinstance(build, dict) else {}) <= {"EXTRAS", "TORCH_INDEX_URL"}


def test_the_annotator_runs_on_cpu_and_requests_a_gpu_only_in_the_gpu_profile() -> None:
    cpu, gpu = SERVICES["annotator"], SERVICES["annotator-gpu"]
    assert "profiles" not in cpu and "deploy" not in cpu
    assert cpu["build"]["args"] == {"EXTRAS": "annotation", "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["EXTRAS"] == "annotation" and not gpu["build"]["args"]["TORCH_INDEX_URL"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["environment"]["COHORTSTREAM_ANNOTATION_DEVICE"] == "cuda"
    assert cpu["command"] == gpu["command"] == ["cohortstream", "annotate", "worker"]
    # Every other service is built without the model stack.
    for name, svc in OURS.items():
        if not name.startswith("annotator"):
            assert svc["build"] == "." or "args" not in svc["build"], name


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_cohortstream_variable_is_a_setting(name: str) -> None:
    variables = {k for k in OURS[name]["environment"] if k.startswith(ENV_PREFIX)}
    unknown = variables - SETTING_VARS
    assert not unknown, f"{name}: {sorted(unknown)} match no field of Settings"
    # What differs between a laptop and a deployment must be set explicitly.
    for required in ("KAFKA_BOOTSTRAP", "MONGO_URL", "ORTHANC_URL", "ORTHANC_PASSWORD"):
        assert {f"{ENV_PREFIX}{required}", f"{ENV_PREFIX}{required}_FILE"} & variables, required


def test_long_running_services_have_health_checks_and_volumes_are_named() -> None:
    for name, svc in SERVICES.items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./deploy/"):  # a script of this repository, mounted read-only
                assert volume.endswith(":ro") and (ROOT / source).is_file(), volume
                continue
            assert source in COMPOSE["volumes"], f"{name}: volume {source} is not a named volume"


def test_no_secret_is_written_in_the_file() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if SECRET_WORDS.search(str(key)) and isinstance(value, (str, int)):
                    assert SUBSTITUTION.match(str(value)) or SECRET_PATH.match(str(value)), (
                        f"{path}.{key} holds a literal secret"
                    )
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(COMPOSE, "compose")
    users = SERVICES["orthanc"]["environment"]["ORTHANC__REGISTERED_USERS"]
    assert "${ORTHANC_PASSWORD" in users


def test_the_orthanc_postgresql_override_moves_the_index_and_takes_its_password_from_env() -> None:
    override: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.orthanc-postgres.yml").read_text())
    index = override["services"]["orthanc-index"]
    assert index["image"].startswith("postgres:") and "healthcheck" in index
    assert SUBSTITUTION.match(index["environment"]["POSTGRES_PASSWORD"])
    orthanc = override["services"]["orthanc"]
    config = orthanc["environment"]["ORTHANC__POSTGRESQL"]
    assert '"EnableIndex": true' in config and '"Host": "orthanc-index"' in config
    assert '"Password": "${ORTHANC_INDEX_PASSWORD' in config, "the password comes from .env, never the file"
    assert orthanc["depends_on"]["orthanc-index"]["condition"] == "service_healthy"
    assert "orthanc" in SERVICES and SERVICES["orthanc"]["environment"]["TCP_NODELAY"] == "1"


# --- the production configuration: every link encrypted and authenticated (docs/security.md) ---

ROLE_OF = {
    "topics-init": "admin",
    "worker": "worker",
    "annotator": "annotator",
    "annotator-gpu": "annotator",
    "api": "api",
    "listener": "listener",
    "redcap-webhook": "redcap-webhook",
    "orthanc-feed": "orthanc-feed",
}


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_service_reaches_kafka_over_sasl_ssl_as_its_own_user(name: str) -> None:
    env = OURS[name]["environment"]
    assert env["COHORTSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["COHORTSTREAM_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    role = ROLE_OF[name]
    assert env["COHORTSTREAM_KAFKA_SASL_USERNAME"] == role
    assert env["COHORTSTREAM_KAFKA_SASL_PASSWORD_FILE"] == f"/run/secrets/kafka-{role}"
    mounted = set(OURS[name]["secrets"])
    assert {"ca.pem", f"kafka-{role}"} <= mounted
    assert not {s for s in mounted if s.startswith("kafka-")} - {f"kafka-{role}"}, "another role's password"
    assert "COHORTSTREAM_MONGO_URL" not in env, "the MongoDB URL holds a password: it comes from a secret file"


def test_the_broker_knows_every_role_and_only_sasl_ssl_is_exposed() -> None:
    kafka = SERVICES["kafka"]
    assert set(kafka["secrets"]) >= {"kafka-admin", *(f"kafka-{role}" for role in ROLES)}
    start = (ROOT / "deploy" / "kafka" / "compose-start.sh").read_text()
    assert "listeners=SASL_SSL://:9092,CONTROLLER://:9093" in start
    assert "listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL" in start
    assert "allow.everyone.if.no.acl.found=false" in start and "StandardAuthorizer" in start
    assert "auto.create.topics.enable=false" in start
    assert "kafka-acls --apply" in " ".join(SERVICES["topics-init"]["command"])
    assert (ROOT / "deploy" / "kafka" / "roles").read_text().split() == list(ROLES)


def test_mongodb_requires_authentication_and_tls_and_the_app_user_has_one_database() -> None:
    mongo = SERVICES["mongo"]
    assert mongo["environment"]["MONGO_INITDB_ROOT_PASSWORD_FILE"] == "/run/secrets/mongo-root"
    assert "requireTLS" in mongo["command"]
    script = (ROOT / "deploy" / "mongo" / "create-app-user.js").read_text()
    assert 'role: "readWrite", db: database' in script and "/run/secrets/mongo-app" in script
    url_maker = (ROOT / "deploy" / "compose_secrets.sh").read_text()
    assert "authSource=admin&tls=true" in url_maker


def test_the_listener_speaks_only_dicom_tls_and_the_api_only_https() -> None:
    listener = SERVICES["listener"]
    assert listener["environment"]["COHORTSTREAM_DICOM_SCP_PLAINTEXT"] == "false"
    assert listener["ports"] == ["${DICOM_SCP_TLS_PORT:-2762}:2762"]
    assert listener["environment"]["COHORTSTREAM_DICOM_SCP_TLS_CAFILE"] == "/run/secrets/ca.pem"  # mutual TLS
    api = SERVICES["api"]["environment"]
    assert api["COHORTSTREAM_API_TLS_CERTFILE"] == "/run/secrets/api.pem"
    assert "https://" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_secrets_come_from_ignored_folders_made_by_the_script() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/tls/" in ignored and "deploy/secrets/" in ignored
    for name, secret in COMPOSE["secrets"].items():
        assert secret["file"] in (f"./deploy/tls/{name}", f"./deploy/secrets/{name}"), name
    used = {s for svc in SERVICES.values() for s in svc.get("secrets", [])}
    assert used == set(COMPOSE["secrets"])
