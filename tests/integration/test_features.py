"""Feature vectors kept by the stream on the real stack (Kafka, the MongoDB-wire server).

A generated cohort arrives as events: a MIMIC-IV-shaped EHR extract through the EHR
loader, REDCap records, DICOM instances and brain-extraction suggestions with a review.
The worker's features lane must keep one document per subject whose values equal an
independent pandas computation over the generated files; a new event must show within
the configured delay; `features rebuild` by replay (of the lane's snapshot topic, and of
every source event) must give the same documents, twice, and follow a changed spec; the Parquet export must carry the same values and a data
dictionary.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cohortstream.admin import ensure_topics
from cohortstream.cli import main
from cohortstream.events import (
    AnnotationReviewed,
    AnnotationSuggested,
    EhrRecord,
    EhrRecordType,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
    ReviewDecision,
    SuggestedSegment,
)
from cohortstream.features.spec import default_spec, load_spec
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings, SubjectLinkRule, settings_environment
from cohortstream.synthetic_ehr import write_mimic
from consumers.features.rebuild import rebuild_features
from producers.ehr.loader import publish_extract
from streams.agents import register_all
from streams.agents.features import AGENTS
from streams.app import create_app
from tests.examples import example_events
from tests.feature_expectations import compare_documents, expected_mimic_features
from tests.polling import eventually

SUBJECTS = 24
REDCAP_URL = "https://redcap.example.org/"


def _mimic(n: int) -> int:
    return 10_000_000 + n


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    # The packaged spec plus the baseline questionnaire.
    spec = default_spec().model_dump(mode="json")
    spec["questionnaires"] = [{"instrument": "baseline", "event_name": "baseline_arm_1"}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return stack_settings.model_copy(
        update={
            "features_spec_file": str(tmp_path / "spec.json"),
            "features_delay_s": 1.0,
            "features_link_grace_s": 2.0,
            "subject_link_rules": [
                SubjectLinkRule(ehr_source="mimic-iv", target="dicom_patient_id"),
                SubjectLinkRule(redcap_field="ehr_id", target="ehr_subject_id", ehr_source="mimic-iv"),
            ],
        }
    )


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Any]:
    await ensure_topics(settings)
    client = mongo_client(settings)
    yield mongo_database(client, settings)
    await client.drop_database(settings.mongo_database)
    await client.close()


def _redcap(n: int) -> RedcapRecordChanged:
    return RedcapRecordChanged(
        producer="test",
        redcap_url=REDCAP_URL,
        project_id="42",
        record_id=f"R{n:03d}",
        event_name="baseline_arm_1",
        instrument="baseline",
        completion_status=RedcapCompletionStatus.COMPLETE,
        trigger=RedcapTrigger.FULL_SYNC,
        values={"ehr_id": str(_mimic(n)), "moca": n % 30, "smoker": bool(n % 2), "arm": str(1 + n % 2), "note": "x"},
        labels={"smoker": "Yes" if n % 2 else "No", "arm": "A" if n % 2 == 0 else "B"},
    )


async def _publish_other_modalities(settings: Settings) -> dict[str, float]:
    """REDCap records for every subject, one MR series for even subjects, a brain volume
    suggestion for every fourth (accepted for every eighth). Returns PatientID → volume."""
    template = example_events()[0]
    volumes: dict[str, float] = {}
    async with EventPublisher(settings) as publisher:
        for n in range(SUBJECTS):
            await publisher.publish(_redcap(n), f"42/R{n:03d}")
            if n % 2:
                continue
            patient = str(_mimic(n))
            study = f"1.2.826.0.1.3680043.8.498.{n + 1}"
            series = f"{study}.1"
            for i in range(3):
                instance = template.model_copy(
                    update={
                        "patient_id": patient,
                        "study_instance_uid": study,
                        "series_instance_uid": series,
                        "sop_instance_uid": f"{series}.{i}",
                        "modality": "MR",
                    }
                )
                await publisher.publish(instance, series)
            if n % 4:
                continue
            volumes[patient] = 1000.0 + n
            suggestion = AnnotationSuggested(
                producer="test",
                study_instance_uid=study,
                series_instance_uid=series,
                model_name="deepbet-brain",
                model_version="1.0.2",
                seg_sop_instance_uid=f"{series}.99",
                segments=[SuggestedSegment(segment_number=1, label="Brain", voxel_count=1, volume_ml=volumes[patient])],
                device="cpu",
                inference_s=1.0,
            )
            await publisher.publish(suggestion, series)
            if n % 8 == 0:
                review = AnnotationReviewed(
                    producer="test",
                    annotation_id=suggestion.annotation_id,
                    study_instance_uid=study,
                    series_instance_uid=series,
                    reviewer="rater",
                    decision=ReviewDecision.ACCEPTED,
                    reviewed_at=datetime.now(UTC),
                )
                await publisher.publish(review, series)
    return volumes


async def _documents(db: Any) -> list[dict[str, Any]]:
    return await db.features.find({}).sort("_id", 1).to_list()


async def _registry(db: Any) -> dict[str, str]:
    return {d["_id"]: d["subject_id"] for d in await db.subject_identifiers.find({}).to_list()}


async def _all_built(db: Any, volumes: dict[str, float]) -> bool:
    """One document per subject holding every block its modalities give, imaging measured."""
    docs = await _documents(db)
    if len(docs) != SUBJECTS:
        return False
    for doc in docs:
        ids = doc["identifiers"]
        if len(ids) != (3 if any(i.startswith("dicom:") for i in ids) else 2) or "questionnaires" not in doc["blocks"]:
            return False
        patient = next((i.removeprefix("dicom:") for i in ids if i.startswith("dicom:")), None)
        if patient in volumes and doc["features"].get("img_brain_volume_ml") is None:
            return False
        if (
            patient is not None
            and int(patient) % 8 == 0
            and doc["features"].get("img_brain_volume_status") != "accepted"
        ):
            return False
    return True


def _worker(settings: Settings) -> Any:
    """The features lane and the view agents that register and link subjects, in one app.

    Not the DICOM archive: the instances published here are not in Orthanc, and its
    retries before dead-lettering would hold the app's shared fetcher (see lanes.py)."""
    app = create_app(settings)
    agents = [*AGENTS, "ehr-views", "redcap-views", "dicom-views", "dead-letter-archive"]
    register_all(app, settings, agents)
    return app


