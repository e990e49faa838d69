"""dcmtk's storescu, the independent C-STORE client the tests push through our listener."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cohortstream.settings import Settings

__all__ = ["STORESCU", "start_storescu"]

#: Called by its full path: pynetdicom installs a ``storescu`` of its own in the venv.
STORESCU = "/usr/bin/storescu"


async def start_storescu(settings: Settings, directory: Path) -> asyncio.subprocess.Process:
    """Start ``storescu -R +sd +r`` sending ``directory`` to the listener of ``settings``,
    with ``TCP_NODELAY=1`` (dcmtk leaves Nagle's algorithm on otherwise) and its output
    captured; dcmtk exits non-zero when any C-STORE did not succeed."""
    return await asyncio.create_subprocess_exec(
        STORESCU,
        "-R",
        "+sd",
        "+r",
        "-aec",
        settings.dicom_scp_aet,
        "127.0.0.1",
        str(settings.dicom_scp_port),
        str(directory),
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
