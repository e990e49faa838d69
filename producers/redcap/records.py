"""Turn REDCap's flat export rows into :class:`~cohortstream.events.RedcapRecordChanged` events.

A flat row is one (record, event, repeat instance): ``redcap_event_name`` in longitudinal
projects, ``redcap_repeat_instrument`` + ``redcap_repeat_instance`` for a repeating
instrument (only that instrument's columns are filled), ``redcap_repeat_instance`` alone
for a repeating event (every instrument of the event), neither for the rest. One event is
made per (row, instrument) that has data (:attr:`TypedInstrument.has_data`), so forms never
filled in a visit make no event. A trigger names one saved form: :func:`trigger_events`
picks its row and always makes the event, even if every value was just cleared, so the
views follow.

The event key is ``"{project_id}/{record_id}"``: all of one record's events stay in order
on one partition; the sinks key their documents by project/record/event/instrument/instance,
so publishing identical values again (a second full sync) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from cohortstream.events import RedcapRecordChanged, RedcapTrigger
from cohortstream.settings import RedcapProject
from producers.redcap.dictionary import DataDictionary, TypedInstrument

__all__ = ["PRODUCER_SYNC", "PRODUCER_TRIGGER", "event_key", "record_events", "trigger_events"]

PRODUCER_TRIGGER = "redcap-trigger"
PRODUCER_SYNC = "redcap-sync"


def event_key(event: RedcapRecordChanged) -> str:
    """Kafka key of an event: ``project_id/record_id``."""
    return f"{event.project_id}/{event.record_id}"


def _blank(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _instance(row: Mapping[str, str]) -> int | None:
    raw = _blank(row.get("redcap_repeat_instance"))
    return int(raw) if raw is not None and raw.isdigit() else None


def _event(
    project: RedcapProject,
    dictionary: DataDictionary,
    row: Mapping[str, str],
    instrument: str,
    typed: TypedInstrument,
    *,
    trigger: RedcapTrigger,
    producer: str,
    data_access_group: str | None = None,
) -> RedcapRecordChanged:
    return RedcapRecordChanged(
        producer=producer,
        redcap_url=project.redcap_url,
        project_id=project.project_id,
        record_id=row[dictionary.record_id_field],
        event_name=_blank(row.get("redcap_event_name")),
        instrument=instrument,
        repeat_instrument=_blank(row.get("redcap_repeat_instrument")),
        repeat_instance=_instance(row),
        data_access_group=data_access_group or _blank(row.get("redcap_data_access_group")),
        completion_status=typed.completion_status,
        trigger=trigger,
        values=typed.values,
        labels=typed.labels,
    )


def _log_context(project: RedcapProject, dictionary: DataDictionary, row: Mapping[str, str]) -> dict[str, object]:
    return {
        "redcap_project_id": project.project_id,
        "redcap_record": row.get(dictionary.record_id_field),
        "redcap_event": _blank(row.get("redcap_event_name")),
        "redcap_repeat_instance": _instance(row),
    }


def record_events(
    project: RedcapProject,
    dictionary: DataDictionary,
    rows: Iterable[Mapping[str, str]],
    *,
    trigger: RedcapTrigger = RedcapTrigger.FULL_SYNC,
    producer: str = PRODUCER_SYNC,
    forms: Sequence[str] | None = None,
) -> list[RedcapRecordChanged]:
    """One event per (row, instrument) with data, instruments in dictionary order.

    ``forms`` limits the instruments (default: all in the dictionary). Rows without a record
    id are skipped.
    """
    wanted = [form for form in dictionary.forms if forms is None or form in forms]
    events: list[RedcapRecordChanged] = []
    for row in rows:
        if not _blank(row.get(dictionary.record_id_field)):
            continue
        repeat_instrument = _blank(row.get("redcap_repeat_instrument"))
        candidates = [repeat_instrument] if repeat_instrument is not None else wanted
        for form in candidates:
            if form not in wanted:
                continue
            typed = dictionary.type_instrument(form, row, log_context=_log_context(project, dictionary, row))
            if typed.has_data:
                events.append(_event(project, dictionary, row, form, typed, trigger=trigger, producer=producer))
    return events


def _matches(
    row: Mapping[str, str], *, event_name: str | None, repeat_instrument: str | None, repeat_instance: int | None
) -> bool:
    if _blank(row.get("redcap_event_name")) != event_name:
        return False
    if _blank(row.get("redcap_repeat_instrument")) != repeat_instrument:
        return False
    row_instance = _instance(row)
    if repeat_instance is None:
        return row_instance is None
    # A trigger from the first instance of a form that is not repeating may say 1.
    return row_instance == repeat_instance or (
        row_instance is None and repeat_instance == 1 and repeat_instrument is None
    )


def trigger_events(
    project: RedcapProject,
    dictionary: DataDictionary,
    rows: Iterable[Mapping[str, str]],
    *,
    record: str,
    instrument: str,
    event_name: str | None,
    repeat_instrument: str | None,
    repeat_instance: int | None,
    data_access_group: str | None,
) -> list[RedcapRecordChanged]:
    """The event for the one form a Data Entry Trigger reports as saved.

    ``rows`` is the API export restricted to the record, instrument and event. The row of
    the trigger's repeat instance gives the values; an empty list means the API holds no
    such row (the record was renamed or deleted after the save).
    """
    dictionary.fields_of(instrument)  # an unknown instrument is an error, not "no data"
    events: list[RedcapRecordChanged] = []
    for row in rows:
        if row.get(dictionary.record_id_field) != record:
            continue
        if not _matches(
            row, event_name=event_name, repeat_instrument=repeat_instrument, repeat_instance=repeat_instance
        ):
            continue
        typed = dictionary.type_instrument(instrument, row, log_context=_log_context(project, dictionary, row))
        events.append(
            _event(
                project,
                dictionary,
                row,
                instrument,
                typed,
                trigger=RedcapTrigger.DATA_ENTRY_TRIGGER,
                producer=PRODUCER_TRIGGER,
                data_access_group=data_access_group,
            )
        )
    return events