def _stable(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return json.loads(json.dumps(docs, default=str, sort_keys=True))


async def test_stream_keeps_features_equal_to_pandas_and_rebuild_replays_them(
    settings: Settings,
    database: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = load_spec(settings.features_spec_file)
    assert spec.labs is not None and spec.labs.codes is not None and spec.diagnoses is not None
    extract = write_mimic(
        tmp_path / "ehr", seed=17, subject_ids=[_mimic(n) for n in range(SUBJECTS)], labs_per_admission=(5, 15)
    )
    app = _worker(settings)
    await app.start()
    try:
        await publish_extract(settings, extract.root)
        volumes = await _publish_other_modalities(settings)
        await eventually(lambda: _all_built(database, volumes), timeout_s=120, what="every subject's features built")

        # Values: the EHR block against pandas over the generated CSV files.
        registry = await _registry(database)
        expected = expected_mimic_features(extract.root, spec.labs.codes, spec.diagnoses.prefixes)
        key_of = {m: registry[f"ehr:mimic-iv|{m}"] for m in expected}
        streamed = await _documents(database)
        compared, problems = compare_documents(streamed, expected, key_of)
        assert not problems, problems[:10]
        assert compared > SUBJECTS * 40
        # The other blocks, from what was published.
        for doc in streamed:
            f = doc["features"]
            n = next(int(i.split("|")[-1][1:]) for i in doc["identifiers"] if i.startswith("redcap:"))
            assert doc["spec"]["sha256"] == spec.sha256 and doc["as_of"] is not None
            assert f["q_baseline_baseline_arm_1_moca"] == float(n % 30)
            assert f["q_baseline_baseline_arm_1_smoker"] == n % 2 and f["q_baseline_baseline_arm_1_arm"] == str(
                1 + n % 2
            )
            assert "q_baseline_baseline_arm_1_note" not in f and "q_baseline_baseline_arm_1_ehr_id" not in f
            if n % 2 == 0:
                assert (f["img_series_count"], f["img_mr_series_count"], f["img_ct_series_count"]) == (1, 1, 0)
            else:
                assert "imaging" not in doc["blocks"] and "img_series_count" not in f
            if n % 4 == 0:
                assert f["img_brain_volume_ml"] == 1000.0 + n
                assert f["img_brain_volume_status"] == ("accepted" if n % 8 == 0 else "suggested")

        # A new lab row shows within the delay (plus the time to consume and write it).
        target = min(expected)
        doc_id = key_of[target]
        before = (await database.features.find_one({"_id": doc_id}))["features"]["lab_50912_count"]
        row = EhrRecord(
            producer="test",
            source="mimic-iv",
            source_file="hosp/labevents.csv",
            source_row_id="999999999",
            subject_id=target,
            record_type=EhrRecordType.LAB,
            effective_at=datetime(2230, 1, 1, tzinfo=UTC),
            code="50912",
            value_number=9.5,
            unit="mg/dL",
        )
        async with EventPublisher(settings) as publisher:
            await publisher.publish(row, f"mimic-iv/{target}")
            sent = time.monotonic()

        async def updated() -> bool:
            doc = await database.features.find_one({"_id": doc_id})
            return bool(doc["features"]["lab_50912_count"] == before + 1 and doc["features"]["lab_50912_last"] == 9.5)

        await eventually(updated, timeout_s=30, what="the new lab row in the subject's features")
        delay = time.monotonic() - sent
        assert delay < settings.features_delay_s + 4.0, f"updated after {delay:.1f} s"
        await eventually(lambda: _features_settled(database), timeout_s=30, what="no input document left pending")
        streamed = _stable(await _documents(database))
    finally:
        await app.stop()

    # Rebuild by replay of the lane's snapshot topic (the default): the same documents as
    # the stream, and twice the same.
    first = await rebuild_features(settings)
    assert first.source == "snapshot" and first.notes == [], first.notes
    assert first.subjects == SUBJECTS and first.undecodable == 0
    assert first.input_documents == first.view_store_inputs and first.pending_inputs == 0
    rebuilt = _stable(await _documents(database))
    assert rebuilt == streamed
    await rebuild_features(settings)
    assert _stable(await _documents(database)) == rebuilt
    # By replay of every source event instead: identical documents.
    from_events = await rebuild_features(settings, source="events")
    assert from_events.source == "events" and from_events.subjects == SUBJECTS and from_events.undecodable == 0
    assert from_events.events > first.events and _stable(await _documents(database)) == rebuilt
    # From the lane's folded inputs instead of the log: the same documents.
    from_inputs = await rebuild_features(settings, from_inputs=True)
    assert from_inputs.subjects == SUBJECTS and _stable(await _documents(database)) == rebuilt

    # A changed spec: the rebuild recomputes everything with it.
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        "name: changed\nversion: 2\nlabs:\n  most_frequent: 2\n  statistics: [count, mean]\n"
        "diagnoses:\n  prefixes: [I50]\n"
    )
    new_settings = settings.model_copy(update={"features_spec_file": str(changed)})
    # By events first, then by the snapshot (the default): every row of every code is in
    # the snapshot, so the changed spec gives identical documents both ways.
    await rebuild_features(new_settings, source="events")
    by_events = _stable(await _documents(database))
    report = await rebuild_features(new_settings)
    assert report.source == "snapshot"
    assert _stable(await _documents(database)) == by_events
    docs = await _documents(database)
    assert {d["spec"]["version"] for d in docs} == {2} and report.spec_sha256 == docs[0]["spec"]["sha256"]
    assert all(not any(k.startswith(("img_", "q_", "lab_50912_first")) for k in d["features"]) for d in docs)
    codes = [k.removeprefix("lab_").removesuffix("_count") for k in docs[0]["features"] if k.endswith("_count")]
    assert len(codes) == 2
    expected = expected_mimic_features(extract.root, codes, ["I50"])
    for want in expected.values():
        for key in [k for k in want if k.startswith("lab_") and not k.endswith(("_count", "_mean"))]:
            del want[key]
    # The row published above is not in the generated files.
    added = expected.pop(target)
    doc_of_target = next(d for d in docs if d["_id"] == key_of[target])
    for code in codes:
        assert doc_of_target["features"][f"lab_{code}_count"] == added[f"lab_{code}_count"] + (code == "50912")
    compared, problems = compare_documents(docs, expected, key_of)
    assert not problems, problems[:10]

    # Export: Parquet with the data dictionary, the cohort query narrows the rows.
    await rebuild_features(settings)
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    # The command says which source it replayed.
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["features", "rebuild"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["source"] == "snapshot" and "from the features lane's snapshot topic" in err
    assert await asyncio.to_thread(main, ["features", "rebuild", "--from-events"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["source"] == "events" and "from the source events" in err
    assert _stable(await _documents(database)) == rebuilt
    query = tmp_path / "mr.json"
    query.write_text(json.dumps({"modalities": ["MR"]}))
    out = tmp_path / "out" / "cohort.parquet"
    assert await asyncio.to_thread(main, ["features", "export", str(out), "--cohort", str(query)]) == 0
    import pandas as pd

    frame = pd.read_parquet(out)
    assert len(frame) == SUBJECTS // 2
    dictionary = json.loads((tmp_path / "out" / "cohort.dictionary.json").read_text())
    columns = {c["name"]: c for c in dictionary["columns"]}
    assert list(frame.columns) == [c["name"] for c in dictionary["columns"]]
    assert columns["lab_50912_mean"]["unit"] == "mg/dL" and columns["lab_50912_mean"]["statistic"] == "mean"
    assert columns["img_brain_volume_ml"]["unit"] == "mL" and columns["age"]["source"].startswith("EHR")
    by_id = {d["_id"]: d for d in await _documents(database)}
    for row in frame.itertuples(index=False):
        doc = by_id[row.subject_id]["features"]
        assert row.lab_50912_count == doc["lab_50912_count"] and row.sex == doc["sex"]
        assert (pd.isna(row.lab_50912_std) and doc["lab_50912_std"] is None) or row.lab_50912_std == pytest.approx(
            doc["lab_50912_std"]
        )


async def _features_settled(db: Any) -> bool:
    return await db.feature_inputs.count_documents({"pending": True}) == 0


async def test_rebuild_writes_insert_new_documents_and_replace_ones_written_meanwhile(
    settings: Settings, database: Any
) -> None:
    """The rebuild's writer inserts documents whose id was not stored when it listed them,
    replaces the others, replaces one that appeared since (a duplicate insert), and
    removes the documents of subjects that are gone."""
    from consumers.features.rebuild import RebuildReport, _Writer
    from consumers.mongo_sink import MongoSink

    await database.features.insert_many([{"_id": "old", "v": 0}, {"_id": "kept", "v": 0}])
    sink = MongoSink(settings)
    await sink.setup()
    try:
        writer = _Writer(sink)
        await writer._existing_ids()  # listed: old, kept
        await database.features.insert_one({"_id": "raced", "v": 0})  # the lane wrote it since
        documents = [{"_id": "kept", "v": 1}, {"_id": "new", "v": 1}, {"_id": "raced", "v": 1}]
        await writer.start(documents)
        report = RebuildReport()
        await writer.finish(documents, report)
    finally:
        await sink.close()
    assert await _documents(database) == sorted(documents, key=lambda d: d["_id"])
    assert report.removed == 1
