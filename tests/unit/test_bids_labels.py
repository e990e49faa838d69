"""Pseudonymous labels are keyed and stable; date shifts keep intervals."""

from __future__ import annotations

import re
from datetime import date, datetime

import pytest

from cohortstream.errors import ConfigurationError
from export.bids.labels import DateShifter, bids_label, pseudonym


def test_pseudonym_is_stable_keyed_and_alphanumeric() -> None:
    a = pseudonym(b"key-1", "S0123456789ABCDE")
    assert a == pseudonym(b"key-1", "S0123456789ABCDE")
    assert a != pseudonym(b"key-2", "S0123456789ABCDE")
    assert a != pseudonym(b"key-1", "S0123456789ABCDF")
    assert re.fullmatch(r"p[a-z2-7]{9}", a)
    assert len(pseudonym(b"k", "S1", length=16)) == 16
    labels = {pseudonym(b"k", f"S{n}") for n in range(5000)}
    assert len(labels) == 5000


def test_pseudonym_needs_a_key() -> None:
    with pytest.raises(ConfigurationError, match="COHORTSTREAM_BIDS_PSEUDONYM_KEY"):
        pseudonym(b"", "S1")


def test_bids_label_keeps_letters_and_digits() -> None:
    assert bids_label("resting state_2") == "restingstate2"
    with pytest.raises(ValueError, match="no letters or digits"):
        bids_label("_-_")


def test_date_shift_is_keyed_per_subject_and_keeps_intervals() -> None:
    shifter = DateShifter(b"k", 150)
    first, second = datetime(2021, 3, 4, 9, 10), datetime(2022, 3, 8, 14, 0)
    a, b = shifter.shift_datetime("S1", first), shifter.shift_datetime("S1", second)
    assert b - a == second - first and a.year <= 1872 and (a.hour, a.minute) == (9, 10)
    assert shifter.offset("S1") != shifter.offset("S2") or shifter.offset("S1") != DateShifter(b"other", 150).offset(
        "S1"
    )
    assert DateShifter(b"k", 0).shift_date("S1", date(2020, 1, 1)) == date(2020, 1, 1)
