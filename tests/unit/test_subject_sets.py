"""Pure parts of the ``subject_facets`` read model: the document of a subject, the facet
strings, and the cohort criteria / list filters written as conditions on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from api.subject_store import SubjectFilters
from cohortstream.cohort_query import (
    CohortQuery,
    DiagnosisCriterion,
    LabCriterion,
    QuestionnaireCriterion,
    facet_conditions,
    intersect,
)
from cohortstream.subject_sets import (
    ALL_SUBJECTS,
    DIAGNOSIS_PREFIX_MAX,
    SubjectSet,
    decode_ids,
    diagnosis_facet,
    encode_id,
    facets_of,
    lab_set,
    memberships,
    modality_facet,
    questionnaire_facet,
    questionnaires_facet,
    set_documents,
    sex_facet,
    source_facet,
    subject_facet_doc,
)
from cohortstream.subjects import subject_id_for

REDCAP_KEY = "redcap:https://redcap.example.org/|42|R1"
EHR_KEY = "ehr:mimic-iv|10001"

MEMBERS = [
    {"_id": "dicom:P1", "kind": "dicom", "value": "P1"},
    {"_id": REDCAP_KEY, "kind": "redcap", "value": "R1"},
    {"_id": EHR_KEY, "kind": "ehr", "value": "10001"},
]
PATIENTS = {
    "P1": {
        "_id": "P1",
        "modalities": ["MR", "CT"],
        "sex_normalised": "F",
        "age_years": 45,
        "study_count": 2,
        "series_count": 3,
    },
    "P2": {
        "_id": "P2",
        "modalities": ["PT"],
        "sex_normalised": "M",
        "age_years": 70,
        "study_count": 1,
        "series_count": 1,
    },
}
QUESTIONNAIRES = [
    {
        "subject_key": REDCAP_KEY,
        "instrument": "baseline",
        "event_name": "baseline_arm_1",
        "completion_status": "COMPLETE",
        "project_id": "42",
    },
    {
        "subject_key": REDCAP_KEY,
        "instrument": "moca",
        "event_name": None,
        "completion_status": "INCOMPLETE",
        "project_id": "42",
    },
    {
        "subject_key": "redcap:https://redcap.example.org/|42|R9",
        "instrument": "other",
        "event_name": None,
        "completion_status": "COMPLETE",
        "project_id": "42",
    },
]
EHR = {
    EHR_KEY: {
        "_id": EHR_KEY,
        "source": "mimic-iv",
        "sex_normalised": "F",
        "age_years": 44,
        "diagnosis_codes": ["I10", "E119"],
        "latest_labs": {
            "50912": {"code": "50912", "value": 1.4},
            "2160-0": {"code": "2160-0", "value": 3},
            "text": {"code": "text", "value": None, "value_text": "positive"},
        },
    }
}


def _doc(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "members": MEMBERS,
        "patients": PATIENTS,
        "questionnaires": QUESTIONNAIRES,
        "ehr_subjects": EHR,
    }
    args.update(changes)
    return subject_facet_doc("S1", **args)


def test_the_document_holds_the_summary_row() -> None:
    doc = _doc()
    assert {
        k: doc[k]
        for k in (
            "_id",
            "identifiers",
            "sources",
            "modalities",
            "sex",
            "age_years",
            "study_count",
            "series_count",
            "questionnaire_count",
            "has_ehr",
        )
    } == {
        "_id": "S1",
        "identifiers": sorted(m["_id"] for m in MEMBERS),
        "sources": ["dicom", "ehr", "redcap"],
        "modalities": ["CT", "MR"],
        "sex": "F",
        "age_years": 45,
        "study_count": 2,
        "series_count": 3,
        "questionnaire_count": 2,
        "has_ehr": True,
    }


def test_facets_cover_every_filter_and_criterion() -> None:
    facets = facets_of(_doc())
    assert {modality_facet("MR"), modality_facet("CT"), sex_facet("F"), questionnaires_facet(True)} <= facets
    assert {source_facet("dicom"), source_facet("redcap"), source_facet("ehr")} <= facets
    assert modality_facet("PT") not in facets and questionnaires_facet(False) not in facets
    # a questionnaire is found with or without its event and its project
    for event in (None, "baseline_arm_1"):
        for project in (None, "42"):
            assert questionnaire_facet("baseline", "COMPLETE", event, project) in facets
    assert questionnaire_facet("baseline", "COMPLETE", "followup_1_arm_1") not in facets
    assert questionnaire_facet("baseline", "INCOMPLETE") not in facets
    assert questionnaire_facet("moca", "INCOMPLETE") in facets  # no event: only "any event"
    assert questionnaire_facet("other", "COMPLETE") not in facets  # another record's
    # every prefix of every diagnosis code, per source and for any source
    for prefix in ("I", "I1", "I10", "E", "E11", "E119"):
        assert diagnosis_facet(prefix) in facets and diagnosis_facet(prefix, "mimic-iv") in facets
    assert diagnosis_facet("I10", "eicu") not in facets and diagnosis_facet("I2") not in facets


def test_labs_keep_numeric_latest_values_by_code_and_source() -> None:
    doc = _doc()
    assert doc["labs"] == [{"c": "2160-0", "s": "mimic-iv", "v": 3.0}, {"c": "50912", "s": "mimic-iv", "v": 1.4}]
    assert doc["dx_codes"] == ["mimic-iv|E119", "mimic-iv|I10"]


def test_sex_and_age_come_from_the_ehr_without_imaging_and_both_sexes_are_facets() -> None:
    no_imaging = _doc(members=MEMBERS[1:])
    assert (no_imaging["sex"], no_imaging["age_years"], no_imaging["modalities"], no_imaging["has_ehr"]) == (
        "F",
        44,
        [],
        True,
    )
    assert source_facet("dicom") not in facets_of(no_imaging)
    ehr = {EHR_KEY: {**EHR[EHR_KEY], "sex_normalised": "M"}}
    both = _doc(ehr_subjects=ehr)
    assert both["sex"] == "F" and {sex_facet("F"), sex_facet("M")} <= facets_of(both)


def test_a_lone_identifier_without_views_is_still_a_subject() -> None:
    doc = subject_facet_doc("S2", [{"_id": "dicom:P7", "kind": "dicom", "value": "P7"}], {}, [], {})
    assert doc["facets"] == sorted([ALL_SUBJECTS, source_facet("dicom"), questionnaires_facet(False)])
    assert (doc["modalities"], doc["sex"], doc["study_count"], doc["has_ehr"], doc["labs"]) == ([], None, 0, False, [])


def test_documents_are_deterministic_whatever_the_input_order() -> None:
    assert _doc() == _doc(members=list(reversed(MEMBERS)), questionnaires=list(reversed(QUESTIONNAIRES)))


def test_cohort_criteria_become_sets() -> None:
    query = CohortQuery(
        modalities=["PT"],
        questionnaires=[QuestionnaireCriterion(instrument="baseline", event_name="baseline_arm_1")],
        labs=[LabCriterion(code="2160.0", min=2.5), LabCriterion(code="50912", source="mimic-iv", max=1)],
        diagnoses=[
            DiagnosisCriterion(code_prefix="I1"),
            DiagnosisCriterion(code_prefix="A" * (DIAGNOSIS_PREFIX_MAX + 2)),
        ],
    )
    conditions = facet_conditions(query)
    assert [c.label for c in conditions] == [
        "modality PT",
        "questionnaire baseline@baseline_arm_1 COMPLETE",
        "lab 2160.0 in [2.5, inf]",
        "lab 50912 in [-inf, 1.0]",
        "diagnosis I1*",
        f"diagnosis {'A' * (DIAGNOSIS_PREFIX_MAX + 2)}*",
    ]
    assert [c.set_name for c in conditions] == [
        modality_facet("PT"),
        questionnaire_facet("baseline", "COMPLETE", "baseline_arm_1"),
        lab_set("2160_0"),
        lab_set("50912", "mimic-iv"),  # the views' safe key
        diagnosis_facet("I1"),
        diagnosis_facet("A" * DIAGNOSIS_PREFIX_MAX),
    ]
    assert (conditions[2].low, conditions[2].high, conditions[3].low, conditions[3].high) == (2.5, None, None, 1.0)
    assert conditions[5].dx_regex == r"^[^|]*\|" + "A" * (DIAGNOSIS_PREFIX_MAX + 2) and conditions[4].dx_regex is None


def test_list_filters_are_facets() -> None:
    filters = SubjectFilters(modality="MR", has_questionnaire=False, sex="O", source="ehr")
    assert filters.facets() == [modality_facet("MR"), source_facet("ehr"), sex_facet("O"), questionnaires_facet(False)]
    assert SubjectFilters().facets() == []


SIDS = [subject_id_for([f"dicom:P{n}"]) for n in range(40)]


def test_subject_ids_are_integers_in_the_same_order() -> None:
    encoded = [encode_id(s) for s in SIDS]
    assert sorted(encoded) == [encode_id(s) for s in sorted(SIDS)]
    assert decode_ids(np.array(sorted(encoded), dtype=np.uint64)) == sorted(SIDS)
    with pytest.raises(ValueError, match="not a subject id"):
        encode_id("P-0001")


def test_memberships_name_every_set_with_lab_values() -> None:
    member = memberships(_doc())
    assert member[modality_facet("MR")] == [] and ALL_SUBJECTS in member
    assert member[lab_set("50912")] == [1.4] and member[lab_set("50912", "mimic-iv")] == [1.4]
    assert lab_set("text") not in member  # no numeric value
    assert memberships(None) == {}


def test_sets_replace_touched_subjects_and_filter_values() -> None:
    a, b, c = sorted(encode_id(s) for s in SIDS[:3])
    plain = SubjectSet.empty(False).replaced((), {c: [], a: []})
    assert plain.ids.tolist() == [a, c]
    assert plain.replaced([a], {b: []}).ids.tolist() == [b, c]  # a left, b joined
    assert plain.replaced([b], {}).same_as(plain)  # touching a non-member changes nothing
    labs = SubjectSet.empty(True).replaced((), {b: [2.0, 0.5], a: [1.0]})  # b: two EHR sources
    assert labs.ids.tolist() == [a, b, b] and labs.values is not None and labs.values.tolist() == [1.0, 0.5, 2.0]
    assert labs.within(0.9, None).tolist() == [a, b] and labs.within(None, 0.6).tolist() == [b]
    assert labs.within(3, None).tolist() == [] and labs.subject_ids().tolist() == [a, b]
    assert labs.replaced([b], {}).ids.tolist() == [a]
    doc = labs.document("lab:*|50912", "0", 3)
    assert (doc["_id"], doc["n"], doc["v"]) == ("lab:*|50912#0", 2, 3)
    assert SubjectSet.from_doc(doc).same_as(labs)


def test_set_documents_are_sharded_by_the_first_hex_digit_and_concatenate_in_order() -> None:
    docs = set_documents(modality_facet("MR"), {s: [] for s in SIDS})
    assert [d["shard"] for d in docs] == sorted({s[1] for s in SIDS})
    assert sum(d["n"] for d in docs) == len(SIDS)
    whole = SubjectSet.concat([SubjectSet.from_doc(d) for d in docs], False)
    assert decode_ids(whole.ids) == sorted(SIDS)
    assert intersect([whole.ids, np.array(sorted(encode_id(s) for s in SIDS[:5]), dtype=np.uint64)]).tolist() == sorted(
        encode_id(s) for s in SIDS[:5]
    )
