"""Data Entry Trigger parsing and the trust checks (no services)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cohortstream.events import RedcapCompletionStatus
from cohortstream.settings import RedcapProject, Settings
from producers.redcap.errors import TriggerInvalid, TriggerRejected
from producers.redcap.trigger import (
    DataEntryTrigger,
    authorize_source,
    match_project,
    normalize_redcap_url,
)

FULL_FORM = {
    "redcap_url": "https://redcap.example.org/",
    "project_url": "https://redcap.example.org/redcap_v14.0.0/index.php?pid=42",
    "project_id": "42",
    "username": "jdoe",
    "record": "MUC-07",
    "instrument": "medication",
    "redcap_event_name": "baseline_arm_1",
    "redcap_repeat_instrument": "medication",
    "redcap_repeat_instance": "2",
    "redcap_data_access_group": "munich",
    "medication_complete": "2",
}


def settings(**overrides: object) -> Settings:
    return Settings(
        redcap_projects=[
            RedcapProject(redcap_url="https://redcap.example.org", project_id="42", api_token=SecretStr("T" * 32))
        ],
        **overrides,  # type: ignore[arg-type]
    )


def test_every_field_of_a_real_trigger_is_read() -> None:
    det = DataEntryTrigger.from_form(FULL_FORM)
    assert det.project_id == "42"
    assert det.record == "MUC-07"
    assert det.instrument == "medication"
    assert det.event_name == "baseline_arm_1"
    assert det.repeat_instrument == "medication"
    assert det.repeat_instance == 2
    assert det.data_access_group == "munich"
    assert det.completion_status is RedcapCompletionStatus.COMPLETE
    assert det.username == "jdoe"
    assert det.project_url == FULL_FORM["project_url"]
    assert det.extra_fields == ()


def test_a_classic_project_trigger_needs_no_event_or_repeat_fields() -> None:
    det = DataEntryTrigger.from_form(
        {
            "redcap_url": "https://redcap.example.org/",
            "project_id": "7",
            "record": "1",
            "instrument": "screening",
            "screening_complete": "0",
            "redcap_event_name": "",
        }
    )
    assert (det.event_name, det.repeat_instrument, det.repeat_instance, det.data_access_group) == (
        None,
        None,
        None,
        None,
    )
    assert det.completion_status is RedcapCompletionStatus.INCOMPLETE
    assert det.record == "1" and isinstance(det.record, str)


def test_unknown_fields_are_tolerated_and_named() -> None:
    det = DataEntryTrigger.from_form({**FULL_FORM, "redcap_future_field": "x", "another": ""})
    assert det.extra_fields == ("another", "redcap_future_field")


def test_missing_required_fields_are_all_named() -> None:
    form = {k: v for k, v in FULL_FORM.items() if k not in ("record", "redcap_url")}
    form["project_id"] = "  "
    with pytest.raises(TriggerInvalid) as info:
        DataEntryTrigger.from_form(form)
    assert info.value.missing == ("project_id", "record", "redcap_url")
    assert "record" in str(info.value) and "redcap_url" in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("redcap_repeat_instance", "zero"),
        ("redcap_repeat_instance", "0"),
        ("medication_complete", "3"),
        ("instrument", "Medication Form"),
        ("redcap_event_name", "base line"),
        ("redcap_url", "ftp://redcap.example.org/"),
    ],
)
def test_malformed_fields_are_named(field: str, value: str) -> None:
    with pytest.raises(TriggerInvalid) as info:
        DataEntryTrigger.from_form({**FULL_FORM, field: value})
    assert info.value.invalid == (field,)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://redcap.example.org", "https://redcap.example.org/"),
        ("HTTPS://Redcap.Example.ORG:443/", "https://redcap.example.org/"),
        ("https://redcap.example.org:8443/redcap", "https://redcap.example.org:8443/redcap/"),
        ("http://redcap.example.org:80/redcap/", "http://redcap.example.org/redcap/"),
    ],
)
def test_redcap_urls_are_compared_normalized(url: str, normal: str) -> None:
    assert normalize_redcap_url(url) == normal


def test_a_configured_project_matches_whatever_the_url_spelling() -> None:
    det = DataEntryTrigger.from_form({**FULL_FORM, "redcap_url": "HTTPS://REDCAP.example.org"})
    assert match_project(settings().redcap_projects, det).project_id == "42"


@pytest.mark.parametrize(
    "change",
    [
        {"project_id": "43"},
        {"redcap_url": "https://evil.example.org/"},
        {"redcap_url": "https://redcap.example.org/other/"},
    ],
)
def test_unknown_project_or_server_is_rejected(change: dict[str, str]) -> None:
    det = DataEntryTrigger.from_form({**FULL_FORM, **change})
    with pytest.raises(TriggerRejected):
        match_project(settings().redcap_projects, det)


def test_no_configured_project_rejects_everything() -> None:
    with pytest.raises(TriggerRejected):
        match_project([], DataEntryTrigger.from_form(FULL_FORM))


def test_secret_is_required_when_configured() -> None:
    s = settings(redcap_trigger_secret=SecretStr("s3cret"))
    authorize_source(s, "10.0.0.1", "s3cret")
    for wrong in (None, "", "s3cre", "s3cret2"):
        with pytest.raises(TriggerRejected):
            authorize_source(s, "10.0.0.1", wrong)


def test_no_secret_configured_accepts_any_query() -> None:
    authorize_source(settings(), "10.0.0.1", None)
    authorize_source(settings(), "10.0.0.1", "whatever")


def test_source_network_allow_list() -> None:
    s = settings(redcap_allowed_networks=["10.1.0.0/16", "2001:db8::/32", "127.0.0.1"])
    for ok in ("10.1.2.3", "127.0.0.1", "2001:db8::5", "::ffff:10.1.0.9"):
        authorize_source(s, ok, None)
    for bad in ("10.2.0.1", "192.168.0.1", "2001:db9::1", None, "testclient"):
        with pytest.raises(TriggerRejected):
            authorize_source(s, bad, None)


def test_empty_network_list_accepts_every_address() -> None:
    authorize_source(settings(), "203.0.113.9", None)
