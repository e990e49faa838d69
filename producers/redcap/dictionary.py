"""Type REDCap's flat export with the project's data dictionary.

The API exports every value as a string. The data dictionary (``content=metadata``) says
what each field is, and this module turns one instrument's columns of one flat row into
typed values:

=======================================  ==============================================
field type / validation                  value
=======================================  ==============================================
text, validation ``integer``             ``int``
text, ``number``, ``number_Ndp``,        ``float`` (``*_comma_decimal``: ``,`` read as
``decimal`` and comma variants           ``.``)
text, ``date_ymd|mdy|dmy``               ISO date string (the API exports YYYY-MM-DD
                                         whatever the entry format)
text, ``datetime_*``                     ISO datetime string (``2024-03-01T14:05:00``)
text, ``time``                           ``HH:MM`` string, checked
calc                                     ``float``
slider                                   ``int``
yesno, truefalse                         ``bool`` (label in ``labels``)
radio, dropdown                          the code as a string (label in ``labels``)
checkbox                                 ``list[str]`` of checked codes, from the
                                         ``field___code`` columns
descriptive                              no value (not in ``values``)
any other (notes, file, sql, text)       ``str``
=======================================  ==============================================

An empty string is ``None``. ``[instrument]_complete`` becomes the completion status and is
not a value. A value that does not parse per its type is kept as the raw string (so a
badly configured dictionary never loses data) and its field name is reported in
``TypedInstrument.problems`` and logged as a warning, never with the value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time

from cohortstream.events import RedcapCompletionStatus, RedcapValue
from producers.redcap.errors import RedcapError

__all__ = [
    "DataDictionary",
    "FieldSpec",
    "TypedInstrument",
    "checkbox_column",
    "parse_choices",
]

log = logging.getLogger(__name__)

_COMPLETION = {
    "0": RedcapCompletionStatus.INCOMPLETE,
    "1": RedcapCompletionStatus.UNVERIFIED,
    "2": RedcapCompletionStatus.COMPLETE,
}
_YESNO_LABELS = {"yesno": {"1": "Yes", "0": "No"}, "truefalse": {"1": "True", "0": "False"}}
_CHOICE_TYPES = frozenset({"radio", "dropdown", "checkbox"})
_NO_VALUE_TYPES = frozenset({"descriptive"})
_FLOAT_VALIDATIONS = re.compile(r"^(number|decimal)(_\d+dp)?(_comma_decimal)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$")


def parse_choices(text: str) -> dict[str, str]:
    """REDCap's ``"1, Yes | 2, No"`` as ``{"1": "Yes", "2": "No"}`` (codes stripped, in order).

    The label may itself contain commas; only the first one separates code and label.
    """
    choices: dict[str, str] = {}
    for part in text.split("|"):
        code, sep, label = part.partition(",")
        code = code.strip()
        if code:
            choices[code] = label.strip() if sep else code
    return choices


def checkbox_column(field_name: str, code: str) -> str:
    """Column of one checkbox choice in the flat export: ``field___code`` with the code
    lower-cased and every character other than ``a-z0-9_`` turned into ``_``
    (``-1`` → ``field____1``, ``1.5`` → ``field___1_5``)."""
    return f"{field_name}___{re.sub(r'[^a-z0-9_]', '_', code.lower())}"


@dataclass(frozen=True)
class FieldSpec:
    """One data dictionary row, reduced to what typing needs."""

    name: str
    form: str
    field_type: str
    validation: str = ""
    choices: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, row: Mapping[str, str]) -> FieldSpec:
        """Build from one ``content=metadata`` row; raise if it lacks its name, form or type."""
        try:
            name, form, field_type = row["field_name"], row["form_name"], row["field_type"]
        except KeyError as exc:
            raise RedcapError(f"data dictionary row lacks {exc.args[0]!r}") from None
        choices_text = row.get("select_choices_or_calculations") or ""
        return cls(
            name=name,
            form=form,
            field_type=field_type,
            validation=(row.get("text_validation_type_or_show_slider_number") or "").strip(),
            choices=parse_choices(choices_text) if field_type in _CHOICE_TYPES else {},
        )


@dataclass(frozen=True)
class TypedInstrument:
    """One instrument's values of one flat row, typed."""

    values: dict[str, RedcapValue]
    labels: dict[str, str]
    completion_status: RedcapCompletionStatus
    has_data: bool
    """Any value present, any box checked, or the form marked unverified/complete."""
    problems: tuple[str, ...] = ()
    """Fields whose value did not parse per their type (kept as raw strings)."""


class _Unparseable(ValueError):
    pass


