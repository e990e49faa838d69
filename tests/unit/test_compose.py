"""docker-compose.yml cannot run here (no Docker engine), so check it statically: real
images, health checks, named volumes, no secrets, and settings that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cohortstream.settings import ENV_PREFIX, Settings, env_var_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = {name: svc for name, svc in SERVICES.items() if "build" in svc}
SETTING_VARS = {env_var_name(name) for name in Settings.model_fields}
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
        assert f"{ENV_PREFIX}{required}" in variables


def test_long_running_services_have_health_checks_and_volumes_are_named() -> None:
    for name, svc in SERVICES.items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in COMPOSE["volumes"], f"{name}: volume {source} is not a named volume"


def test_no_secret_is_written_in_the_file() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if SECRET_WORDS.search(str(key)) and isinstance(value, (str, int)):
                    assert SUBSTITUTION.match(str(value)), f"{path}.{key} holds a literal secret"
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
