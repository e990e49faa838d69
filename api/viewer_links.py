"""Links into the OHIF viewer the API serves (:mod:`api.ohif`).

Kept apart (no imports from the web layer) so the views' models and the annotation store
can add ``viewer_url`` to what they answer. Links are paths on the API itself: the viewer
is same-origin with the API, and a path stays right behind any proxy or host name.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["ohif_study_url"]

OHIF_MODE = "monai-label"
"""The viewer mode that opens a study with the MONAI Label panel (the build's routeName)."""


def ohif_study_url(study_instance_uid: str) -> str:
    """``/ohif/monai-label?StudyInstanceUIDs=<uid>``: the study in OHIF with the MONAI Label panel."""
    return f"/ohif/{OHIF_MODE}?StudyInstanceUIDs={quote(study_instance_uid, safe='')}"
