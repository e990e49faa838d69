"""A REDCap API simulator: a real HTTP server for the API subset cohortstream uses.

REDCap (PHP + MySQL) cannot run here, so tests talk to this instead. It speaks the real
protocol: form-encoded ``POST /api/`` with ``token``, ``content``, ``format``,
``returnFormat``, ``type``, array parameters ``records[0]``, ``forms[0]``, ``events[0]``,
``fields[0]`` (or REDCap's comma-separated form), ``rawOrLabel`` and friends, and answers
JSON the way REDCap does, including its error bodies ``{"error": "..."}``:

- unknown token → 403 ``You do not have permissions to use the API``;
- unsupported ``content`` → 400 ``The value of the parameter "content" is not valid``;
- unknown forms/events/fields → 400 naming them, unknown records are simply not returned.

It is stricter than REDCap in one way on purpose: a parameter it does not know (a typo
such as ``form[0]``) gets 400, where REDCap would silently ignore it and export more data
than asked for.

Fault injection for retry tests: :meth:`RedcapSimulator.fail_next` (answer N requests with
a status), :meth:`delay_next` (answer N requests late) and :meth:`drop_next` (close the
connection without an answer). Every request is recorded in :attr:`requests`
(parameters without the token).

:func:`cohort_project` builds a realistic longitudinal project: demographics (text, MRN,
dates, radio, calc), a baseline questionnaire (checkbox with a negative code, yes/no,
true/false, integer, number, slider, dropdown with text codes, descriptive, notes) and a
repeating medication form, in events ``baseline_arm_1`` and ``followup_1_arm_1``.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

__all__ = ["Fault", "RedcapSimulator", "SimProject", "classic_project", "cohort_project", "running_simulator"]

NO_PERMISSION = "You do not have permissions to use the API"
_COMMON = {"token", "content", "format", "returnFormat"}
_RECORD_PARAMS = _COMMON | {
    "type",
    "records",
    "fields",
    "forms",
    "events",
    "rawOrLabel",
    "rawOrLabelHeaders",
    "exportCheckboxLabel",
    "exportSurveyFields",
    "exportDataAccessGroups",
    "csvDelimiter",
    "decimalCharacter",
}
_METADATA_PARAMS = _COMMON | {"fields", "forms"}
_ARRAY = re.compile(r"^(?P<name>[A-Za-z]+)\[(?P<index>\d+)\]$")


def _checkbox_column(field_name: str, code: str) -> str:
    return f"{field_name}___{re.sub(r'[^a-z0-9_]', '_', code.lower())}"


def _choice_codes(text: str) -> list[str]:
    return [part.partition(",")[0].strip() for part in text.split("|") if part.partition(",")[0].strip()]


def meta(
    field_name: str, form: str, field_type: str, label: str = "", choices: str = "", validation: str = "", **more: str
) -> dict[str, str]:
    """One data dictionary row with every column the API's metadata export has."""
    row = {
        "field_name": field_name,
        "form_name": form,
        "section_header": "",
        "field_type": field_type,
        "field_label": label or field_name,
        "select_choices_or_calculations": choices,
        "field_note": "",
        "text_validation_type_or_show_slider_number": validation,
        "text_validation_min": "",
        "text_validation_max": "",
        "identifier": "",
        "branching_logic": "",
        "required_field": "",
        "custom_alignment": "",
        "question_number": "",
        "matrix_group_name": "",
        "matrix_ranking": "",
        "field_annotation": "",
    }
    row.update(more)
    return row


