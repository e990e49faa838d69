"""Run the official BIDS validator (``bids-validator-deno`` from PyPI) on a directory.

Shared by the BIDS export tests: every export a test makes is validated; errors fail
the test, warnings are printed so they show in the test output (``pytest -s`` or -rA).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["validate_bids", "validator_path"]


def validator_path() -> str | None:
    local = Path(sys.executable).with_name("bids-validator-deno")
    return str(local) if local.exists() else shutil.which("bids-validator-deno")


def validate_bids(root: Path, *, recursive: bool = True) -> list[dict[str, Any]]:
    """The validator's issues for ``root`` (derivatives too); raises AssertionError on any error."""
    executable = validator_path()
    assert executable, "bids-validator-deno is not installed"
    command = [executable, "--format", "json", "--max-rows", "-1", *(["--recursive"] if recursive else []), str(root)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    try:
        report = json.loads(done.stdout)
    except ValueError as exc:
        raise AssertionError(f"validator output is not JSON (exit {done.returncode}): {done.stderr[-2000:]}") from exc
    issues = report["issues"]["issues"]
    warnings = [i for i in issues if i.get("severity") == "warning"]
    errors = [i for i in issues if i.get("severity") == "error"]
    codes = sorted({i["code"] for i in warnings})
    print(f"\nbids-validator-deno {root}: {len(errors)} errors, {len(warnings)} warnings")
    for code in codes:
        where = sorted({str(i.get("location")) for i in warnings if i["code"] == code})
        keys = sorted({str(i["subCode"]) for i in warnings if i["code"] == code and i.get("subCode")})
        print(f"  WARNING {code}{' ' + ','.join(keys) if keys else ''}: {len(where)} locations, e.g. {where[:2]}")
    assert not errors and done.returncode == 0, "BIDS validator errors:\n" + "\n".join(
        f"  {i['code']} {i.get('location')} {i.get('issueMessage') or ''}" for i in errors
    )
    return issues
