"""Settings for a test that runs our DICOM listener: its own free port, and its staging
and quarantine directories under the test's ``tmp_path``, so tests never share them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cohortstream.settings import Settings
from tests.net import free_port

__all__ = ["listener_settings"]


def listener_settings(base: Settings, tmp_path: Path, **overrides: Any) -> Settings:
    """``base`` with a free listener port and per-test staging and quarantine
    directories; ``overrides`` (setting name → value) on top."""
    values: dict[str, Any] = {
        "dicom_scp_port": free_port(),
        "staging_dir": tmp_path / "staging",
        "quarantine_dir": tmp_path / "quarantine",
    }
    return base.model_copy(update={**values, **overrides})
