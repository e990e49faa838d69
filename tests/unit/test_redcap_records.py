"""Flat export rows → RedcapRecordChanged events (no services).

The rows come from the simulator's export code (called in-process), so they have the
columns a real flat export has: empty repeating-form columns on the base row, "0" for
unchecked boxes, ``redcap_data_access_group``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from pydantic import SecretStr

from cohortstream.codec import EventCodec
from cohortstream.events import (
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
)
from cohortstream.settings import RedcapProject
from producers.redcap.dictionary import DataDictionary
from producers.redcap.records import (
    PRODUCER_SYNC,
    PRODUCER_TRIGGER,
    event_key,
    record_events,
    trigger_events,
)
from tests.redcap_simulator import (
    RedcapSimulator,
    SimProject,
    classic_project,
    cohort_project,
)

PROJECT = RedcapProject(redcap_url="https://redcap.example.org", project_id="42", api_token=SecretStr("T" * 32))


def export(project: SimProject, **arrays: list[str]) -> list[dict[str, str]]:
    params: dict[str, Any] = {
        "token": project.token,
        "content": "record",
        "format": "json",
        "type": "flat",
        "exportDataAccessGroups": "true",
    }
    for name, items in arrays.items():
        params.update({f"{name}[{i}]": item for i, item in enumerate(items)})
    status, rows = RedcapSimulator([project]).handle(urlencode(params))
    assert status == 200, rows
    return rows


def keyed(events: list[RedcapRecordChanged]) -> dict[tuple[Any, ...], RedcapRecordChanged]:
    return {(e.record_id, e.event_name, e.instrument, e.repeat_instance): e for e in events}


def test_full_export_gives_one_event_per_record_event_instrument_instance() -> None:
    sim = cohort_project()
    dictionary = DataDictionary.from_metadata(sim.metadata)
    events = record_events(PROJECT, dictionary, export(sim))
    by_key = keyed(events)
    assert sorted(by_key, key=str) == sorted(
        [
            ("1001", "baseline_arm_1", "demographics", None),
            ("1001", "baseline_arm_1", "baseline", None),
            ("1001", "baseline_arm_1", "medication", 1),
            ("1001", "baseline_arm_1", "medication", 2),
            ("1001", "followup_1_arm_1", "baseline", None),
            ("MUC-07", "baseline_arm_1", "demographics", None),
        ],
        key=str,
    )
    assert len(events) == len(by_key)
    med2 = by_key[("1001", "baseline_arm_1", "medication", 2)]
    assert med2.repeat_instrument == "medication"
    assert med2.values == {"med_name": "atorvastatin", "med_dose_mg": 20.0, "med_start": None, "med_route": "1"}
    assert med2.labels == {"med_route": "Oral"}
    assert med2.completion_status is RedcapCompletionStatus.INCOMPLETE
    assert med2.data_access_group == "london"
    followup = by_key[("1001", "followup_1_arm_1", "baseline", None)]
    assert followup.values["symptoms"] == ["-1"] and followup.values["smoker"] is False
    assert followup.repeat_instrument is None
    muc = by_key[("MUC-07", "baseline_arm_1", "demographics", None)]
    assert muc.data_access_group is None and muc.values["sex"] == "2" and muc.labels == {"sex": "Male"}
    for event in events:
        assert event.trigger is RedcapTrigger.FULL_SYNC and event.producer == PRODUCER_SYNC
        assert event.redcap_url == "https://redcap.example.org/" and event.project_id == "42"
        assert event_key(event) == f"42/{event.record_id}"


def test_events_survive_the_avro_codec() -> None:
    sim = cohort_project()
    codec = EventCodec()
    for event in record_events(PROJECT, DataDictionary.from_metadata(sim.metadata), export(sim)):
        decoded = codec.decode_event(codec.encode_event(event))
        assert decoded == event
        assert type(decoded.values.get("smoker", True)) is bool  # type: ignore[attr-defined]


def test_trigger_picks_the_saved_repeat_instance_only() -> None:
    sim = cohort_project()
    dictionary = DataDictionary.from_metadata(sim.metadata)
    rows = export(sim, records=["1001"], forms=["medication"], events=["baseline_arm_1"])
    [event] = trigger_events(
        PROJECT,
        dictionary,
        rows,
        record="1001",
        instrument="medication",
        event_name="baseline_arm_1",
        repeat_instrument="medication",
        repeat_instance=1,
        data_access_group=None,
    )
    assert event.repeat_instance == 1 and event.values["med_name"] == "metformin"
    assert event.trigger is RedcapTrigger.DATA_ENTRY_TRIGGER and event.producer == PRODUCER_TRIGGER
    assert event.data_access_group == "london"


def test_trigger_publishes_a_form_whose_values_were_all_cleared() -> None:
    sim = cohort_project()
    sim.upsert(
        {
            "record_id": "1001",
            "redcap_event_name": "followup_1_arm_1",
            "redcap_repeat_instrument": "",
            "redcap_repeat_instance": "",
            "visit_date": "",
            "symptoms____1": "0",
            "smoker": "",
            "consent_imaging": "",
            "pain_score": "",
            "site": "",
            "baseline_complete": "0",
        }
    )
    dictionary = DataDictionary.from_metadata(sim.metadata)
    rows = export(sim, records=["1001"], forms=["baseline"], events=["followup_1_arm_1"])
    [event] = trigger_events(
        PROJECT,
        dictionary,
        rows,
        record="1001",
        instrument="baseline",
        event_name="followup_1_arm_1",
        repeat_instrument=None,
        repeat_instance=None,
        data_access_group="london",
    )
    assert event.values["symptoms"] == [] and event.values["site"] is None
    assert record_events(PROJECT, dictionary, rows) == []  # a sync skips the empty form


def test_trigger_for_a_missing_row_gives_no_event() -> None:
    sim = cohort_project()
    dictionary = DataDictionary.from_metadata(sim.metadata)
    rows = export(sim, records=["nobody"], forms=["baseline"])
    assert (
        trigger_events(
            PROJECT,
            dictionary,
            rows,
            record="nobody",
            instrument="baseline",
            event_name="baseline_arm_1",
            repeat_instrument=None,
            repeat_instance=None,
            data_access_group=None,
        )
        == []
    )


def test_repeating_event_rows_give_one_event_per_instance() -> None:
    sim = cohort_project()
    base = {"record_id": "2002", "redcap_event_name": "followup_1_arm_1", "redcap_repeat_instrument": ""}
    sim.records += [
        {**base, "redcap_repeat_instance": "1", "site": "NYC", "baseline_complete": "2"},
        {**base, "redcap_repeat_instance": "2", "site": "LDN", "baseline_complete": "1"},
    ]
    dictionary = DataDictionary.from_metadata(sim.metadata)
    events = [e for e in record_events(PROJECT, dictionary, export(sim)) if e.record_id == "2002"]
    assert [(e.instrument, e.repeat_instrument, e.repeat_instance, e.values["site"]) for e in events] == [
        ("baseline", None, 1, "NYC"),
        ("baseline", None, 2, "LDN"),
    ]
    [event] = trigger_events(
        PROJECT,
        dictionary,
        export(sim, records=["2002"], forms=["baseline"], events=["followup_1_arm_1"]),
        record="2002",
        instrument="baseline",
        event_name="followup_1_arm_1",
        repeat_instrument=None,
        repeat_instance=2,
        data_access_group=None,
    )
    assert event.values["site"] == "LDN"


def test_classic_project_has_no_event_name_and_instance_one_matches() -> None:
    sim = classic_project()
    dictionary = DataDictionary.from_metadata(sim.metadata)
    [event] = record_events(PROJECT, dictionary, export(sim))
    assert (event.record_id, event.event_name, event.repeat_instance) == ("1", None, None)
    assert event.values == {"eligible": True, "score": 12}
    [event] = trigger_events(
        PROJECT,
        dictionary,
        export(sim, records=["1"], forms=["screening"]),
        record="1",
        instrument="screening",
        event_name=None,
        repeat_instrument=None,
        repeat_instance=1,
        data_access_group=None,
    )
    assert event.values["score"] == 12
