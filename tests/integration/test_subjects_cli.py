"""``cohortstream subjects`` and ``cohortstream cohort query`` against the real MongoDB-wire server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cohortstream.cli import main
from cohortstream.settings import Settings


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_link_show_and_refuse_a_conflicting_link(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    record = "redcap:https://redcap.example.org/|42|1001"
    code, out, _ = _run(["subjects", "link", record, "dicom:P-0001"], capsys)
    assert code == 0
    subject_id = out.strip()
    assert subject_id.startswith("S")
    code, out, _ = _run(["subjects", "link", "ehr:mimic-iv|10001", "dicom:P-0001"], capsys)
    assert (code, out.strip()) == (0, _run(["subjects", "link", record, "ehr:mimic-iv|10001"], capsys)[1].strip())

    code, out, _ = _run(["subjects", "show", "dicom:P-0001"], capsys)
    shown = json.loads(out)
    assert code == 0 and set(shown["identifiers"]) == {record, "dicom:P-0001", "ehr:mimic-iv|10001"}

    code, _, err = _run(["subjects", "link", record, "dicom:P-0002"], capsys)
    assert code == 1 and "refused to link" in err and "already has dicom:P-0001" in err
    code, out, _ = _run(["subjects", "conflicts"], capsys)
    assert len(json.loads(out)) == 1

    code, _, err = _run(["subjects", "show", "dicom:NOBODY"], capsys)
    assert code == 1 and "no subject has the identifier dicom:NOBODY" in err
    code, _, err = _run(["subjects", "link", "P-0001", "dicom:P-0001"], capsys)
    assert code == 1 and "must start with one of" in err


def test_cohort_query_file_in_json_out(cli_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _run(["subjects", "link", "redcap:https://r.org/|1|7", "dicom:P-7"], capsys)
    query = tmp_path / "query.json"
    query.write_text(json.dumps({}))
    code, out, _ = _run(["cohort", "query", str(query)], capsys)
    assert code == 0 and json.loads(out)["count"] == 1
    query.write_text(json.dumps({"labs": [{"code": "50912", "min": 3, "max": 1}]}))
    code, _, err = _run(["cohort", "query", str(query)], capsys)
    assert code == 1 and "labs.0" in err and "min 3.0 is above max 1.0" in err


def test_link_updates_the_read_model_and_rebuild_sets_restores_it(
    cli_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A CLI link shows in the list's sets at once; ``rebuild-sets`` rebuilds a read model
    that is missing (a database filled before it existed) to the same answers."""
    import asyncio

    from cohortstream.mongo import mongo_client, mongo_database

    _run(["subjects", "link", "redcap:https://r.org/|1|7", "dicom:P-7"], capsys)
    _run(["subjects", "link", "redcap:https://r.org/|1|8", "dicom:P-8"], capsys)
    query = tmp_path / "query.json"
    query.write_text(json.dumps({}))
    before = json.loads(_run(["cohort", "query", str(query)], capsys)[1])
    assert before["count"] == 2

    async def read_model() -> tuple[int, int]:
        client = mongo_client(cli_env)
        try:
            db = mongo_database(client, cli_env)
            facets, sets = await db["subject_facets"].count_documents({}), await db["subject_sets"].count_documents({})
            return facets, sets
        finally:
            await client.close()

    async def drop_read_model() -> None:
        client = mongo_client(cli_env)
        try:
            db = mongo_database(client, cli_env)
            await db["subject_facets"].drop()
            await db["subject_sets"].drop()
        finally:
            await client.close()

    facets, sets = asyncio.run(read_model())
    assert facets == 2 and sets > 0, "the link itself refreshed the read model"
    asyncio.run(drop_read_model())
    code, out, _ = _run(["subjects", "rebuild-sets"], capsys)
    assert code == 0 and "rebuilt for 2 subjects" in out
    assert asyncio.run(read_model()) == (facets, sets)
    assert json.loads(_run(["cohort", "query", str(query)], capsys)[1]) == before
