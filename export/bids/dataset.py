"""Export a cohort as a BIDS 1.10 dataset: the entry point the CLI and a job runner call.

This module runs the export; each job it runs is a module of its own: the reads of the
views (:mod:`.selection`), the DICOM files from Orthanc (:mod:`.fetching`), BIDS names
(:mod:`.mapping` for a series' datatype and entities, :mod:`.naming` for paths),
conversion (:mod:`.imaging`, :mod:`.derivatives`) and writing (:mod:`.writer` for the
manifest and atomic writes, :mod:`.dataset_files` for README, descriptions and tables).

Decisions (also in the README, "BIDS export"):

- **Subjects** come from the registry (a cohort query, a list of ids/identifiers, or
  everyone); each becomes ``sub-<label>`` with a keyed pseudonym (:mod:`.labels`). Only
  subjects with at least one exported scan are written (BIDS wants a folder for every
  row of ``participants.tsv``); the others are listed in the report.
- **Sessions**: one per DICOM study, and always a ``ses-`` level, even for a subject with
  one study: a later study then adds a session instead of renaming every file of the
  subject (which an incremental export would otherwise have to rewrite). Labels are
  ordinals by study date (``01``, ``02``) or the shifted study date.
- **Dates**: every date written (``acq_time`` in ``scans.tsv``/``sessions.tsv``, REDCap
  dates) is shifted back by ``bids_date_shift_years`` plus a keyed per-subject jitter,
  as BIDS allows; no birth date is written anywhere, ages are in years (capped at 89).
- **Incremental**: a series whose fingerprint (UID, instance count, last arrival,
  label) is in the manifest with its outputs intact is neither fetched nor converted
  again; every file is written only when its bytes changed (:mod:`.writer`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cohortstream.cohort_query import CohortQuery
from cohortstream.errors import CohortStreamError, ConfigurationError
from cohortstream.settings import Settings
from export.bids import dataset_files, naming
from export.bids.dataset_files import BIDS_VERSION
from export.bids.derivatives import dseg_nifti, label_rows
from export.bids.errors import BidsExportError, ConversionError, Dcm2niixNotFoundError
from export.bids.features import features_table
from export.bids.fetching import OrthancFetcher
from export.bids.imaging import convert_series, read_datasets, require_dcm2niix, series_attributes
from export.bids.labels import DateShifter, pseudonym
from export.bids.mapping import MappingRule, SeriesMapping, Unmapped, load_rules, map_series
from export.bids.naming import DERIVATIVE_NAME
from export.bids.participants import participant_row
from export.bids.phenotype import diagnosis_table, instrument_tables, labs_table
from export.bids.selection import SelectedSubject, ViewSelection, redcap_dictionary
from export.bids.tables import json_bytes, tsv_bytes
from export.bids.writer import ExportWriter

__all__ = ["BIDS_VERSION", "DERIVATIVE_NAME", "ExportReport", "ProgressCallback", "SkippedSeries", "export_bids"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; stages: ``subjects``, ``tables``, ``done``."""


