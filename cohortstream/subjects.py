"""Identifiers of one research subject in the sources: DICOM, REDCap, EHR.

Shared by the subject registry (which links them), the views (keyed by them) and the
retrieval side (which resolves them). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cohortstream.errors import CohortStreamError

__all__ = ["IdentifierKind", "SubjectIdentifier", "SubjectIdentifierError", "subject_id_for"]

IdentifierKind = Literal["dicom", "redcap", "ehr"]
_KINDS: tuple[IdentifierKind, ...] = ("dicom", "redcap", "ehr")


class SubjectIdentifierError(CohortStreamError, ValueError):
    """An identifier written as text could not be understood."""


@dataclass(frozen=True, order=True)
class SubjectIdentifier:
    """One identifier of a subject in one source.

    Written as text (CLI, API, registry keys):
    ``dicom:<PatientID>``, ``redcap:<redcap_url>|<project_id>|<record_id>``,
    ``ehr:<source>|<subject_id>``.
    """

    kind: IdentifierKind
    scope: str
    value: str

    @classmethod
    def dicom(cls, patient_id: str) -> SubjectIdentifier:
        return cls("dicom", "", patient_id)

    @classmethod
    def redcap(cls, redcap_url: str, project_id: str, record_id: str) -> SubjectIdentifier:
        return cls("redcap", f"{redcap_url.rstrip('/')}/|{project_id}", record_id)

    @classmethod
    def ehr(cls, source: str, subject_id: str) -> SubjectIdentifier:
        return cls("ehr", source, subject_id)

    @property
    def key(self) -> str:
        """The text form, also the registry document's ``_id``."""
        if self.kind == "dicom":
            return f"dicom:{self.value}"
        return f"{self.kind}:{self.scope}|{self.value}"

    @property
    def scope_key(self) -> str:
        """Identifiers with equal scope keys cannot share a subject."""
        return f"{self.kind}:{self.scope}"

    @classmethod
    def parse(cls, text: str) -> SubjectIdentifier:
        kind, sep, rest = text.partition(":")
        if not sep or kind not in _KINDS:
            raise SubjectIdentifierError(
                f"identifier {text!r} must start with one of {', '.join(k + ':' for k in _KINDS)}"
            )
        if kind == "dicom":
            if not rest:
                raise SubjectIdentifierError(f"identifier {text!r} has no PatientID after 'dicom:'")
            return cls.dicom(rest)
        if kind == "redcap":
            url, _, remainder = rest.rpartition("|")
            url, _, project = url.rpartition("|")
            if not (url and project and remainder):
                raise SubjectIdentifierError(
                    f"identifier {text!r} must look like redcap:<redcap_url>|<project_id>|<record_id>"
                )
            return cls.redcap(url, project, remainder)
        source, _, subject = rest.rpartition("|")
        if not (source and subject):
            raise SubjectIdentifierError(f"identifier {text!r} must look like ehr:<source>|<subject_id>")
        return cls.ehr(source, subject)

    def __str__(self) -> str:
        return self.key


def subject_id_for(keys: Iterable[str]) -> str:
    """The subject id of a subject with these identifier keys (order-independent)."""
    anchor = min(keys)
    return "S" + hashlib.sha256(anchor.encode("utf-8")).hexdigest()[:15].upper()
