"""Encrypted and authenticated links (docs/security.md) against a real secure broker.

A second Kafka, started by ``deploy/stack.sh`` in secure mode (SASL_SSL, a SCRAM user
per role, ACLs from ``cohortstream kafka-acls``), carries the DICOM path: dcmtk's
``storescu +tls`` (with a client certificate) → our listener's DICOM TLS port (plain
DICOM off) → Kafka as the ``listener`` user → the worker's archive and view lanes as the
``worker`` user → Orthanc and the views. Clients without credentials, with a wrong
password, or with a producer's credentials trying to consume are refused, and so are a
plain DICOM association and a TLS caller without a certificate.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from cohortstream.admin import ensure_topics
from cohortstream.kafka_acls import acl_plan, apply_acls
from cohortstream.kafka_security import aiokafka_security
from cohortstream.settings import Settings, settings_environment
from cohortstream.synthetic import mr_study, write_study
from producers.dicom import DicomListener
from streams.supervisor import READY_LINE
from tests.integration.test_dicom_pipeline import fresh_seed
from tests.listener_settings import listener_settings
from tests.net import free_port
from tests.polling import eventually
from tests.secure_stack import SecureKafka, start_secure_kafka, stop_secure_kafka

STORESCU = "/usr/bin/storescu"
pytestmark = pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    state_dir = tmp_path_factory.mktemp("secure-stack")
    try:
        yield start_secure_kafka(state_dir)
    finally:
        stop_secure_kafka(state_dir)


@pytest.fixture
async def settings(stack_settings: Settings, secure_kafka: SecureKafka, tmp_path: Path) -> Settings:
    """The test's settings (own topics, groups, database) on the secure broker as its super
    user, with the DICOM listener on TLS only; the topics and every role's ACLs made as
    ``deploy/stack.sh`` makes them."""
    tls = secure_kafka.tls_dir
    base = listener_settings(
        stack_settings,
        tmp_path,
        series_quiet_period_s=2.0,
        dicom_scp_plaintext=False,
        dicom_scp_tls_port=free_port(),
        dicom_scp_tls_certfile=tls / "dicom.pem",
        dicom_scp_tls_keyfile=tls / "dicom.key",
        dicom_scp_tls_cafile=tls / "ca.pem",
    )
    admin = secure_kafka.as_role(base, "admin")
    await ensure_topics(admin)
    await apply_acls(admin, acl_plan(admin))
    return admin


def _worker(settings: Settings, log_path: Path, *lanes: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_environment(settings), "COHORTSTREAM_LOG_FORMAT": "console"}
    env.pop("COHORTSTREAM_ENV_FILE", None)
    argv = [sys.executable, "-m", "cohortstream.cli", "worker"]
    for lane in lanes:
        argv += ["--lane", lane]
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


async def _storescu(*argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [STORESCU, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


async def test_the_dicom_path_runs_through_tls_and_the_secure_broker(
    settings: Settings, secure_kafka: SecureKafka, db: Any, tmp_path: Path
) -> None:
    tls = secure_kafka.tls_dir
    study = write_study(
        mr_study(n_series=1, slices=8, rows=16, cols=16, seed=fresh_seed(), patient_id=f"TLS-{uuid.uuid4().hex[:6]}"),
        tmp_path / "study",
    )
    log_path = tmp_path / "worker.log"
    worker = _worker(secure_kafka.as_role(settings, "worker"), log_path, "dicom-archive", "dicom-views")
    try:
        await eventually(
            lambda: asyncio.to_thread(lambda: READY_LINE in log_path.read_text(errors="replace") or worker.poll()),
            timeout_s=120,
            what="the worker lanes, as the worker user, ready",
        )
        assert worker.poll() is None, log_path.read_text(errors="replace")[-3000:]
        with DicomListener(secure_kafka.as_role(settings, "listener")) as listener:
            assert listener.tls_address is not None
            port = str(listener.tls_address[1])
            common = ["-R", "+sd", "+r", "-aet", "SECURE", "-aec", settings.dicom_scp_aet, "127.0.0.1"]
            sent = await _storescu(
                "+tls", str(tls / "dicom-sender.key"), str(tls / "dicom-sender.pem"), "+cf", str(tls / "ca.pem"),
                *common, port, str(tmp_path / "study"),
            )  # fmt: skip
            assert sent.returncode == 0 and " E: " not in f" {sent.stdout}{sent.stderr}", sent.stderr[-3000:]

            # Plain DICOM is off: nothing listens on the plain port, and the TLS port does not speak it.
            plain = await _storescu(*common, str(settings.dicom_scp_port), str(study[0]))
            assert plain.returncode != 0
            on_tls_port = await _storescu("-to", "5", "-ta", "5", *common, port, str(study[0]))
            assert on_tls_port.returncode != 0
            # A TLS caller without a certificate signed by our CA is refused (mutual TLS).
            anonymous = await _storescu("+tla", "+cf", str(tls / "ca.pem"), *common, port, str(study[0]))
            assert anonymous.returncode != 0

            async def archived() -> bool:
                count = await db.instances.count_documents({"in_orthanc": True, "received_sha256": {"$exists": True}})
                return count == len(study)

            await eventually(archived, timeout_s=120, what="every instance in Orthanc and the views, via SASL_SSL")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert "Authorization" not in log_path.read_text(errors="replace"), "the worker hit an ACL it lacks"


async def _consume_one(settings: Settings, group: str | None) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=10000,
        **aiokafka_security(settings),
    )
    topic = settings.topic("dicom.instance-received")
    try:
        async with asyncio.timeout(30):
            await consumer.start()
            if group is None:
                consumer.assign([TopicPartition(topic, 0)])
                await consumer.seek_to_beginning()
            else:
                consumer.subscribe([topic])
            await consumer.getmany(timeout_ms=5000)
            await consumer.getone()
    finally:
        await consumer.stop()


async def _produce_one(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10000, **aiokafka_security(settings)
    )
    try:
        async with asyncio.timeout(30):
            await producer.start()
            await producer.send_and_wait(settings.topic(topic), b"x", key=b"k")
    finally:
        await producer.stop()


async def test_clients_without_credentials_or_rights_are_refused(
    settings: Settings, secure_kafka: SecureKafka, caplog: pytest.LogCaptureFixture
) -> None:
    listener = secure_kafka.as_role(settings, "listener")
    await _produce_one(listener, "dicom.instance-received")  # its own topic: allowed

    no_credentials = settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    with pytest.raises((KafkaError, TimeoutError)):
        await _consume_one(no_credentials, None)
    caplog.clear()
    with pytest.raises(KafkaError):  # aiokafka: "Unable to bootstrap", after the broker said why
        await _consume_one(secure_kafka.as_role(settings, "worker", password="not-the-password"), None)
    assert "SaslAuthenticationFailed" in caplog.text
    # A producer's credentials cannot consume: neither in a lane's group nor group-less.
    with pytest.raises(KafkaError, match="Authorization"):
        await _consume_one(listener, f"{settings.app_id}-dicom-views")
    with pytest.raises(KafkaError, match="Authorization"):
        await _consume_one(listener, None)
    # Nor write to another edge's topic.
    with pytest.raises(KafkaError, match="Authorization"):
        await _produce_one(listener, "ehr.record")