@dataclass
class SimProject:
    """One project as the simulator holds it.

    ``records`` are flat rows keyed by column (record id, ``redcap_event_name``,
    ``redcap_repeat_instrument``, ``redcap_repeat_instance``, ``redcap_data_access_group``,
    field columns with checkboxes as ``field___code``); missing columns export empty.
    """

    token: str
    project_id: str
    metadata: list[dict[str, str]]
    events: list[str] = field(default_factory=list)
    """Unique event names; empty for a classic (non-longitudinal) project."""
    repeating: bool = False
    records: list[dict[str, str]] = field(default_factory=list)

    @property
    def record_id_field(self) -> str:
        return self.metadata[0]["field_name"]

    @property
    def forms(self) -> list[str]:
        return list(dict.fromkeys(row["form_name"] for row in self.metadata))

    def columns(self, forms: Sequence[str], fields: Sequence[str], with_dag: bool) -> list[str]:
        """Export columns in REDCap's order for the requested forms/fields."""
        columns = [self.record_id_field]
        if self.events:
            columns.append("redcap_event_name")
        if self.repeating:
            columns += ["redcap_repeat_instrument", "redcap_repeat_instance"]
        if with_dag:
            columns.append("redcap_data_access_group")
        everything = not forms and not fields
        for form in self.forms:
            rows = [r for r in self.metadata if r["form_name"] == form]
            form_wanted = everything or form in forms
            for row in rows:
                name = row["field_name"]
                if name == self.record_id_field or row["field_type"] == "descriptive":
                    continue
                if not (form_wanted or name in fields):
                    continue
                if row["field_type"] == "checkbox":
                    columns += [_checkbox_column(name, c) for c in _choice_codes(row["select_choices_or_calculations"])]
                else:
                    columns.append(name)
            if form_wanted:
                columns.append(f"{form}_complete")
        return columns

    def upsert(self, row: Mapping[str, str]) -> None:
        """Save a row as data entry would (replacing the row of the same record/event/instance)."""
        key = self._key(row)
        for i, existing in enumerate(self.records):
            if self._key(existing) == key:
                self.records[i] = {**existing, **row}
                return
        self.records.append(dict(row))

    def _key(self, row: Mapping[str, str]) -> tuple[str, ...]:
        return (
            row.get(self.record_id_field, ""),
            row.get("redcap_event_name", ""),
            row.get("redcap_repeat_instrument", ""),
            row.get("redcap_repeat_instance", ""),
        )


