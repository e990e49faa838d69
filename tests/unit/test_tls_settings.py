"""TLS settings of the listener and the API: consistent or refused, and the contexts they build."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_api, uvicorn_options
from cohortstream.errors import ConfigurationError
from cohortstream.settings import Settings
from cohortstream.tls import client_context, server_context

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tls")
    subprocess.run([str(ROOT / "deploy" / "tls_certs.sh"), str(out)], check=True, capture_output=True, timeout=120)
    return out


def test_the_listener_must_serve_something() -> None:
    with pytest.raises(ValueError, match="would serve nothing"):
        Settings(dicom_scp_plaintext=False)


def test_a_tls_port_needs_a_certificate_and_a_certificate_its_key(tls: Path) -> None:
    with pytest.raises(ValueError, match="DICOM_SCP_TLS_CERTFILE"):
        Settings(dicom_scp_tls_port=2762)
    with pytest.raises(ValueError, match="must be set together"):
        Settings(dicom_scp_tls_port=2762, dicom_scp_tls_certfile=tls / "dicom.pem")
    with pytest.raises(ValueError, match="API_TLS_CERTFILE and COHORTSTREAM_API_TLS_KEYFILE"):
        Settings(api_tls_keyfile=tls / "api.key")


def test_the_dicom_server_context_asks_for_client_certificates_only_with_a_ca(tls: Path) -> None:
    mutual = server_context(tls / "dicom.pem", tls / "dicom.key", tls / "ca.pem")
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context(tls / "dicom.pem", tls / "dicom.key").verify_mode == ssl.CERT_NONE
    with pytest.raises(ConfigurationError, match="api.key"):
        server_context(tls / "dicom.pem", tls / "api.key")  # a key that does not match


def test_a_client_context_verifies_the_server(tls: Path) -> None:
    context = client_context(tls / "ca.pem")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_the_api_sends_hsts_only_over_https(tls: Path) -> None:
    https = Settings(api_tls_certfile=tls / "api.pem", api_tls_keyfile=tls / "api.key", api_hsts_max_age_s=600)
    options = uvicorn_options(https)
    assert (options["ssl_certfile"], options["ssl_keyfile"]) == (str(tls / "api.pem"), str(tls / "api.key"))
    response = TestClient(create_api(https)).get("/healthz")  # no lifespan: nothing connects
    assert response.headers["strict-transport-security"] == "max-age=600; includeSubDomains"
    plain = TestClient(create_api(Settings())).get("/healthz")
    assert "strict-transport-security" not in plain.headers
    assert "ssl_certfile" not in uvicorn_options(Settings())
