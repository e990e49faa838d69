"""Without the ``annotation`` extra (torch, MONAI, deepbet: about 5 GB) the listener, the
view worker, the REDCap endpoint, the API, the BIDS export and the CLI still import: only
the annotation worker needs the model stack. Checked in a fresh interpreter in which
importing torch or monai fails, as on a machine that installed ``cohortstream`` alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "monai", "deepbet"}:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: no annotation extra)")
            return None

    sys.meta_path.insert(0, Block())
    """
)

MODULES = (
    "producers.dicom",
    "producers.redcap.webhook",
    "streams.worker",
    "api.app",
    "export.bids",
    "cohortstream.cli",
    "consumers.annotation.models",
    "consumers.annotation.seg",
)


def test_services_other_than_the_annotator_import_without_torch_and_monai() -> None:
    code = BLOCKER + textwrap.dedent(
        f"""
        import importlib
        for name in {MODULES!r}:
            importlib.import_module(name)
        from consumers.annotation.models import default_registry
        print(sorted(default_registry().names))
        assert "torch" not in sys.modules and "monai" not in sys.modules
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "deepbet-brain" in run.stdout
