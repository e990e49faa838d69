"""Export a cohort as a BIDS 1.10 dataset: the entry point the CLI and a job runner call.

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
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cohortstream import __version__
from cohortstream.cohort_query import CohortQuery, run_cohort_query
from cohortstream.errors import CohortStreamError, ConfigurationError
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.settings import Settings
from cohortstream.subject_view import resolve_subject_id, subject_identifiers
from consumers.orthanc_archive import OrthancArchive
from export.bids.derivatives import dseg_nifti, label_rows
from export.bids.errors import BidsExportError, ConversionError
from export.bids.imaging import convert_series, read_datasets, series_attributes
from export.bids.labels import DateShifter, pseudonym
from export.bids.mapping import MappingRule, SeriesMapping, Unmapped, load_rules, map_series
from export.bids.participants import PARTICIPANTS_SIDECAR, Demographics, participant_row
from export.bids.phenotype import Dictionary, diagnosis_table, instrument_tables, labs_table
from export.bids.tables import json_bytes, tsv_bytes
from export.bids.writer import ExportWriter

__all__ = ["BIDS_VERSION", "DERIVATIVE_NAME", "ExportReport", "ProgressCallback", "SkippedSeries", "export_bids"]

log = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
DERIVATIVE_NAME = "cohortstream-annotations"
_EXPORTED_ANNOTATIONS = ("accepted", "corrected")
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
    subject_id: str
    label: str
    patient_ids: list[str]
    redcap_keys: list[str]
    ehr_keys: list[str]
    sessions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    scans: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    demographics: Demographics = field(default_factory=Demographics)


class _Exporter:
    def __init__(self, settings: Settings, outdir: Path, progress: ProgressCallback | None) -> None:
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
        self.archive = OrthancArchive(settings)
        self.db: Any = None

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
            return self.shifter.shift_datetime(subject_id, datetime.fromisoformat(text)).replace(tzinfo=None).isoformat()
        except ValueError:
            return "n/a"

    # --- subjects --------------------------------------------------------------------
    async def subject_ids(self, query: CohortQuery | None, subjects: Sequence[str] | None) -> list[str]:
        if subjects:
            return sorted({await resolve_subject_id(self.db, text) for text in subjects})
        return (await run_cohort_query(self.db, query or CohortQuery())).subject_ids

    async def load_subject(self, subject_id: str) -> _Subject:
        identifiers = await subject_identifiers(self.db, subject_id)
        subject = _Subject(
            subject_id=subject_id, label=self.label(subject_id),
            patient_ids=[i.value for i in identifiers if i.kind == "dicom"],
            redcap_keys=[i.key for i in identifiers if i.kind == "redcap"],
            ehr_keys=[i.key for i in identifiers if i.kind == "ehr"],
        )
        db = self.db
        if subject.patient_ids:
            subject.demographics.dicom_patients = await db["patients"].find({"_id": {"$in": subject.patient_ids}}).to_list(None)
        if subject.ehr_keys:
            subject.demographics.ehr_subjects = await db["ehr_subjects"].find({"_id": {"$in": subject.ehr_keys}}).sort("_id").to_list(None)
        if subject.redcap_keys:
            subject.demographics.questionnaires = await db["questionnaires"].find(
                {"subject_key": {"$in": subject.redcap_keys}}).sort("_id").to_list(None)
        return subject

    # --- imaging ---------------------------------------------------------------------
    async def _fetch(self, item: _Series) -> list[bytes]:
        if item.files is None:
            doc = item.doc
            item.files = await self.archive.series_instances(
                doc["study_instance_uid"], doc["_id"], doc["patient_id"],
                expected=int(doc.get("instance_count") or 0), wait_s=30.0,
            )
        return item.files

    def _skip(self, doc: dict[str, Any], reason: str) -> None:
        self.report.skipped_series.append(SkippedSeries(
            str(doc.get("study_instance_uid")), str(doc["_id"]), str(doc.get("modality") or ""),
            str(doc.get("series_description") or ""), reason,
        ))
        log.info("series left out of BIDS export", extra={"series_instance_uid": doc["_id"], "reason": reason})

    async def export_session(self, subject: _Subject, session: str, study: dict[str, Any]) -> None:
        cache = self.writer.cache.setdefault("series", {})
        series_docs = await self.db["series"].find({"study_instance_uid": study["_id"]}).to_list(None)
        series_docs.sort(key=lambda d: (int(d.get("series_number") or 0), d["_id"]))
        mapped: list[_Series] = []
        for doc in series_docs:
            fingerprint = hashlib.sha256("|".join([
                doc["_id"], str(doc.get("instance_count")), str(doc.get("last_received_at")), subject.label,
            ]).encode("utf-8")).hexdigest()
            item = _Series(doc, fingerprint, self._opaque(doc["_id"]))
            view_attributes = {"Modality": str(doc.get("modality") or ""), "SeriesDescription": str(doc.get("series_description") or "")}
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
            groups.setdefault((item.mapping.datatype, item.mapping.suffix, tuple(sorted(item.mapping.entities.items()))), []).append(item)
        for (datatype, suffix, entities), items in groups.items():
            for run, item in enumerate(items, start=1):
                parts = [f"sub-{subject.label}", f"ses-{session}"]
                ent = dict(entities)
                parts += [f"{name}-{ent[name]}" for name in ("task", "acq") if name in ent]
                if len(items) > 1:
                    parts.append(f"run-{run}")
                item.relpath = f"sub-{subject.label}/ses-{session}/{datatype}/{'_'.join(parts)}_{suffix}.nii.gz"
        for item in mapped:
            await self.export_series(subject, session, item)
            self.writer.save()  # resumable after every series

    async def export_series(self, subject: _Subject, session: str, item: _Series) -> None:
        assert item.mapping is not None
        cache = self.writer.cache["series"][item.cache_key]
        json_path = item.relpath.removesuffix(".nii.gz") + ".json"
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
                    convert_series, files, item.doc["_id"], dcm2niix=self.settings.bids_dcm2niix,
                    timeout_s=self.settings.bids_dcm2niix_timeout_s,
                )
                if item.mapping.suffix == "bold" and converted.ndim != 4:
                    raise ConversionError(f"series {item.doc['_id']} maps to bold but is {converted.ndim}D (BOLD must be 4D)")
                first = read_datasets(files[:1])[0]
                cache["sidecar"] = converted.sidecar
                cache["acq_time"] = self._acq_time(subject.subject_id, first)
                self.writer.write(item.relpath, converted.nifti_gz, sources)
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
        for day_key, time_key in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")):
            day, clock = str(ds.get(day_key, "") or ""), str(ds.get(time_key, "") or "")
            if re.fullmatch(r"\d{8}", day):
                clock = (clock.split(".")[0] + "000000")[:6] if re.match(r"\d{2}", clock) else "000000"
                moment = datetime.strptime(day + clock, "%Y%m%d%H%M%S")
                return self.shifter.shift_datetime(subject_id, moment).isoformat()
        return None

    # --- derivatives -----------------------------------------------------------------
    async def export_annotations(self, subject: _Subject, session: str, item: _Series) -> None:
        annotations = await self.db["annotations"].find(
            {"series_instance_uid": item.doc["_id"], "status": {"$in": list(_EXPORTED_ANNOTATIONS)}}
        ).sort("_id").to_list(None)
        for annotation in annotations:
            seg_uid = annotation.get("corrected_seg_sop_instance_uid") if annotation["status"] == "corrected" else None
            seg_uid = seg_uid or annotation.get("seg_sop_instance_uid")
            if not seg_uid:
                continue
            model = re.sub(r"[^A-Za-z0-9]", "", str(annotation.get("model_name") or "model"))
            assert item.mapping is not None
            stem = item.relpath.rsplit("/", 1)[1].removesuffix(f"_{item.mapping.suffix}.nii.gz")
            rel = f"derivatives/{DERIVATIVE_NAME}/sub-{subject.label}/ses-{session}/anat/{stem}_desc-{model}{item.mapping.suffix}_dseg"
            fingerprint = self._opaque("|".join([str(annotation["_id"]), annotation["status"], seg_uid, item.fingerprint]))
            cache = self.writer.cache.setdefault("annotations", {})
            sources = [f"annotation:{self._opaque(str(annotation['_id']))}"]
            if cache.get(fingerprint) == rel + ".nii.gz" and self.writer.previous_entry(rel + ".nii.gz"):
                self.writer.keep(rel + ".nii.gz")
            else:
                try:
                    seg = await self._seg_file(seg_uid)
                    source_nifti = self.writer.read_previous(item.relpath)
                    if source_nifti is None:
                        raise ConversionError(f"source image {item.relpath} is not in the export")
                    data = await asyncio.to_thread(dseg_nifti, await self._fetch(item), seg, source_nifti, item.doc["_id"])
                except CohortStreamError as exc:
                    self._skip(item.doc, f"annotation not exported: {exc}")
                    continue
                self.writer.write(rel + ".nii.gz", data, sources)
                cache[fingerprint] = rel + ".nii.gz"
            self.writer.write(rel + ".tsv", tsv_bytes(["index", "name"], label_rows(annotation.get("segments") or [])), sources)
            self.writer.write(rel + ".json", json_bytes({
                "Description": f"Segmentation suggested by model {annotation.get('model_name')} "
                               f"{annotation.get('model_version') or ''}".strip() + f", {annotation['status']} on review.",
                "Sources": [f"bids:raw:{item.relpath}"],
                "SpatialReference": f"bids:raw:{item.relpath}",
            }), sources)
            self.report.derivatives.append(rel + ".nii.gz")

    async def _seg_file(self, sop_uid: str) -> bytes:
        found = await self.archive._request("POST", "/tools/lookup", content=sop_uid)
        ids = [x["ID"] for x in found.json() if x.get("Type") == "Instance"] if found.status_code == 200 else []
        if not ids:
            raise ConversionError(f"SEG {sop_uid} is not in Orthanc")
        response = await self.archive._request("GET", f"/instances/{ids[0]}/file")
        if response.status_code != 200:
            raise ConversionError(f"Orthanc GET SEG {sop_uid}: HTTP {response.status_code}")
        return response.content

    # --- tables ----------------------------------------------------------------------
    async def dictionary(self, questionnaires: list[dict[str, Any]]) -> Dictionary:
        """The data dictionaries of the configured projects that the questionnaires come from."""
        wanted = {(str(q.get("redcap_url")), str(q.get("project_id"))) for q in questionnaires}
        rows: list[dict[str, str]] = []
        from producers.redcap.api import RedcapApiClient

        for project in self.settings.redcap_projects:
            if (project.redcap_url, project.project_id) not in wanted:
                continue
            try:
                async with RedcapApiClient(self.settings, project) as client:
                    rows += await client.export_metadata()
            except Exception as exc:  # noqa: BLE001 - any API failure: fall back to the labels seen
                self.report.warnings.append(f"REDCap project {project.project_id}: data dictionary not read ({type(exc).__name__})")
        return Dictionary.from_metadata(rows)

    async def write_tables(self, subjects: list[_Subject]) -> None:
        w = self.writer
        participants = [participant_row(s.label, s.demographics) for s in subjects]
        w.write("participants.tsv", tsv_bytes(["participant_id", "age", "sex"], participants))
        w.write("participants.json", json_bytes(PARTICIPANTS_SIDECAR))
        scans_sidecar = {"filename": {"Description": "Image file, relative to the session folder."},
                         "acq_time": {"Description": "Acquisition time, shifted per participant (see README)."}}
        for s in subjects:
            base = f"sub-{s.label}"
            session_rows = []
            for session, study in s.sessions:
                if session not in s.scans:
                    continue
                study_date = str(study.get("study_date") or "")
                shifted = self.shift_iso(s.subject_id, study_date[:10]) if re.match(r"\d{4}-\d{2}-\d{2}", study_date) else None
                session_rows.append({"session_id": f"ses-{session}", "acq_time": f"{shifted}T00:00:00" if shifted else None})
                rows = [{"filename": rel.split(f"ses-{session}/", 1)[1], "acq_time": acq} for rel, acq in sorted(s.scans[session])]
                w.write(f"{base}/ses-{session}/{base}_ses-{session}_scans.tsv", tsv_bytes(["filename", "acq_time"], rows))
                w.write(f"{base}/ses-{session}/{base}_ses-{session}_scans.json", json_bytes(scans_sidecar))
            w.write(f"{base}/{base}_sessions.tsv", tsv_bytes(["session_id", "acq_time"], session_rows))
            w.write(f"{base}/{base}_sessions.json", json_bytes({
                "session_id": {"Description": "One session per DICOM study."},
                "acq_time": {"Description": "Study date, shifted per participant (see README)."}}))
        questionnaires = [(s.label, s.subject_id, q) for s in subjects for q in s.demographics.questionnaires]
        dictionary = await self.dictionary([q for _, _, q in questionnaires])
        if not dictionary.known and questionnaires:
            self.report.warnings.append("REDCap data dictionary not available: phenotype levels derived from the labels seen")
        drop = set(self.settings.bids_phenotype_drop_fields)
        drop |= {r.redcap_field for r in self.settings.subject_link_rules if r.redcap_field}
        tables = instrument_tables(questionnaires, dictionary, drop, self.shift_iso)
        ehr = [(s.label, doc) for s in subjects for doc in s.demographics.ehr_subjects]
        tables += [t for t in (labs_table(ehr), diagnosis_table(ehr)) if t is not None]
        for table in tables:
            w.write(f"phenotype/{table.name}.tsv", tsv_bytes(table.columns, table.rows))
            w.write(f"phenotype/{table.name}.json", json_bytes(table.sidecar))

    def write_dataset_files(self, has_derivatives: bool) -> None:
        w = self.writer
        generated = [{"Name": "cohortstream", "Version": __version__,
                      "Description": "BIDS export of the cohortstream views and Orthanc (dcm2niix conversion)"}]
        description: dict[str, Any] = {
            "Name": self.settings.bids_dataset_name, "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
            "GeneratedBy": generated,
        }
        if self.settings.bids_dataset_license:
            description["License"] = self.settings.bids_dataset_license
        if self.settings.bids_dataset_authors:
            description["Authors"] = list(self.settings.bids_dataset_authors)
        w.write("dataset_description.json", json_bytes(description))
        w.write("README", _README.encode("utf-8"))
        if has_derivatives:
            w.write(f"derivatives/{DERIVATIVE_NAME}/dataset_description.json", json_bytes({
                "Name": "cohortstream accepted annotations", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                "GeneratedBy": [{**generated[0], "Description": "AI segmentations accepted or corrected on review"}],
                "DatasetLinks": {"raw": "../../"},
                **({"License": description["License"]} if "License" in description else {}),
                **({"Authors": description["Authors"]} if "Authors" in description else {}),
            }))
            w.write(f"derivatives/{DERIVATIVE_NAME}/README", _DERIVATIVE_README.encode("utf-8"))

    def write_changes(self) -> None:
        """CHANGES gains an entry only when an export changed something, so re-runs stay no-ops."""
        changed = [p for p in self.writer.written if p != "CHANGES"] + self.writer.removed
        entries: list[str] = list(self.writer.cache.get("changes", []))
        if changed or not entries:
            version = f"1.0.{len(entries)}"
            entries.insert(0, f"{version} {datetime.now(UTC).date().isoformat()}\n"
                              f"  - Exported by cohortstream {__version__}: {len(changed)} files written or removed.\n")
            self.writer.cache["changes"] = entries
        self.writer.write("CHANGES", "\n".join(entries).encode("utf-8"))

    # --- run -------------------------------------------------------------------------
    async def run(self, query: CohortQuery | None, subjects_wanted: Sequence[str] | None) -> ExportReport:
        client = mongo_client(self.settings)
        self.db = mongo_database(client, self.settings)
        await self.archive.setup()
        try:
            ids = await self.subject_ids(query, subjects_wanted)
            labels: dict[str, str] = {}
            exported: list[_Subject] = []
            for done, subject_id in enumerate(ids):
                self.progress("subjects", done, len(ids))
                subject = await self.load_subject(subject_id)
                if subject.label in labels:
                    raise BidsExportError(f"subjects {labels[subject.label]} and {subject_id} got the same label; "
                                          "raise COHORTSTREAM_BIDS_PSEUDONYM_LENGTH")
                labels[subject.label] = subject_id
                studies = await self.db["studies"].find({"patient_id": {"$in": subject.patient_ids}}).to_list(None) \
                    if subject.patient_ids else []
                studies.sort(key=lambda d: (str(d.get("study_date") or ""), d["_id"]))
                for index, study in enumerate(studies, start=1):
                    subject.sessions.append((self._session_label(subject, study, index), study))
                for session, study in subject.sessions:
                    await self.export_session(subject, session, study)
                if subject.scans:
                    exported.append(subject)
                    self.report.participants.append(f"sub-{subject.label}")
                else:
                    self.report.skipped_subjects.append({"subject_id": subject_id, "reason": "no exportable MR series"})
            self.progress("tables", len(ids), len(ids))
            await self.write_tables(exported)
            self.write_dataset_files(bool(self.report.derivatives))
            self.write_changes()
            self.writer.finish()
        finally:
            await self.archive.close()
            client.close()
        self.report.files_written = list(self.writer.written)
        self.report.files_unchanged = len(self.writer.unchanged)
        self.report.files_removed = list(self.writer.removed)
        self.progress("done", len(self.report.participants), len(self.report.participants))
        return self.report

    def _session_label(self, subject: _Subject, study: dict[str, Any], index: int) -> str:
        if self.settings.bids_session_label == "date":
            day = str(study.get("study_date") or "")[:10]
            shifted = self.shift_iso(subject.subject_id, day) if re.match(r"\d{4}-\d{2}-\d{2}$", day) else ""
            if shifted and shifted != "n/a":
                label = shifted.replace("-", "")
                taken = [s for s, _ in subject.sessions]
                return label if label not in taken else f"{label}x{index}"
        return f"{index:02d}"


_README = """\
# cohortstream cohort export

