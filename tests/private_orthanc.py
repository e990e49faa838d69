"""An empty Orthanc of a test's own, started by the repo's script (``deploy/stack.sh`` with
only the orthanc service) on free ports in its own state dir.

The test stack's Orthanc is shared and fills up as the suite runs; what depends on the
*whole* archive (a first start that backfills from change 0, a full reconciliation) is
exact only against an archive that holds nothing but what the test stored."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from cohortstream.settings import Settings
from tests.net import free_port

__all__ = ["PrivateOrthanc", "start_private_orthanc", "stop_private_orthanc"]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PrivateOrthanc:
    """Where the private Orthanc listens, as its stack's settings file says."""

    url: str
    username: str
    password: str
    dicom_port: int

    def settings(self, settings: Settings) -> Settings:
        """``settings`` pointed at this Orthanc."""
        return settings.model_copy(
            update={
                "orthanc_url": self.url,
                "orthanc_username": self.username,
                "orthanc_password": SecretStr(self.password),
                "orthanc_dicom_port": self.dicom_port,
            }
        )


def _env(state_dir: Path, http_port: int = 0, dicom_port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHORTSTREAM_STACK_")}
    env.update(COHORTSTREAM_STACK_DIR=str(state_dir), COHORTSTREAM_STACK_SERVICES="orthanc")
    if http_port:
        env.update(
            COHORTSTREAM_STACK_ORTHANC_HTTP_PORT=str(http_port), COHORTSTREAM_STACK_ORTHANC_DICOM_PORT=str(dicom_port)
        )
    return env


def start_private_orthanc(state_dir: Path) -> PrivateOrthanc:
    """``deploy/stack.sh up`` of Orthanc alone; raises with the script's output on failure."""
    result = subprocess.run(
        [str(REPO / "deploy" / "stack.sh"), "up"],
        env=_env(state_dir, free_port(), free_port()),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the private Orthanc did not start:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    values = dict(
        line.split("=", 1)
        for line in (state_dir / "stack.env").read_text().splitlines()
        if line.startswith("COHORTSTREAM_ORTHANC_")
    )
    return PrivateOrthanc(
        url=values["COHORTSTREAM_ORTHANC_URL"],
        username=values["COHORTSTREAM_ORTHANC_USERNAME"],
        password=values["COHORTSTREAM_ORTHANC_PASSWORD"],
        dicom_port=int(values["COHORTSTREAM_ORTHANC_DICOM_PORT"]),
    )


def stop_private_orthanc(state_dir: Path) -> None:
    subprocess.run([str(REPO / "deploy" / "stack.sh"), "down"], env=_env(state_dir), capture_output=True, timeout=120)