@dataclass(frozen=True)
class SkippedSeries:
    """A series left out of the export and why (UIDs only: no patient identifier)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_description: str
    reason: str


@dataclass
class ExportReport:
    """What an export did; ``to_dict`` is what the CLI prints and a job stores."""

    outdir: str
    participants: list[str] = field(default_factory=list)
    scans: list[str] = field(default_factory=list)
    derivatives: list[str] = field(default_factory=list)
    skipped_series: list[SkippedSeries] = field(default_factory=list)
    skipped_subjects: list[dict[str, str]] = field(default_factory=list)
    files_written: list[str] = field(default_factory=list)
    files_unchanged: int = 0
    files_removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Series:
    doc: dict[str, Any]
    fingerprint: str
    cache_key: str
    attributes: dict[str, str] | None = None
    mapping: SeriesMapping | None = None
    files: list[bytes] | None = None
    relpath: str = ""


@dataclass
class _Subject:
    selected: SelectedSubject
    label: str
    sessions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    scans: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)

    @property
    def subject_id(self) -> str:
        return self.selected.subject_id


class _Exporter:
    def __init__(
        self,
        settings: Settings,
        outdir: Path,
        progress: ProgressCallback | None,
        *,
        selection: ViewSelection | None = None,
        fetcher: OrthancFetcher | None = None,
    ) -> None:
        self.settings = settings
        key = settings.bids_pseudonym_key.get_secret_value().encode("utf-8")
        if settings.bids_pseudonymise and not key:
            raise ConfigurationError(
                "COHORTSTREAM_BIDS_PSEUDONYM_KEY must be set for a pseudonymised BIDS export "
                "(or set COHORTSTREAM_BIDS_PSEUDONYMISE=false to use registry subject ids)"
            )
        self.key = key
        self.shifter = DateShifter(key, settings.bids_date_shift_years)
        self.rules: tuple[MappingRule, ...] = load_rules(settings.bids_mapping_rules, settings.bids_mapping_rules_file)
        self.writer = ExportWriter(outdir)
        self.report = ExportReport(outdir=str(outdir))
        self.progress = progress or (lambda stage, done, total: None)
        self.selection = selection or ViewSelection(settings)
        self.fetcher = fetcher or OrthancFetcher(settings)
        self._dcm2niix_found = False

    # --- helpers ---------------------------------------------------------------------
    def _opaque(self, text: str) -> str:
        """Manifest source ids: keyed digests of UIDs, so the manifest links to no PACS."""
        return hmac.new(self.key or b"cohortstream", text.encode("utf-8"), hashlib.sha256).hexdigest()[:20]

    def label(self, subject_id: str) -> str:
        if self.settings.bids_pseudonymise:
            return pseudonym(self.key, subject_id, self.settings.bids_pseudonym_length)
        return subject_id

    def shift_iso(self, subject_id: str, value: str) -> str:
        """A shifted ISO date or datetime string (the time of day is kept)."""
        text = value.strip()
        try:
            if len(text) <= 10:
                return self.shifter.shift_date(subject_id, date.fromisoformat(text)).isoformat()
            return (
                self.shifter.shift_datetime(subject_id, datetime.fromisoformat(text)).replace(tzinfo=None).isoformat()
            )
        except ValueError:
            return "n/a"

    # --- imaging ---------------------------------------------------------------------
    def _require_dcm2niix(self) -> None:
        """Before the first series is fetched for conversion: without dcm2niix nothing new
        can be exported, so the export stops (an export with nothing to convert goes on)."""
        if not self._dcm2niix_found:
            require_dcm2niix(self.settings.bids_dcm2niix)
            self._dcm2niix_found = True

    async def _fetch(self, item: _Series, *, to_convert: bool = True) -> list[bytes]:
        if item.files is None:
            if to_convert:
                self._require_dcm2niix()
            item.files = await self.fetcher.series_files(item.doc)
        return item.files

    def _skip(self, doc: dict[str, Any], reason: str) -> None:
        self.report.skipped_series.append(
            SkippedSeries(
                str(doc.get("study_instance_uid")),
                str(doc["_id"]),
                str(doc.get("modality") or ""),
                str(doc.get("series_description") or ""),
                reason,
            )
        )
        log.info("series left out of BIDS export", extra={"series_instance_uid": doc["_id"], "reason": reason})

    async def export_session(self, subject: _Subject, session: str, study: dict[str, Any]) -> None:
        cache = self.writer.cache.setdefault("series", {})
        mapped: list[_Series] = []
        for doc in await self.selection.series(study["_id"]):
            fingerprint = hashlib.sha256(
                "|".join(
                    [
                        doc["_id"],
                        str(doc.get("instance_count")),
                        str(doc.get("last_received_at")),
                        subject.label,
                    ]
                ).encode("utf-8")
            ).hexdigest()
            item = _Series(doc, fingerprint, self._opaque(doc["_id"]))
            view_attributes = {
                "Modality": str(doc.get("modality") or ""),
                "SeriesDescription": str(doc.get("series_description") or ""),
            }
            early = map_series(view_attributes, self.rules)
            if isinstance(early, Unmapped) and view_attributes["Modality"].upper() != "MR":
                self._skip(doc, early.reason)
                continue
            entry = cache.get(item.cache_key)
            if entry and entry.get("fingerprint") == fingerprint:
                item.attributes = entry["attributes"]
            else:
                try:
                    files = await self._fetch(item)
                    item.attributes = series_attributes(read_datasets(files[:1])[0])
                except Dcm2niixNotFoundError:
                    raise
                except CohortStreamError as exc:
                    self._skip(doc, f"cannot read from Orthanc: {exc}")
                    continue
                cache[item.cache_key] = {"fingerprint": fingerprint, "attributes": item.attributes}
            result = map_series(item.attributes, self.rules)
            if isinstance(result, Unmapped):
                self._skip(doc, result.reason)
                continue
            item.mapping = result
            mapped.append(item)
        # Runs: several series with the same name in one session get run-1, run-2 … in series order.
        groups: dict[tuple[Any, ...], list[_Series]] = {}
        for item in mapped:
            assert item.mapping is not None
            groups.setdefault(
                (item.mapping.datatype, item.mapping.suffix, tuple(sorted(item.mapping.entities.items()))), []
            ).append(item)
        for (datatype, suffix, entities), items in groups.items():
            for run, item in enumerate(items, start=1):
                item.relpath = naming.series_nifti(
                    subject.label, session, datatype, suffix, dict(entities), run if len(items) > 1 else None
                )
        for item in mapped:
            await self.export_series(subject, session, item)
            self.writer.save()  # resumable after every series

    async def export_series(self, subject: _Subject, session: str, item: _Series) -> None:
        assert item.mapping is not None
        cache = self.writer.cache["series"][item.cache_key]
        json_path = naming.sidecar_of(item.relpath)
        sources = [f"series:{item.cache_key}"]
        old = cache.get("nifti")
        try:
            reusable = bool(old and "sidecar" in cache and self.writer.previous_entry(old))
            if reusable and old == item.relpath:
                self.writer.keep(old)
            elif reusable and (data := self.writer.read_previous(old)) is not None:
                self.writer.write(item.relpath, data, sources)  # renamed (a rule or a session label changed)
            else:
                files = await self._fetch(item)
                converted = await asyncio.to_thread(
                    convert_series,
                    files,
                    item.doc["_id"],
                    dcm2niix=self.settings.bids_dcm2niix,
                    timeout_s=self.settings.bids_dcm2niix_timeout_s,
                )
                if item.mapping.suffix == "bold" and converted.ndim != 4:
                    raise ConversionError(
                        f"series {item.doc['_id']} maps to bold but is {converted.ndim}D (BOLD must be 4D)"
                    )
                first = read_datasets(files[:1])[0]
                cache["sidecar"] = converted.sidecar
                cache["acq_time"] = self._acq_time(subject.subject_id, first)
                self.writer.write(item.relpath, converted.nifti_gz, sources)
        except Dcm2niixNotFoundError:
            raise
        except CohortStreamError as exc:
            self._skip(item.doc, str(exc))
            cache.pop("nifti", None)
            return
        cache["nifti"] = item.relpath
        sidecar = dict(cache["sidecar"])
        if item.mapping.datatype == "func":
            sidecar["TaskName"] = item.mapping.entities["task"]
        self.writer.write(json_path, json_bytes(sidecar), sources)
        subject.scans.setdefault(session, []).append((item.relpath, cache.get("acq_time")))
        self.report.scans.append(item.relpath)
        await self.export_annotations(subject, session, item)

    def _acq_time(self, subject_id: str, ds: Any) -> str | None:
        for day_key, time_key in (
            ("AcquisitionDate", "AcquisitionTime"),
            ("SeriesDate", "SeriesTime"),
            ("StudyDate", "StudyTime"),
        ):
            day, clock = str(ds.get(day_key, "") or ""), str(ds.get(time_key, "") or "")
            if re.fullmatch(r"\d{8}", day):
                clock = (clock.split(".")[0] + "000000")[:6] if re.match(r"\d{2}", clock) else "000000"
                moment = datetime.strptime(day + clock, "%Y%m%d%H%M%S")
                return self.shifter.shift_datetime(subject_id, moment).isoformat()
        return None

    # --- derivatives -----------------------------------------------------------------
    async def export_annotations(self, subject: _Subject, session: str, item: _Series) -> None:
        for annotation in await self.selection.reviewed_annotations(item.doc["_id"]):
            seg_uid = annotation.get("corrected_seg_sop_instance_uid") if annotation["status"] == "corrected" else None
            seg_uid = seg_uid or annotation.get("seg_sop_instance_uid")
            if not seg_uid:
                continue
            model = re.sub(r"[^A-Za-z0-9]", "", str(annotation.get("model_name") or "model"))
            assert item.mapping is not None
            rel = naming.dseg_stem(subject.label, session, item.relpath, item.mapping.suffix, model)
            fingerprint = self._opaque(
                "|".join([str(annotation["_id"]), annotation["status"], seg_uid, item.fingerprint])
            )
            cache = self.writer.cache.setdefault("annotations", {})
            sources = [f"annotation:{self._opaque(str(annotation['_id']))}"]
            if cache.get(fingerprint) == rel + ".nii.gz" and self.writer.previous_entry(rel + ".nii.gz"):
                self.writer.keep(rel + ".nii.gz")
            else:
                try:
                    seg = await self.fetcher.seg_file(seg_uid)
                    source_nifti = self.writer.read_previous(item.relpath)
                    if source_nifti is None:
                        raise ConversionError(f"source image {item.relpath} is not in the export")
                    series_files = await self._fetch(item, to_convert=False)
                    data = await asyncio.to_thread(dseg_nifti, series_files, seg, source_nifti, item.doc["_id"])
                except CohortStreamError as exc:
                    self._skip(item.doc, f"annotation not exported: {exc}")
                    continue
                self.writer.write(rel + ".nii.gz", data, sources)
                cache[fingerprint] = rel + ".nii.gz"
            self.writer.write(
                rel + ".tsv", tsv_bytes(["index", "name"], label_rows(annotation.get("segments") or [])), sources
            )
            self.writer.write(
                rel + ".json",
                json_bytes(
                    {
                        "Description": f"Segmentation suggested by model {annotation.get('model_name')} "
                        f"{annotation.get('model_version') or ''}".strip()
                        + f", {annotation['status']} on review.",
                        "Sources": [f"bids:raw:{item.relpath}"],
                        "SpatialReference": f"bids:raw:{item.relpath}",
                    }
                ),
                sources,
            )
            self.report.derivatives.append(rel + ".nii.gz")

    # --- tables ----------------------------------------------------------------------
    async def write_tables(self, subjects: list[_Subject]) -> None:
        w = self.writer
        dataset_files.write_participants(w, [participant_row(s.label, s.selected.demographics) for s in subjects])
        for s in subjects:
            session_rows = []
            for session, study in s.sessions:
                if session not in s.scans:
                    continue
                study_date = str(study.get("study_date") or "")
                shifted = (
                    self.shift_iso(s.subject_id, study_date[:10])
                    if re.match(r"\d{4}-\d{2}-\d{2}", study_date)
                    else None
                )
                session_rows.append(
                    {"session_id": naming.session_id(session), "acq_time": f"{shifted}T00:00:00" if shifted else None}
                )
                dataset_files.write_scans(w, s.label, session, s.scans[session])
            dataset_files.write_sessions(w, s.label, session_rows)
        questionnaires = [(s.label, s.subject_id, q) for s in subjects for q in s.selected.demographics.questionnaires]
        dictionary, warnings = await redcap_dictionary(self.settings, [q for _, _, q in questionnaires])
        self.report.warnings += warnings
        if not dictionary.known and questionnaires:
            self.report.warnings.append(
                "REDCap data dictionary not available: phenotype levels derived from the labels seen"
            )
        drop = set(self.settings.bids_phenotype_drop_fields)
        drop |= {r.redcap_field for r in self.settings.subject_link_rules if r.redcap_field}
        tables = instrument_tables(
            questionnaires,
            dictionary,
            drop,
            self.shift_iso,
            keep_free_text=self.settings.bids_keep_free_text,
            warnings=self.report.warnings,
        )
        ehr = [(s.label, doc) for s in subjects for doc in s.selected.demographics.ehr_subjects]
        tables += [t for t in (labs_table(ehr), diagnosis_table(ehr)) if t is not None]
        features = await features_table(self.selection.db, [(s.label, s.subject_id) for s in subjects])
        if features is not None:
            tables.append(features)
        dataset_files.write_phenotype(w, tables)

    # --- run -------------------------------------------------------------------------
    async def run(self, query: CohortQuery | None, subjects_wanted: Sequence[str] | None) -> ExportReport:
        await self.selection.open()
        try:
            await self.fetcher.open()
            try:
                await self._export(query, subjects_wanted)
            finally:
                await self.fetcher.close()
        finally:
            await self.selection.close()
        self.report.files_written = list(self.writer.written)
        self.report.files_unchanged = len(self.writer.unchanged)
        self.report.files_removed = list(self.writer.removed)
        self.progress("done", len(self.report.participants), len(self.report.participants))
        return self.report

    async def _export(self, query: CohortQuery | None, subjects_wanted: Sequence[str] | None) -> None:
        ids = await self.selection.subject_ids(query, subjects_wanted)
        labels: dict[str, str] = {}
        exported: list[_Subject] = []
        for done, subject_id in enumerate(ids):
            self.progress("subjects", done, len(ids))
            subject = _Subject(await self.selection.subject(subject_id), self.label(subject_id))
            if subject.label in labels:
                raise BidsExportError(
                    f"subjects {labels[subject.label]} and {subject_id} got the same label; "
                    "raise COHORTSTREAM_BIDS_PSEUDONYM_LENGTH"
                )
            labels[subject.label] = subject_id
            for index, study in enumerate(await self.selection.studies(subject.selected.patient_ids), start=1):
                subject.sessions.append((self._session_label(subject, study, index), study))
            for session, study in subject.sessions:
                await self.export_session(subject, session, study)
            if subject.scans:
                exported.append(subject)
                self.report.participants.append(naming.participant_id(subject.label))
            else:
                self.report.skipped_subjects.append({"subject_id": subject_id, "reason": "no exportable MR series"})
        self.progress("tables", len(ids), len(ids))
        await self.write_tables(exported)
        dataset_files.write_dataset_files(self.writer, self.settings, bool(self.report.derivatives))
        dataset_files.write_changes(self.writer)
        self.writer.finish()

    def _session_label(self, subject: _Subject, study: dict[str, Any], index: int) -> str:
        shifted = None
        if self.settings.bids_session_label == "date":
            day = str(study.get("study_date") or "")[:10]
            shifted = self.shift_iso(subject.subject_id, day) if re.match(r"\d{4}-\d{2}-\d{2}$", day) else None
        return naming.session_label(self.settings.bids_session_label, index, shifted, [s for s, _ in subject.sessions])


async def export_bids(
    settings: Settings,
    outdir: Path | str,
    *,
    query: CohortQuery | None = None,
    subjects: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> ExportReport:
    """Export the cohort (``query``, or ``subjects`` by id or identifier, or everyone) to ``outdir``.

    A coroutine so that an API job runner can await it on its loop; dcm2niix and the SEG
    conversion run in worker threads. Exporting again into the same directory writes
    only what changed. Raises :class:`~export.bids.errors.Dcm2niixNotFoundError` before
    fetching any series when a series needs converting and dcm2niix is not installed."""
    if query is not None and subjects:
        raise BidsExportError("give either a cohort query or subjects, not both")
    exporter = _Exporter(settings, Path(outdir), progress)
    return await exporter.run(query, subjects)
