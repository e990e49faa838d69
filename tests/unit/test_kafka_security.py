"""Kafka connection security and ACLs: built once from settings, least privilege per role."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from cohortstream.errors import ConfigurationError
from cohortstream.kafka_acls import ROLES, Operation, PatternType, ResourceType, acl_plan
from cohortstream.kafka_security import aiokafka_security, kafka_security
from cohortstream.lanes import LANE_TOPICS, LANES, lane_app_id
from cohortstream.settings import Settings, env_var_name, file_env_var_name, secret_field_names, unknown_env_vars


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(env_var_name(name), raising=False)
        monkeypatch.delenv(file_env_var_name(name), raising=False)


def test_plaintext_is_the_default_and_passes_no_tls_or_sasl() -> None:
    assert aiokafka_security(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_gives_every_client_scram_credentials_and_a_verifying_tls_context() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_username="listener", kafka_sasl_password="pw-1234"
    )
    kwargs = aiokafka_security(settings)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("listener", "pw-1234")
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert "pw-1234" not in repr(kafka_security(settings))


def test_sasl_ssl_without_a_user_is_refused() -> None:
    with pytest.raises(ValueError, match="KAFKA_SASL_USERNAME"):
        Settings(kafka_security_protocol="SASL_SSL")


def test_a_missing_ca_file_names_the_file(tmp_path: Path) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "nope.pem")
    with pytest.raises(ConfigurationError, match="nope.pem"):
        kafka_security(settings)


def test_the_faust_app_gets_the_same_credentials() -> None:
    from streams.app import broker_credentials

    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="worker", kafka_sasl_password="pw")
    credentials = broker_credentials(settings)
    assert credentials is not None
    assert credentials.protocol.value == "SASL_SSL"  # type: ignore[attr-defined]
    assert credentials.mechanism.value == "SCRAM-SHA-512"  # type: ignore[attr-defined]
    assert broker_credentials(Settings()) is None


def test_every_secret_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    for name in secret_field_names():
        if name != "redcap_projects":
            monkeypatch.setenv(file_env_var_name(name), str(secret))
    settings = Settings.load()
    for name in secret_field_names():
        if name != "redcap_projects":
            assert getattr(settings, name).get_secret_value() == "from-a-file", name
    assert unknown_env_vars() == []


def test_a_secret_file_named_in_the_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("in-file")
    env = tmp_path / "stack.env"
    env.write_text(f"COHORTSTREAM_KAFKA_SASL_PASSWORD_FILE={tmp_path / 'pw'}\nCOHORTSTREAM_KAFKA_SASL_USERNAME=u\n")
    settings = Settings.load(env)
    assert settings.kafka_sasl_password.get_secret_value() == "in-file"


def test_redcap_projects_with_their_tokens_can_come_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    projects = tmp_path / "projects.json"
    projects.write_text('[{"redcap_url": "https://r.example/", "project_id": "7", "api_token": "T0K"}]')
    monkeypatch.setenv("COHORTSTREAM_REDCAP_PROJECTS_FILE", str(projects))
    assert Settings.load().redcap_projects[0].api_token.get_secret_value() == "T0K"


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("x")
    monkeypatch.setenv("COHORTSTREAM_ORTHANC_PASSWORD", "y")
    monkeypatch.setenv("COHORTSTREAM_ORTHANC_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(ConfigurationError, match="not both"):
        Settings.load()


def test_an_unreadable_secret_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHORTSTREAM_MONGO_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="COHORTSTREAM_MONGO_URL_FILE"):
        Settings.load()


# --- ACLs ------------------------------------------------------------------------------


def _by_role(role: str) -> list[tuple[ResourceType, str, PatternType, Operation]]:
    return [
        (a.resource_type, a.resource_name, a.pattern, a.operation)
        for a in acl_plan(Settings())
        if a.principal == f"User:{role}"
    ]


@pytest.mark.parametrize(
    "role, topic",
    [
        ("listener", "dicom.instance-received"),
        ("redcap-webhook", "redcap.record-changed"),
        ("ehr-loader", "ehr.record"),
        ("orthanc-feed", "dicom.instance-received"),
    ],
)
def test_edges_may_only_produce_to_their_topics(role: str, topic: str) -> None:
    acls = _by_role(role)
    assert (ResourceType.TOPIC, f"cohortstream.{topic}", PatternType.LITERAL, Operation.WRITE) in acls
    assert not [a for a in acls if a[3] in (Operation.READ, Operation.CREATE)], "an edge never reads or creates"
    assert not [a for a in acls if a[0] is ResourceType.GROUP], "an edge joins no consumer group"
    written = {a[1] for a in acls if a[3] is Operation.WRITE}
    assert written <= {f"cohortstream.{topic}", "cohortstream.dead-letter"}


def test_worker_lanes_read_only_their_inputs_in_their_own_groups() -> None:
    settings = Settings()
    acls = _by_role("worker")
    read_topics = {
        a[1] for a in acls if a[0] is ResourceType.TOPIC and a[3] is Operation.READ and a[2] is PatternType.LITERAL
    }
    assert read_topics == {settings.topic(t) for topics in LANE_TOPICS.values() for t in topics}
    groups = {a[1] for a in acls if a[0] is ResourceType.GROUP and a[3] is Operation.READ}
    assert groups == {lane_app_id(settings, lane) for lane in LANES}
    # faust's changelog, repartition and assignor topics: only under each lane's own prefix
    created = {a[1] for a in acls if a[3] is Operation.CREATE}
    assert created == {f"{lane_app_id(settings, lane)}-" for lane in LANES}
    assert not [a for a in acls if a[2] is PatternType.PREFIXED and a[0] is ResourceType.GROUP]


def test_the_api_describes_but_never_reads_topics() -> None:
    acls = _by_role("api")
    assert not [a for a in acls if a[3] is Operation.READ]
    assert {a[1] for a in acls if a[3] is Operation.WRITE} == {
        "cohortstream.annotation.requested",
        "cohortstream.annotation.reviewed",
        "cohortstream.audit.access",
    }


def test_every_role_has_acls_and_the_stack_creates_its_user() -> None:
    roles = Path(__file__).resolve().parents[2].joinpath("deploy/kafka/roles").read_text().split()
    assert sorted(roles) == sorted(ROLES), "deploy/kafka/roles (the SCRAM users the scripts create) != ROLES"
    for role in ROLES:
        assert _by_role(role), role


def test_a_child_process_gets_the_value_and_ignores_an_inherited_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's supervisor and the listener's process group pass settings down as values
    (settings_environment); the parent's *_FILE and the env file's must not clash with them."""
    from cohortstream.settings import settings_environment

    (tmp_path / "admin").write_text("admin-pw")
    env_file = tmp_path / "stack.env"
    env_file.write_text(f"COHORTSTREAM_KAFKA_SASL_PASSWORD_FILE={tmp_path / 'admin'}\n")
    monkeypatch.setenv("COHORTSTREAM_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "admin"))
    parent = Settings.load(env_file, kafka_sasl_password="worker-pw")
    for key, value in settings_environment(parent).items():
        monkeypatch.setenv(key, value)
    assert Settings.load(env_file).kafka_sasl_password.get_secret_value() == "worker-pw"


def test_the_cli_lists_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    from cohortstream.cli import main

    assert main(["kafka-acls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(acl_plan(Settings()))
    assert any(
        line.split() == ["User:listener", "WRITE", "topic:cohortstream.dicom.instance-received"] for line in lines
    )
