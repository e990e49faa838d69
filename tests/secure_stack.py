"""A second, secure Kafka for the tests of docs/security.md, started by the repo's own
script (``deploy/stack.sh`` with ``COHORTSTREAM_STACK_SECURE=1`` and only the kafka
service) on free ports in its own state dir: SASL_SSL with a SCRAM user per role, mutual
TLS on the controller link, the StandardAuthorizer. Its TLS material (the stack's CA and
server certificates) serves the DICOM TLS and HTTPS tests too."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from cohortstream.settings import Settings
from tests.net import free_port

__all__ = ["REPO", "SecureKafka", "start_secure_kafka", "stop_secure_kafka"]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SecureKafka:
    """Where the secure broker listens and where its stack keeps TLS files and passwords."""

    state_dir: Path
    port: int

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    def password(self, role: str) -> str:
        return (self.state_dir / "secrets" / f"kafka-{role}").read_text()

    def as_role(self, settings: Settings, role: str, password: str | None = None) -> Settings:
        """``settings`` connected to this broker as the SCRAM user ``role``."""
        return settings.model_copy(
            update={
                "kafka_bootstrap": f"127.0.0.1:{self.port}",
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_sasl_username": role,
                "kafka_sasl_password": SecretStr(self.password(role) if password is None else password),
                "kafka_ssl_cafile": self.tls_dir / "ca.pem",
            }
        )


def _env(state_dir: Path, port: int = 0, controller: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHORTSTREAM_STACK_")}
    env.update(
        COHORTSTREAM_STACK_DIR=str(state_dir),
        COHORTSTREAM_STACK_SERVICES="kafka",
        COHORTSTREAM_STACK_SECURE="1",
        COHORTSTREAM_STACK_KAFKA_HEAP="384m",
    )
    if port:
        env.update(COHORTSTREAM_STACK_KAFKA_PORT=str(port), COHORTSTREAM_STACK_KAFKA_CONTROLLER_PORT=str(controller))
    return env


def start_secure_kafka(state_dir: Path) -> SecureKafka:
    """``deploy/stack.sh up`` of a secure Kafka; raises with the script's output on failure."""
    port, controller = free_port(), free_port()
    result = subprocess.run(
        [str(REPO / "deploy" / "stack.sh"), "up"],
        env=_env(state_dir, port, controller),
        capture_output=True,
        text=True,
        timeout=240,
    )
    if result.returncode != 0:
        raise RuntimeError(f"secure Kafka did not start:\n{result.stderr[-4000:]}")
    return SecureKafka(state_dir, port)


def stop_secure_kafka(state_dir: Path) -> None:
    subprocess.run([str(REPO / "deploy" / "stack.sh"), "down"], env=_env(state_dir), capture_output=True, timeout=120)