@dataclass
class Fault:
    """What to do to the next ``count`` requests."""

    count: int
    status: int | None = None
    delay_s: float = 0.0
    drop: bool = False


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RedcapSimulator:
    """Holds projects, answers the API. Start with :func:`running_simulator`."""

    def __init__(self, projects: Sequence[SimProject] = ()) -> None:
        self.projects = {p.token: p for p in projects}
        self.requests: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.url = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def add(self, project: SimProject) -> SimProject:
        self.projects[project.token] = project
        return project

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` and a REDCap-like error body."""
        with self._lock:
            self._faults.append(Fault(count, status=status))

    def delay_next(self, count: int, delay_s: float) -> None:
        """Answer the next ``count`` requests only after ``delay_s`` (client timeouts)."""
        with self._lock:
            self._faults.append(Fault(count, delay_s=delay_s))

    def drop_next(self, count: int) -> None:
        """Close the connection of the next ``count`` requests without answering."""
        with self._lock:
            self._faults.append(Fault(count, drop=True))

    def requests_for(self, content: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("content") == content]

    def _take_fault(self) -> Fault | None:
        with self._lock:
            while self._faults and self._faults[0].count <= 0:
                self._faults.pop(0)
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.count -= 1
            return fault

    # --- the API ------------------------------------------------------------------------
    def handle(self, body: str) -> tuple[int, Any]:
        """Answer one form-encoded API request: (status, JSON body)."""
        try:
            params, arrays = self._parse(body)
            logged = {k: v for k, v in params.items() if k != "token"}
            logged.update(arrays)
            self.requests.append(logged)
            project = self.projects.get(params.get("token", ""))
            if project is None:
                raise _ApiError(403, NO_PERMISSION)
            content = params.get("content", "")
            if content == "version":
                return 200, "14.0.0"
            if params.get("format", "xml") != "json":
                raise _ApiError(400, "The simulator supports only format=json")
            if content == "metadata":
                return 200, self._metadata(project, params, arrays)
            if content == "record":
                return 200, self._records(project, params, arrays)
            raise _ApiError(400, 'The value of the parameter "content" is not valid')
        except _ApiError as exc:
            return exc.status, {"error": str(exc)}

    @staticmethod
    def _parse(body: str) -> tuple[dict[str, str], dict[str, list[str]]]:
        params: dict[str, str] = {}
        indexed: dict[str, dict[int, str]] = {}
        for key, values in parse_qs(body, keep_blank_values=True).items():
            match = _ARRAY.match(key)
            if match:
                indexed.setdefault(match["name"], {})[int(match["index"])] = values[-1]
            else:
                params[key] = values[-1]
        arrays = {name: [items[i] for i in sorted(items)] for name, items in indexed.items()}
        for name in ("records", "fields", "forms", "events"):
            if name in params:  # REDCap also takes a comma-separated list
                arrays.setdefault(name, []).extend(v.strip() for v in params.pop(name).split(",") if v.strip())
        return params, arrays

    @staticmethod
    def _check_params(allowed: set[str], params: Mapping[str, str], arrays: Mapping[str, list[str]]) -> None:
        unknown = sorted((set(params) | set(arrays)) - allowed)
        if unknown:
            raise _ApiError(400, f"The following parameters are not valid: {', '.join(unknown)}")

    @staticmethod
    def _check_values(name: str, asked: Sequence[str], known: Sequence[str]) -> None:
        bad = [v for v in asked if v not in known]
        if bad:
            raise _ApiError(
                400,
                f'The following values in the parameter "{name}" are not valid: ' + ", ".join(f"'{v}'" for v in bad),
            )

    def _metadata(
        self, project: SimProject, params: Mapping[str, str], arrays: Mapping[str, list[str]]
    ) -> list[dict[str, str]]:
        self._check_params(_METADATA_PARAMS, params, arrays)
        forms, fields = arrays.get("forms", []), arrays.get("fields", [])
        self._check_values("forms", forms, project.forms)
        self._check_values("fields", fields, [r["field_name"] for r in project.metadata])
        return [
            dict(r)
            for r in project.metadata
            if (not forms and not fields) or r["form_name"] in forms or r["field_name"] in fields
        ]

    def _records(
        self, project: SimProject, params: Mapping[str, str], arrays: Mapping[str, list[str]]
    ) -> list[dict[str, str]]:
        self._check_params(_RECORD_PARAMS, params, arrays)
        if params.get("type", "flat") != "flat":
            raise _ApiError(400, "The simulator supports only type=flat")
        if params.get("rawOrLabel", "raw") != "raw":
            raise _ApiError(400, "The simulator supports only rawOrLabel=raw")
        forms, fields, events = arrays.get("forms", []), arrays.get("fields", []), arrays.get("events", [])
        records = arrays.get("records", [])
        self._check_values("forms", forms, project.forms)
        self._check_values("fields", fields, [r["field_name"] for r in project.metadata])
        if events and not project.events:
            raise _ApiError(400, 'The parameter "events" cannot be used in a classic (non-longitudinal) project')
        self._check_values("events", events, project.events)
        with_dag = params.get("exportDataAccessGroups", "false").lower() == "true"
        columns = self.columns_for(project, forms, fields, with_dag)
        out = []
        for row in project.records:
            if records and row.get(project.record_id_field) not in records:
                continue
            if events and row.get("redcap_event_name") not in events:
                continue
            repeat_form = row.get("redcap_repeat_instrument", "")
            if repeat_form and (forms or fields) and repeat_form not in forms:
                continue
            out.append({c: row.get(c, "0" if "___" in c else "") for c in columns})
        return out

    @staticmethod
    def columns_for(project: SimProject, forms: Sequence[str], fields: Sequence[str], with_dag: bool) -> list[str]:
        return project.columns(forms, fields, with_dag)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        simulator = self.server.simulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        if self.path.rstrip("/") != "/api":
            self._send(404, {"error": "not found"})
            return
        fault = simulator._take_fault()
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.drop:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault.status is not None:
                self._send(fault.status, {"error": f"simulated HTTP {fault.status}"})
                return
        status, payload = simulator.handle(body)
        self._send(status, payload)

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    simulator: RedcapSimulator


@contextmanager
def running_simulator(*projects: SimProject) -> Iterator[RedcapSimulator]:
    """Serve a simulator on 127.0.0.1 and a free port in a background thread."""
    simulator = RedcapSimulator(projects)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.simulator = simulator
    simulator.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="redcap-simulator", daemon=True)
    thread.start()
    try:
        yield simulator
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def new_token() -> str:
    """A token shaped like REDCap's: 32 upper-case hex digits."""
    return secrets.token_hex(16).upper()


# --- realistic projects ------------------------------------------------------------------


def cohort_metadata() -> list[dict[str, str]]:
    """Demographics, a baseline questionnaire and a repeating medication form."""
    return [
        meta("record_id", "demographics", "text", "Study ID"),
        meta("mrn", "demographics", "text", "Medical record number", identifier="y"),
        meta("dob", "demographics", "text", "Date of birth", validation="date_ymd", identifier="y"),
        meta(
            "sex", "demographics", "radio", "Sex", choices="1, Female | 2, Male | 3, Intersex | 99, Prefer not to say"
        ),
        meta("enrolled_at", "demographics", "text", "Enrolment date and time", validation="datetime_ymd"),
        meta("height_cm", "demographics", "text", "Height (cm)", validation="number_1dp"),
        meta("weight_kg", "demographics", "text", "Weight (kg)", validation="number"),
        meta("bmi", "demographics", "calc", "BMI", choices="round([weight_kg]/(([height_cm]/100)^2),1)"),
        meta("baseline_intro", "baseline", "descriptive", "Please answer the following questions."),
        meta("visit_date", "baseline", "text", "Visit date", validation="date_dmy"),
        meta(
            "symptoms",
            "baseline",
            "checkbox",
            "Symptoms in the last 7 days",
            choices="1, Headache | 2, Nausea | 3, Fatigue, tiredness | -1, None of the above",
        ),
        meta("smoker", "baseline", "yesno", "Do you smoke?"),
        meta(
            "cigarettes_per_day",
            "baseline",
            "text",
            "Cigarettes per day",
            validation="integer",
            branching_logic="[smoker] = '1'",
        ),
        meta("consent_imaging", "baseline", "truefalse", "Consents to imaging"),
        meta("pain_score", "baseline", "slider", "Pain today", choices="No pain | | Worst pain"),
        meta("site", "baseline", "dropdown", "Site", choices="LDN, London | MUC, Munich | NYC, New York"),
        meta("wake_time", "baseline", "text", "Usual wake-up time", validation="time"),
        meta("comments", "baseline", "notes", "Comments"),
        meta("med_name", "medication", "text", "Medication"),
        meta("med_dose_mg", "medication", "text", "Dose (mg)", validation="number"),
        meta("med_start", "medication", "text", "Start date", validation="date_mdy"),
        meta("med_route", "medication", "dropdown", "Route", choices="1, Oral | 2, Intravenous | 3, Other"),
    ]


def cohort_project(token: str | None = None, project_id: str = "42") -> SimProject:
    """A longitudinal project with a repeating instrument and a few records."""
    project = SimProject(
        token=token or new_token(),
        project_id=project_id,
        metadata=cohort_metadata(),
        events=["baseline_arm_1", "followup_1_arm_1"],
        repeating=True,
    )
    base = {"redcap_repeat_instrument": "", "redcap_repeat_instance": ""}
    project.records = [
        {
            "record_id": "1001",
            "redcap_event_name": "baseline_arm_1",
            **base,
            "redcap_data_access_group": "london",
            "mrn": "MRN0001",
            "dob": "1961-04-12",
            "sex": "1",
            "enrolled_at": "2024-03-01 09:30",
            "height_cm": "165.5",
            "weight_kg": "61",
            "bmi": "22.3",
            "demographics_complete": "2",
            "visit_date": "2024-03-01",
            "symptoms___1": "1",
            "symptoms___3": "1",
            "smoker": "1",
            "cigarettes_per_day": "5",
            "consent_imaging": "1",
            "pain_score": "30",
            "site": "LDN",
            "wake_time": "06:45",
            "comments": "felt fine",
            "baseline_complete": "1",
        },
        {
            "record_id": "1001",
            "redcap_event_name": "baseline_arm_1",
            "redcap_repeat_instrument": "medication",
            "redcap_repeat_instance": "1",
            "redcap_data_access_group": "london",
            "med_name": "metformin",
            "med_dose_mg": "500",
            "med_start": "2023-11-02",
            "med_route": "1",
            "medication_complete": "2",
        },
        {
            "record_id": "1001",
            "redcap_event_name": "baseline_arm_1",
            "redcap_repeat_instrument": "medication",
            "redcap_repeat_instance": "2",
            "redcap_data_access_group": "london",
            "med_name": "atorvastatin",
            "med_dose_mg": "20",
            "med_start": "",
            "med_route": "1",
            "medication_complete": "0",
        },
        {
            "record_id": "1001",
            "redcap_event_name": "followup_1_arm_1",
            **base,
            "redcap_data_access_group": "london",
            "visit_date": "2024-09-03",
            "symptoms___-1": "1",
            "smoker": "0",
            "consent_imaging": "1",
            "pain_score": "0",
            "site": "LDN",
            "baseline_complete": "2",
        },
        {
            "record_id": "MUC-07",
            "redcap_event_name": "baseline_arm_1",
            **base,
            "redcap_data_access_group": "",
            "mrn": "MRN0007",
            "dob": "1975-12-30",
            "sex": "2",
            "demographics_complete": "0",
        },
    ]
    # Checkbox values are stored under their export column names.
    for row in project.records:
        for key in list(row):
            if "___" in key:
                name, _, code = key.partition("___")
                row[_checkbox_column(name, code)] = row.pop(key)
    return project


def classic_project(token: str | None = None, project_id: str = "7") -> SimProject:
    """A classic (non-longitudinal, non-repeating) project with a numeric-id record."""
    metadata = [
        meta("study_id", "screening", "text", "Study ID"),
        meta("eligible", "screening", "yesno", "Eligible"),
        meta("score", "screening", "text", "Score", validation="integer"),
    ]
    project = SimProject(token=token or new_token(), project_id=project_id, metadata=metadata)
    project.records = [{"study_id": "1", "eligible": "1", "score": "12", "screening_complete": "2"}]
    return project