def _type_scalar(spec: FieldSpec, raw: str) -> tuple[RedcapValue, str | None]:
    """Typed value and label of a non-empty, non-checkbox raw value; raise _Unparseable."""
    kind, validation = spec.field_type, spec.validation
    try:
        if kind in ("yesno", "truefalse"):
            if raw not in ("0", "1"):
                raise _Unparseable
            return raw == "1", _YESNO_LABELS[kind][raw]
        if kind in ("radio", "dropdown"):
            if raw not in spec.choices:
                raise _Unparseable
            return raw, spec.choices[raw]
        if kind == "calc":
            return float(raw), None
        if kind == "slider":
            if not _INTEGER.match(raw):
                raise _Unparseable
            return int(raw), None
        if kind == "text":
            if validation == "integer":
                if not _INTEGER.match(raw):
                    raise _Unparseable
                return int(raw), None
            if _FLOAT_VALIDATIONS.match(validation):
                text = raw.replace(",", ".") if validation.endswith("comma_decimal") else raw
                return float(text), None
            if validation.startswith("date_"):
                return date.fromisoformat(raw).isoformat(), None
            if validation.startswith("datetime_"):
                return datetime.fromisoformat(raw).isoformat(), None
            if validation == "time":
                if not _TIME.match(raw):
                    raise _Unparseable
                return time.fromisoformat(raw).isoformat(timespec="minutes" if len(raw) == 5 else "seconds"), None
    except ValueError as exc:
        raise _Unparseable from exc
    return raw, None


class DataDictionary:
    """A project's data dictionary: which fields each instrument has and how to type them."""

    def __init__(self, fields: Iterable[FieldSpec]) -> None:
        self.fields: tuple[FieldSpec, ...] = tuple(fields)
        if not self.fields:
            raise RedcapError("the data dictionary is empty")
        self.record_id_field = self.fields[0].name
        """REDCap's record id is always the first field of the first instrument."""
        by_form: dict[str, list[FieldSpec]] = {}
        for spec in self.fields:
            by_form.setdefault(spec.form, []).append(spec)
        self._by_form = {form: tuple(specs) for form, specs in by_form.items()}

    @classmethod
    def from_metadata(cls, rows: Iterable[Mapping[str, str]]) -> DataDictionary:
        """Build from the ``content=metadata`` JSON rows."""
        return cls(FieldSpec.from_metadata(row) for row in rows)

    @property
    def forms(self) -> tuple[str, ...]:
        """Instrument names in dictionary order."""
        return tuple(self._by_form)

    def fields_of(self, form: str) -> tuple[FieldSpec, ...]:
        """The fields of ``form``; :class:`RedcapError` if the project has no such instrument."""
        try:
            return self._by_form[form]
        except KeyError:
            raise RedcapError(f"instrument {form!r} is not in the data dictionary") from None

    def type_instrument(
        self, form: str, row: Mapping[str, str], *, log_context: Mapping[str, object] | None = None
    ) -> TypedInstrument:
        """Type the columns of ``form`` in one flat-export ``row``.

        Columns missing from the row count as empty (the API leaves out fields the token's
        export rights remove). The record id field is not a value: it is the event's
        ``record_id``.
        """
        values: dict[str, RedcapValue] = {}
        labels: dict[str, str] = {}
        problems: list[str] = []
        has_data = False
        for spec in self.fields_of(form):
            if spec.name == self.record_id_field or spec.field_type in _NO_VALUE_TYPES:
                continue
            if spec.field_type == "checkbox":
                checked = [code for code in spec.choices if (row.get(checkbox_column(spec.name, code)) or "") == "1"]
                values[spec.name] = checked
                has_data = has_data or bool(checked)
                continue
            raw = (row.get(spec.name) or "").strip()
            if not raw:
                values[spec.name] = None
                continue
            has_data = True
            try:
                value, label = _type_scalar(spec, raw)
            except _Unparseable:
                values[spec.name] = raw
                problems.append(spec.name)
                continue
            values[spec.name] = value
            if label is not None:
                labels[spec.name] = label
        raw_complete = (row.get(f"{form}_complete") or "").strip()
        completion = _COMPLETION.get(raw_complete, RedcapCompletionStatus.INCOMPLETE)
        if raw_complete and raw_complete not in _COMPLETION:
            problems.append(f"{form}_complete")
        if completion is not RedcapCompletionStatus.INCOMPLETE:
            has_data = True
        if problems:
            log.warning(
                "REDCap values do not match their data dictionary type; kept as raw strings",
                extra={**(log_context or {}), "redcap_instrument": form, "fields": problems},
            )
        return TypedInstrument(values, labels, completion, has_data, tuple(problems))
