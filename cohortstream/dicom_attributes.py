"""Read a received DICOM object's attributes and build its ``DicomInstanceReceived`` event.

Why in the core package: two rooms on the same floor need this reader, the C-STORE
listener (``producers/dicom``) and the staging sweeper (``consumers/staging_sweeper``),
which finds staged files the stream did not finish and publishes their event again.
Producers and consumers must not import each other (and nothing below the CLI may import
the CLI), so the reader lives where both can import it without a circle: here, with the
structural check it runs first (:mod:`cohortstream.dicom_integrity`).

No parallel field list: the fields read from the data set are derived from the event
model. Every field of :class:`~cohortstream.events.DicomInstanceReceived` whose name is a
DICOM keyword in snake case (``sop_instance_uid`` ↔ ``SOPInstanceUID``,
``body_part_examined`` ↔ ``BodyPartExamined``) is read from the attribute of that keyword
(group 0002, the Transfer Syntax UID, from the file meta), converted by the keyword's VR:

- ``UI`` on a required field: an identifier; missing or empty → :class:`UnreadableInstanceError`;
- other required text (``PatientID``, ``Modality``): ``""`` when missing;
- ``IS``: an integer in the signed 32-bit range, else ``None``;
- ``DA``: a date (``YYYYMMDD``, also ``YYYY.MM.DD`` and ``YYYY-MM-DD``), else ``None``;
- ``AS``: an age string (``nnnD|W|M|Y``), else ``None``;
- ``PatientSex``: one of the standard's enumerated values ``M``, ``F``, ``O``, else ``None``;
- any other VR: the stripped text (multiple values joined by ``\\``), ``None`` when empty.

The listener reads these values from the raw element bytes the structural check collects
on its walk (:func:`cohortstream.dicom_integrity.scan_part10`), converted by pydicom's own
value converters with the data set's Specific Character Set, so the result is the one
``dcmread`` would give without parsing the file a second time; an element whose VR in the
file differs from the dictionary's falls back to ``dcmread``.

Strict about what identifies the instance, lenient about the rest (an unparseable date,
age or number becomes ``None``): a modality that writes ``StudyDate`` badly still gets its
instance stored. A new event field named after a DICOM keyword is read with no change
here (``tests/unit/test_dicom_attributes.py`` pins the mapping, so it is noticed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.values import convert_value

from cohortstream.dicom_integrity import IncompleteDicomError, Part10Scan, scan_part10
from cohortstream.errors import CohortStreamError
from cohortstream.events import DicomInstanceReceived
from cohortstream.staging import StagedFile

__all__ = [
    "DATASET_FIELDS",
    "InstanceAttributes",
    "UnreadableInstanceError",
    "dataset_attributes",
    "instance_event",
    "read_instance_attributes",
]

InstanceAttributes = dict[str, Any]
"""``DicomInstanceReceived`` field name → value, for every field in :data:`DATASET_FIELDS`."""


class UnreadableInstanceError(CohortStreamError, ValueError):
    """The received object cannot be understood; the message says why."""


def _dataset_fields() -> dict[str, str]:
    by_folded_keyword = {keyword.lower(): keyword for keyword in keyword_dict}
    fields = {}
    for name in DicomInstanceReceived.model_fields:
        keyword = by_folded_keyword.get(name.replace("_", ""))
        if keyword is not None:
            fields[name] = keyword
    return fields


DATASET_FIELDS: Mapping[str, str] = _dataset_fields()
"""Event field name → DICOM keyword, for every event field read from the object."""

_FILE_META_KEYWORDS = frozenset(keyword for keyword in DATASET_FIELDS.values() if Tag(keyword).group == 0x0002)

_SPECIFIC_CHARACTER_SET = 0x00080005
_DATASET_ELEMENTS: Mapping[str, tuple[int, str]] = {
    keyword: (int(Tag(keyword)), dictionary_VR(keyword))
    for keyword in DATASET_FIELDS.values()
    if keyword not in _FILE_META_KEYWORDS
}
"""Keyword → (tag, dictionary VR) of every data set element the event reads."""
_WANTED_TAGS = frozenset({*(tag for tag, _ in _DATASET_ELEMENTS.values()), _SPECIFIC_CHARACTER_SET})
_TAGS = {tag: Tag(tag) for tag in _WANTED_TAGS}


class _Values(Protocol):
    """Where values are looked up by keyword: a pydicom ``Dataset`` or a plain dict."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


_AGE_RE = re.compile(r"^\d{3}[DWMY]$")
_INT32 = (-(2**31), 2**31 - 1)


