"""The EHR loader: MIMIC-IV-style CSV tables and FHIR R4 bundles → EhrRecord events.

``rows`` holds the shared outcome types and value parsing, ``mimic`` and ``fhir`` the
pure parsers (file in, ``EhrRecord | BadRow | Skipped`` out), ``loader`` the
orchestration that publishes them and reports per file. ``cohortstream ehr load PATH``
is the command-line entry.
"""

from __future__ import annotations

from producers.ehr.fhir import parse_bundle, parse_bundle_data
from producers.ehr.loader import FileReport, LoadReport, Sink, discover, load_extract
from producers.ehr.mimic import Lookups, parse_table, read_icd_titles, read_labitems
from producers.ehr.rows import BadRow, EhrFileError, MissingColumnError, RowError, Skipped, deterministic_event_id

__all__ = [
    "BadRow",
    "EhrFileError",
    "FileReport",
    "LoadReport",
    "Lookups",
    "MissingColumnError",
    "RowError",
    "Sink",
    "Skipped",
    "deterministic_event_id",
    "discover",
    "load_extract",
    "parse_bundle",
    "parse_bundle_data",
    "parse_table",
    "read_icd_titles",
    "read_labitems",
]
