"""A second, secure Kafka for the tests of docs/security.md, started by the repo's own
script (``deploy/stack.sh`` with ``COHORTSTREAM_STACK_SECURE=1`` and only the kafka
service) on free ports in its own state dir: SASL_SSL with a SCRAM user per role, mutual
TLS on the controller link, the StandardAuthorizer. Its TLS material (the stack's CA and
server certificates) serves the DICOM TLS and HTTPS tests too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from cohortstream.settings import Settings
from tests.net import free_port
from tests.stack_script import REPO, stack_env, stack_script

__all__ = ["REPO", "SecureKafka", "start_secure_kafka", "stop_secure_kafka"]


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
    ports = {"kafka_port": str(port), "kafka_controller_port": str(controller)} if port else {}
    return stack_env(state_dir, "kafka", secure="1", kafka_heap="384m", **ports)


def start_secure_kafka(state_dir: Path) -> SecureKafka:
    """``deploy/stack.sh up`` of a secure Kafka; raises with the script's output on failure."""
    port, controller = free_port(), free_port()
    result = stack_script("up", _env(state_dir, port, controller), timeout_s=240)
    if result.returncode != 0:
        raise RuntimeError(f"secure Kafka did not start:\n{result.stderr[-4000:]}")
    return SecureKafka(state_dir, port)


def stop_secure_kafka(state_dir: Path) -> None:
    stack_script("down", _env(state_dir), timeout_s=120)