def _text(ds: _Values, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _int(ds: _Values, keyword: str) -> int | None:
    text = _text(ds, keyword)
    if text is None:
        return None
    try:
        number = int(float(text.split("\\")[0]))
    except ValueError:
        return None
    return number if _INT32[0] <= number <= _INT32[1] else None


def _date(ds: _Values, keyword: str) -> date | None:
    text = _text(ds, keyword)
    if text is None:
        return None
    for fmt in ("%Y%m%d", "%Y.%m.%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(text[:10], fmt).date()
        except ValueError:
            continue
    return None


def _age(ds: _Values, keyword: str) -> str | None:
    text = (_text(ds, keyword) or "").upper()
    return text if _AGE_RE.match(text) else None


def _sex(ds: _Values, keyword: str) -> str | None:
    text = (_text(ds, keyword) or "").upper()
    return text if text in {"M", "F", "O"} else None


_BY_VR: dict[str, Callable[[_Values, str], Any]] = {"IS": _int, "DA": _date, "AS": _age}
_BY_KEYWORD: dict[str, Callable[[_Values, str], Any]] = {"PatientSex": _sex}


def dataset_attributes(ds: pydicom.Dataset, *, transfer_syntax_uid: str | None = None) -> InstanceAttributes:
    """The event's attributes of ``ds`` (see the module docstring for the rules).

    ``transfer_syntax_uid`` overrides the file meta's (the listener passes what the
    structural check found). Raises :class:`UnreadableInstanceError` when an identifier
    is missing; decoding errors of pydicom propagate (see :func:`read_instance_attributes`).
    """
    return _attributes(ds, getattr(ds, "file_meta", None) or pydicom.Dataset(), transfer_syntax_uid)


_FIELD_READERS: tuple[tuple[str, str, Callable[[_Values, str], Any], bool, bool, bool], ...] = tuple(
    (
        name,
        keyword,
        _BY_KEYWORD.get(keyword, _BY_VR.get(dictionary_VR(keyword), _text)),
        keyword in _FILE_META_KEYWORDS,
        DicomInstanceReceived.model_fields[name].is_required(),
        dictionary_VR(keyword) == "UI",
    )
    for name, keyword in DATASET_FIELDS.items()
)
"""Per event field, worked out once (the listener reads every instance with it): field
name, keyword, converter, from the file meta?, required?, an identifier (VR UI)?"""


def _attributes(values: _Values, meta: _Values, transfer_syntax_uid: str | None) -> InstanceAttributes:
    attributes: InstanceAttributes = {}
    missing = []
    for name, keyword, convert, in_meta, required, identifier in _FIELD_READERS:
        value = convert(meta if in_meta else values, keyword)
        if value is None and required:
            if identifier:
                missing.append(keyword)
            value = ""
        attributes[name] = value
    if transfer_syntax_uid:
        attributes["transfer_syntax_uid"] = transfer_syntax_uid
        missing = [keyword for keyword in missing if keyword != "TransferSyntaxUID"]
    if missing:
        raise UnreadableInstanceError(f"required attribute(s) missing or empty: {', '.join(missing)}")
    return attributes


def _raw_element(scan: Part10Scan, tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(_TAGS[tag], vr, len(value), value, 0, scan.implicit_vr, scan.little_endian, True, False)


def _scanned_values(scan: Part10Scan) -> dict[str, Any] | None:
    """Keyword → value as pydicom converts it, from the scan's raw bytes; ``None`` when an
    element's VR in the file is not the dictionary's (then ``dcmread`` decides)."""
    encodings = None
    charset = scan.elements.get(_SPECIFIC_CHARACTER_SET)
    if charset is not None and charset.value:
        declared = convert_value("CS", _raw_element(scan, _SPECIFIC_CHARACTER_SET, "CS", charset.value))
        encodings = convert_encodings(declared)
    values: dict[str, Any] = {}
    for keyword, (tag, vr) in _DATASET_ELEMENTS.items():
        raw = scan.elements.get(tag)
        if raw is None or not raw.value:
            continue
        if raw.vr is not None and raw.vr != vr:
            return None
        values[keyword] = convert_value(vr, _raw_element(scan, tag, vr, raw.value), encodings)
    return values


def read_instance_attributes(path: Path) -> InstanceAttributes:
    """Check ``path`` is a complete Part-10 object and read the event's attributes.

    Reads without the pixel data. Raises :class:`UnreadableInstanceError` with the reason
    (truncated or garbage data, broken file meta, a missing identifier, a value pydicom
    cannot decode).
    """
    try:
        scan = scan_part10(path, _WANTED_TAGS)
    except IncompleteDicomError as exc:
        raise UnreadableInstanceError(str(exc)) from exc
    except OSError as exc:  # pragma: no cover - pynetdicom's temp file vanished
        raise UnreadableInstanceError(f"cannot read the received file: {exc}") from exc
    try:
        values = _scanned_values(scan)
        if values is not None:
            return _attributes(values, {}, scan.transfer_syntax)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return dataset_attributes(ds, transfer_syntax_uid=scan.transfer_syntax)
    except UnreadableInstanceError:
        raise
    except (
        InvalidDicomError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        EOFError,
        OSError,
        UnicodeError,
        NotImplementedError,
        AttributeError,
        LookupError,
    ) as exc:
        # pydicom decodes lazily and reports broken values with many exception types.
        raise UnreadableInstanceError(f"cannot decode the data set: {type(exc).__name__}: {exc}") from exc


def _ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def instance_event(
    attrs: InstanceAttributes,
    staged: StagedFile,
    *,
    producer: str,
    calling_aet: str,
    called_aet: str,
    received_at: datetime,
) -> DicomInstanceReceived:
    """The event for one read and staged instance (the model validates every field)."""
    return DicomInstanceReceived(
        **attrs,
        producer=producer,
        calling_aet=calling_aet,
        called_aet=called_aet,
        size_bytes=staged.size,
        sha256=staged.sha256,
        staged_uri=staged.uri,
        received_at=_ms(received_at),
    )
