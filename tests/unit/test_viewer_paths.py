"""Pure path logic of the viewer routes: no open redirect after login, no file outside
the OHIF build, no route outside Orthanc's /dicom-web/, and the viewer links."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.dicomweb_proxy import upstream_path
from api.errors import ApiError
from api.login import safe_next
from api.ohif import resolve
from api.viewer_links import ohif_study_url


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ohif/monai-label?StudyInstanceUIDs=1.2", "/ohif/monai-label?StudyInstanceUIDs=1.2"),
        (None, "/ohif/"),
        ("", "/ohif/"),
        ("https://evil.example/", "/ohif/"),
        ("//evil.example/x", "/ohif/"),
        ("/\\evil.example", "/ohif/"),
        ("ohif/", "/ohif/"),
    ],
)
def test_login_redirects_only_to_paths_on_this_server(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_resolve_serves_build_files_and_falls_back_to_the_index(tmp_path: Path) -> None:
    root = tmp_path / "ohif"
    (root / "sub").mkdir(parents=True)
    for name in ("index.html", "app.js", "sub/x.wasm"):
        (root / name).write_text(name)
    (tmp_path / "secret").write_text("no")
    assert resolve(root, "app.js") == (root / "app.js").resolve()
    assert resolve(root, "sub/x.wasm") == (root / "sub/x.wasm").resolve()
    for route in ("", "monai-label", "viewer/1.2.3", "sub", "../secret", "sub/../../secret"):
        assert resolve(root, route) == root.resolve() / "index.html", route


def test_the_proxy_stays_under_dicom_web() -> None:
    assert upstream_path("studies/1.2/series/3.4/metadata") == "/dicom-web/studies/1.2/series/3.4/metadata"
    assert upstream_path("/studies//1.2/") == "/dicom-web/studies/1.2"
    for bad in ("../tools/find", "studies/../../instances", "./studies"):
        with pytest.raises(ApiError) as caught:
            upstream_path(bad)
        assert caught.value.status == 400 and caught.value.field == "path"


def test_viewer_links_open_the_study_in_the_monai_label_mode() -> None:
    assert ohif_study_url("1.2.840.1") == "/ohif/monai-label?StudyInstanceUIDs=1.2.840.1"
    assert ohif_study_url("1.2&x=3") == "/ohif/monai-label?StudyInstanceUIDs=1.2%26x%3D3"
