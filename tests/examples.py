"""One valid, fully specified example of every event, with fixed ids and times."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from cohortstream.events import (
    AnnotationRequested,
    AnnotationReviewed,
    AnnotationSuggested,
    DeadLetter,
    DicomInstanceReceived,
    DicomSeriesCompleted,
    EhrRecord,
    Event,
    RedcapRecordChanged,
    SuggestedSegment,
)

__all__ = ["FIXED_ID", "FIXED_TIME", "example_events"]

FIXED_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
FIXED_TIME = datetime(2026, 11, 25, 12, 30, 15, 250000, tzinfo=UTC)
_COMMON = {"event_id": FIXED_ID, "emitted_at": FIXED_TIME}


def example_events() -> list[Event]:
    """Every event type once, realistic enough to read in a test failure."""
    study = "1.2.826.0.1.3680043.8.498.1"
    series = f"{study}.1"
    return [
        DicomInstanceReceived(
            **_COMMON,
            producer="dicom-scp",
            calling_aet="MODALITY1",
            called_aet="COHORTSTREAM",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=f"{series}.1",
            study_instance_uid=study,
            series_instance_uid=series,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            patient_id="SUBJ-0001",
            patient_sex="F",
            patient_age="047Y",
            study_date=date(2026, 11, 20),
            study_description="Brain MRI",
            series_description="T1 MPRAGE",
            series_number=3,
            instance_number=1,
            modality="MR",
            body_part_examined="HEAD",
            size_bytes=524_288,
            sha256="a" * 64,
            staged_uri="file:///var/lib/cohortstream/staging/aa/" + "a" * 64 + ".dcm",
            received_at=FIXED_TIME,
        ),
        DicomSeriesCompleted(
            **_COMMON,
            producer="series-completion",
            study_instance_uid=study,
            series_instance_uid=series,
            patient_id="SUBJ-0001",
            modality="MR",
            instance_count=176,
            first_received_at=FIXED_TIME,
            last_received_at=FIXED_TIME,
            revision=1,
            quiet_period_s=30.0,
        ),
        RedcapRecordChanged(
            **_COMMON,
            producer="redcap-trigger",
            redcap_url="https://redcap.example.org/",
            project_id="42",
            record_id="1001",
            event_name="baseline_arm_1",
            instrument="moca",
            repeat_instrument=None,
            repeat_instance=None,
            data_access_group="site_a",
            completion_status="COMPLETE",
            trigger="DATA_ENTRY_TRIGGER",
            values={
                "moca_total": 27,
                "moca_date": "2026-11-20",
                "consent": True,
                "race": ["2", "5"],
                "bmi": 23.4,
                "notes": None,
            },
            labels={"sex": "Female"},
        ),
        EhrRecord(
            **_COMMON,
            producer="ehr-loader",
            source="mimic-iv",
            source_file="labevents.csv",
            source_row_id="labevents:123456",
            subject_id="10000032",
            record_type="LAB",
            effective_at=FIXED_TIME,
            code_system="mimic-iv:d_labitems",
            code="50912",
            display="Creatinine",
            value_number=1.1,
            value_text=None,
            unit="mg/dL",
            attributes={"hadm_id": "22595853", "flag": ""},
        ),
        AnnotationRequested(
            **_COMMON,
            producer="series-completion",
            request_id=FIXED_ID,
            study_instance_uid=study,
            series_instance_uid=series,
            series_revision=1,
            model_name=None,
            requested_by="series-completion",
            reason="SERIES_COMPLETED",
        ),
        AnnotationSuggested(
            **_COMMON,
            producer="annotation-worker",
            annotation_id=FIXED_ID,
            request_id=FIXED_ID,
            study_instance_uid=study,
            series_instance_uid=series,
            model_name="phantom-unet",
            model_version="1.0.0",
            seg_sop_instance_uid=f"{series}.9000",
            segments=[
                SuggestedSegment(
                    segment_number=1,
                    label="lesion",
                    property_category="SCT:49755003:Morphologically Altered Structure",
                    property_type="SCT:52988006:Lesion",
                    voxel_count=1234,
                    volume_ml=1.234,
                )
            ],
            uncertainty=0.12,
            device="cpu",
            inference_s=2.5,
        ),
        AnnotationReviewed(
            **_COMMON,
            producer="review-api",
            annotation_id=FIXED_ID,
            study_instance_uid=study,
            series_instance_uid=series,
            reviewer="annotator1",
            decision="REJECTED",
            reason="misses the lesion's lower half",
            corrected_seg_sop_instance_uid=None,
            reviewed_at=FIXED_TIME,
        ),
        DeadLetter(
            **_COMMON,
            producer="mongo-views",
            source_topic="cohortstream.dicom.instance-received",
            source_partition=2,
            source_offset=41,
            source_location=None,
            key=b"1.2.3",
            value=b"\x00garbage",
            stage="DECODE",
            error_type="BadMarkerError",
            reason="message does not start with the Avro single-object marker c3 01",
            attempts=1,
        ),
    ]


def example_instance(n: int = 0) -> DicomInstanceReceived:
    """The example instance event with its own SOP Instance UID, sha256 and event id, for
    tests that publish several distinct instances."""
    template = example_events()[0]
    assert isinstance(template, DicomInstanceReceived)
    return template.model_copy(
        update={
            "event_id": uuid.UUID(int=n + 1),
            "sop_instance_uid": f"{template.series_instance_uid}.{n + 1}",
            "instance_number": n + 1,
            "sha256": f"{n:064x}",
        }
    )