This BIDS dataset was written by `cohortstream export bids` from the cohort's views
(MongoDB) and DICOM archive (Orthanc). Images were converted with dcm2niix.

- Participant labels are keyed pseudonyms; the key and the mapping stay with the
  platform. No names, patient ids, record ids or birth dates are included.
- One session per DICOM study (`ses-01`, `ses-02`, ... in study date order).
- All dates (acq_time, questionnaire dates) are shifted back per participant by a fixed
  number of years plus a keyed jitter; intervals within a participant are kept.
- `phenotype/` holds one table per REDCap instrument, the latest EHR lab values and the
  EHR diagnoses.
- `derivatives/cohortstream-annotations/` holds AI segmentations accepted or corrected
  by a reviewer, in the space of their source image.
"""

_DERIVATIVE_README = """\
# cohortstream accepted annotations

Discrete segmentations (`_dseg.nii.gz`) suggested by the platform's AI models and
accepted (or corrected) by a reviewer, one per reviewed series, on the voxel grid of the
source image in the raw dataset (`../../`). Each has a `_dseg.tsv` label table (index,
name) and a JSON sidecar naming the model and the source image.
"""


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
    only what changed."""
    if query is not None and subjects:
        raise BidsExportError("give either a cohort query or subjects, not both")
    exporter = _Exporter(settings, Path(outdir), progress)
    return await exporter.run(query, subjects)
