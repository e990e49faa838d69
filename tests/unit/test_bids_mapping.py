"""Series → BIDS mapping rules: defaults, first match wins, entities, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.bids.errors import MappingRuleError
from export.bids.mapping import (
    DEFAULT_RULES,
    MappingRule,
    SeriesMapping,
    Unmapped,
    load_rules,
    map_series,
)


def _mr(description: str, image_type: str = "ORIGINAL\\PRIMARY\\M\\NONE", protocol: str = "") -> dict[str, str]:
    return {"Modality": "MR", "SeriesDescription": description, "ProtocolName": protocol, "ImageType": image_type}


@pytest.mark.parametrize(
    ("description", "datatype", "suffix", "entities"),
    [
        ("T1w", "anat", "T1w", {}),
        ("t1_mprage_sag_p2", "anat", "T1w", {}),
        ("MPRAGE", "anat", "T1w", {}),
        ("T2w", "anat", "T2w", {}),
        ("t2_tse_tra", "anat", "T2w", {}),
        ("FLAIR", "anat", "FLAIR", {}),
        ("t2_flair_sag", "anat", "FLAIR", {}),
        ("T2* GRE", "anat", "T2starw", {}),
        ("task-nback bold", "func", "bold", {"task": "nback"}),
        ("rest fMRI", "func", "bold", {"task": "rest"}),
    ],
)
def test_default_rules_map_common_descriptions(
    description: str, datatype: str, suffix: str, entities: dict[str, str]
) -> None:
    result = map_series(_mr(description), DEFAULT_RULES)
    assert isinstance(result, SeriesMapping)
    assert (result.datatype, result.suffix, result.entities) == (datatype, suffix, entities)


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        (_mr("bold"), "task"),
        (_mr("localizer"), "localizer"),
        (_mr("DTI 30dir"), "no mapping rule"),
        (_mr("T1 post gad"), "no mapping rule"),
        (_mr("T1w", image_type="DERIVED\\SECONDARY\\MPR"), "no mapping rule"),
        ({"Modality": "CT", "SeriesDescription": "T1w"}, "CT is not part of BIDS"),
        ({"Modality": "PT", "SeriesDescription": "brain"}, "not supported"),
        ({"Modality": "SEG", "SeriesDescription": "T1w"}, "not an image"),
    ],
)
def test_unmapped_series_are_refused_with_a_reason(attributes: dict[str, str], reason: str) -> None:
    result = map_series(attributes, DEFAULT_RULES)
    assert isinstance(result, Unmapped) and reason in result.reason


def test_first_matching_rule_wins_and_named_groups_fill_entities() -> None:
    rules = load_rules(
        [
            {"match": {"ProtocolName": r"(?i)mp2rage_(?P<acq>inv\d)"}, "datatype": "anat", "suffix": "T1w"},
            {"match": {"SeriesDescription": "(?i)t1"}, "datatype": "anat", "suffix": "T2w"},
            {
                "match": {"SeriesDescription": "(?i)movie"},
                "datatype": "func",
                "suffix": "bold",
                "task": "movie watching",
            },
        ]
    )
    first = map_series(_mr("T1 anything", protocol="MP2RAGE_INV1"), rules)
    assert isinstance(first, SeriesMapping) and first.entities == {"acq": "INV1"} and first.rule_index == 0
    second = map_series(_mr("T1 anything"), rules)
    assert isinstance(second, SeriesMapping) and second.suffix == "T2w"
    movie = map_series(_mr("movie run"), rules)
    assert isinstance(movie, SeriesMapping) and movie.entities == {"task": "moviewatching"}


def test_rules_file_wins_and_bad_rules_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"match": {"SeriesDescription": "x"}, "datatype": "anat", "suffix": "FLAIR"}]))
    assert (
        load_rules([{"match": {"SeriesDescription": "y"}, "datatype": "anat", "suffix": "T1w"}], path)[0].suffix
        == "FLAIR"
    )
    assert load_rules() == DEFAULT_RULES
    with pytest.raises(MappingRuleError, match=r"rule 0 .*suffix 'T1w' is not one of"):
        load_rules([{"match": {"SeriesDescription": "x"}, "datatype": "func", "suffix": "T1w"}])
    with pytest.raises(MappingRuleError, match="StationName"):
        load_rules([{"match": {"StationName": "x"}, "datatype": "anat", "suffix": "T1w"}])
    with pytest.raises(MappingRuleError, match="does not compile"):
        load_rules([{"match": {"SeriesDescription": "("}, "datatype": "anat", "suffix": "T1w"}])
    with pytest.raises(MappingRuleError, match=str(tmp_path / "missing.json")):
        load_rules(rules_file=tmp_path / "missing.json")
    with pytest.raises(MappingRuleError, match="datatype"):
        load_rules([{"match": {"Modality": "MR"}, "datatype": "dwi", "suffix": "dwi"}])
    assert isinstance(MappingRule(match={"Modality": "MR"}, datatype="func", suffix="sbref"), MappingRule)


def test_cli_parses_export_bids_and_reports_a_bad_cohort_file(tmp_path: Path) -> None:
    from cohortstream.cli import _parser
    from cohortstream.cli_export import _query
    from cohortstream.cli_subjects import CohortQueryFileError

    args = _parser().parse_args(["export", "bids", str(tmp_path), "--subjects", "S1", "dicom:P1"])
    assert args.outdir == str(tmp_path) and args.subjects == ["S1", "dicom:P1"] and args.cohort is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", "bids", "x", "--subjects", "S1", "--cohort", "q.json"])
    bad = tmp_path / "q.json"
    bad.write_text('{"modalities": ["MR"], "colour": 1}')
    with pytest.raises(CohortQueryFileError, match="colour"):
        _query(str(bad))
    bad.write_text('{"modalities": ["MR"]}')
    assert _query(str(bad)).modalities == ["MR"]
