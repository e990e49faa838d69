"""The API over HTTPS (docs/security.md): served by uvicorn with the settings' certificate,
every answer with ``Strict-Transport-Security``; plain HTTP on that port gets nothing; and
without TLS no HSTS header is sent. TLS material from ``deploy/tls_certs.sh``."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from cohortstream.settings import Settings
from tests.api_server import running_api
from tests.secure_stack import REPO


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tls")
    subprocess.run([str(REPO / "deploy" / "tls_certs.sh"), str(out)], check=True, capture_output=True, timeout=120)
    return out


def test_the_api_serves_https_with_hsts_and_refuses_plain_http(stack_settings: Settings, tls_dir: Path) -> None:
    settings = stack_settings.model_copy(
        update={"api_tls_certfile": tls_dir / "api.pem", "api_tls_keyfile": tls_dir / "api.key"}
    )
    with running_api(settings, "https-api") as url:
        assert url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
        with httpx.Client(verify=trust, timeout=30) as client:
            response = client.get(f"{url}/healthz")
            assert response.status_code == 200
            assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
            refused = client.get(f"{url}/subjects")  # an error answer carries it too
            assert refused.status_code == 401
            assert "strict-transport-security" in refused.headers
        with httpx.Client(timeout=10) as plain, pytest.raises(httpx.HTTPError):
            plain.get(url.replace("https://", "http://") + "/healthz")
        with httpx.Client(timeout=10) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get(f"{url}/healthz")  # a certificate from an unknown CA is not trusted


def test_plain_http_sends_no_hsts(stack_settings: Settings) -> None:
    with running_api(stack_settings, "http-api") as url, httpx.Client(timeout=30) as client:
        response = client.get(f"{url}/healthz")
        assert response.status_code == 200
        assert "strict-transport-security" not in response.headers
