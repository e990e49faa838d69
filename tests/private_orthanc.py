"""An empty Orthanc of a test's own, started by the repo's script (``deploy/stack.sh`` with
only the orthanc service) on free ports in its own state dir.

The test stack's Orthanc is shared and fills up as the suite runs; what depends on the
*whole* archive (a first start that backfills from change 0, a full reconciliation) is
exact only against an archive that holds nothing but what the test stored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from cohortstream.settings import Settings
from tests.net import free_port
from tests.stack_script import stack_env, stack_script

__all__ = ["PrivateOrthanc", "start_private_orthanc", "stop_private_orthanc"]


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
    ports = {"orthanc_http_port": str(http_port), "orthanc_dicom_port": str(dicom_port)} if http_port else {}
    return stack_env(state_dir, "orthanc", **ports)


def start_private_orthanc(state_dir: Path) -> PrivateOrthanc:
    """``deploy/stack.sh up`` of Orthanc alone; raises with the script's output on failure."""
    result = stack_script("up", _env(state_dir, free_port(), free_port()), timeout_s=180)
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
    stack_script("down", _env(state_dir), timeout_s=120)
