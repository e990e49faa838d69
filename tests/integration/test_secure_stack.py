"""The local stack in secure mode (``make up SECURE=1``; docs/security.md), started by
``deploy/stack.sh`` on free ports at DEBUG log level, with secrets of its own (Kafka and
MongoDB passwords, the keystore password, Orthanc's password) and secrets the test sets
(REDCap token and trigger secret, BIDS pseudonym key, an API key).

* MongoDB (secantusd-rs ``--auth`` with TLS) refuses clients without TLS, anonymous clients
  and wrong passwords, and the application's user may write its own database only.
* No secret reaches a log: the test drives every service through its secure link —
  DICOM TLS, HTTPS with the API key, the REDCap trigger with its secret, wrong
  credentials too — stops the stack, then greps every log for every secret."""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from cohortstream.synthetic import mr_study, write_study
from tests.net import free_port
from tests.secure_stack import REPO

STORESCU = "/usr/bin/storescu"
STACK = str(REPO / "deploy" / "stack.sh")
CLI = str(REPO / ".venv" / "bin" / "cohortstream")
SERVICES = "kafka mongo orthanc worker listener redcap api feed"


def _stack_env(state_dir: Path, test_secrets: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHORTSTREAM_") or k == "COHORTSTREAM_CACHE_DIR"}
    ports = {
        name: str(free_port())
        for name in (
            "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "MONGO_PORT", "ORTHANC_HTTP_PORT", "ORTHANC_DICOM_PORT",
            "DICOM_SCP_PORT", "DICOM_SCP_TLS_PORT", "REDCAP_PORT", "API_PORT", "FEED_PORT",
        )
    }  # fmt: skip
    env.update({f"COHORTSTREAM_STACK_{name}": port for name, port in ports.items()})
    env.update(
        COHORTSTREAM_STACK_DIR=str(state_dir),
        COHORTSTREAM_STACK_SECURE="1",
        COHORTSTREAM_STACK_SERVICES=SERVICES,
        COHORTSTREAM_STACK_WORKER_METRICS_PORT="0",  # off: no fixed ports shared with other stacks
        COHORTSTREAM_STACK_KAFKA_HEAP="384m",
        COHORTSTREAM_LOG_LEVEL="DEBUG",
        COHORTSTREAM_REDCAP_TRIGGER_SECRET=test_secrets["trigger"],
        COHORTSTREAM_BIDS_PSEUDONYM_KEY=test_secrets["pseudonym"],
        COHORTSTREAM_REDCAP_PROJECTS=json.dumps(
            [{"redcap_url": "https://redcap.invalid/", "project_id": "7", "api_token": test_secrets["token"]}]
        ),
    )
    return env


def _stack_secrets(state_dir: Path) -> dict[str, str]:
    """What the stack generated: every file under secrets/, the keystore password, Orthanc's password."""
    found = {f"secrets/{p.name}": p.read_text().strip() for p in (state_dir / "secrets").iterdir()}
    found["keystore"] = (state_dir / "tls" / "kafka-keystore.password").read_text().strip()
    for line in (state_dir / "orthanc" / "credentials").read_text().splitlines():
        if line.startswith("ORTHANC_PASSWORD="):
            found["orthanc"] = line.partition("=")[2]
    return found


@dataclass
class SecureStack:
    state_dir: Path
    env: dict[str, str]
    test_secrets: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    def down(self) -> None:
        down = subprocess.run([STACK, "down"], env=self.env, capture_output=True, text=True, timeout=180)
        self.outputs += [down.stdout, down.stderr]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    state_dir = tmp_path_factory.mktemp("secure-stack")
    test_secrets = {name: f"{name}-{secrets.token_urlsafe(18)}" for name in ("trigger", "pseudonym", "token")}
    env = _stack_env(state_dir, test_secrets)
    up = subprocess.run([STACK, "up"], env=env, capture_output=True, text=True, timeout=400)
    running = SecureStack(state_dir, env, test_secrets, [up.stdout, up.stderr])
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        yield running
    finally:
        running.down()


def test_mongodb_requires_tls_and_authentication_and_the_app_user_has_one_database(stack: SecureStack) -> None:
    port = stack.env["COHORTSTREAM_STACK_MONGO_PORT"]
    tls = {"tls": True, "tlsCAFile": str(stack.state_dir / "tls" / "ca.pem")}
    plain = MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=3000)
    with pytest.raises(PyMongoError):
        plain.admin.command("ping")  # no TLS: no answer
    plain.close()
    anonymous = MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=10000, **tls)
    wrong = MongoClient(
        f"mongodb://cohortstream:not-the-password@127.0.0.1:{port}/?authSource=admin",
        serverSelectionTimeoutMS=10000,
        **tls,
    )
    app = MongoClient(
        (stack.state_dir / "secrets" / "mongo-app-url").read_text().strip(), serverSelectionTimeoutMS=10000
    )
    try:
        with pytest.raises(OperationFailure, match="requires authentication"):
            anonymous.cohortstream.probe.insert_one({"x": 1})
        with pytest.raises(OperationFailure, match="requires authentication"):
            anonymous.cohortstream.instances.find_one()
        with pytest.raises(OperationFailure, match="(?i)authentication failed"):
            wrong.cohortstream.probe.find_one()
        assert app.cohortstream.probe.insert_one({"x": 1}).acknowledged
        with pytest.raises(OperationFailure, match="not authorized"):
            app.elsewhere.probe.insert_one({"x": 1})
        with pytest.raises(OperationFailure, match="not authorized"):
            app.admin.command("createUser", "intruder", pwd="x" * 12, roles=["root"])
    finally:
        for client in (anonymous, wrong, app):
            client.close()


@pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")
def test_no_secret_appears_in_any_log(stack: SecureStack, tmp_path: Path) -> None:
    state_dir, env, test_secrets, outputs = stack.state_dir, stack.env, stack.test_secrets, stack.outputs
    try:
        generated = _stack_secrets(state_dir)
        assert len(generated["orthanc"]) >= 16, "Orthanc's password was not found in its credentials file"
        tls = state_dir / "tls"
        stack_env = str(state_dir / "stack.env")

        # DICOM over TLS with the sender's certificate, through to the views.
        study = tmp_path / "study"
        write_study(mr_study(n_series=1, slices=4, rows=16, cols=16, seed=4242, patient_id="SECRET-LOG"), study)
        sent = subprocess.run(
            [STORESCU, "-R", "+sd", "+r", "+tls", str(tls / "dicom-sender.key"), str(tls / "dicom-sender.pem"),
             "+cf", str(tls / "ca.pem"), "-aet", "LOGTEST", "-aec", "COHORTSTREAM", "127.0.0.1",
             env["COHORTSTREAM_STACK_DICOM_SCP_TLS_PORT"], str(study)],
            capture_output=True, text=True, timeout=120, env={**env, "TCP_NODELAY": "1"},
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        mongo = MongoClient(
            (state_dir / "secrets" / "mongo-app-url").read_text().strip(), serverSelectionTimeoutMS=10000
        )
        deadline = time.monotonic() + 120
        while mongo.cohortstream.instances.count_documents({"in_orthanc": True}) < 4:
            assert time.monotonic() < deadline, "the instances never reached Orthanc and the views"
            time.sleep(0.5)  # poll interval of a bounded wait
        mongo.close()

        # An API key made with the CLI, used over HTTPS; a wrong key too.
        made = subprocess.run(
            [CLI, "--env-file", stack_env, "api-keys", "create", "--name", "log-test", "--role", "admin"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        outputs.append(made.stderr)
        api_key = made.stdout.strip()
        test_secrets["api-key"] = api_key
        api = f"https://127.0.0.1:{env['COHORTSTREAM_STACK_API_PORT']}"
        trust = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        with httpx.Client(verify=trust, timeout=60) as client:
            assert client.get(f"{api}/subjects", headers={"Authorization": f"Bearer {api_key}"}).status_code == 200
            assert client.get(f"{api}/subjects", headers={"Authorization": "Bearer wrong-key"}).status_code == 401
            assert client.get(f"{api}/readyz").status_code == 200
        # The REDCap trigger with its secret (the record pull then fails: redcap.invalid), and without.
        redcap = f"http://127.0.0.1:{env['COHORTSTREAM_STACK_REDCAP_PORT']}/redcap/trigger"
        form = {
            "redcap_url": "https://redcap.invalid/", "project_id": "7", "instrument": "moca", "record": "1",
            "moca_complete": "2", "project_url": "https://redcap.invalid/redcap_v14/index.php?pid=7",
        }  # fmt: skip
        with httpx.Client(timeout=60) as client:
            client.post(redcap, params={"secret": test_secrets["trigger"]}, data=form)
            assert client.post(redcap, params={"secret": "a-wrong-guess"}, data=form).status_code == 403
        # A CLI command that fails to connect with a wrong Kafka password.
        wrong = subprocess.run(
            [CLI, "--env-file", stack_env, "topics", "create"],
            env={**env, "COHORTSTREAM_KAFKA_SASL_PASSWORD": "wrong-password-123", "COHORTSTREAM_KAFKA_SASL_PASSWORD_FILE": ""},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert wrong.returncode != 0
        outputs += [wrong.stdout, wrong.stderr]
    finally:
        stack.down()  # the logs are complete once every process has stopped

    logs = {str(p.relative_to(state_dir)): p.read_text(errors="replace") for p in state_dir.rglob("*.log")}
    logs["stack.sh and CLI output"] = "\n".join(outputs)
    assert {"kafka/service.log", "listener/service.log", "api/service.log", "worker/service.log"} <= set(logs)
    assert sum(len(text) for text in logs.values()) > 100_000, "DEBUG logs expected"
    every_secret = {**generated, **test_secrets}
    leaks = [f"{name} in {log}" for name, value in every_secret.items() for log, text in logs.items() if value in text]
    assert not leaks, f"secrets found in logs: {leaks}"
