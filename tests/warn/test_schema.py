"""Tests of source specifications: ``LOCATION#key=value,...``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pyflow.warn.columns import normalise_header
from pyflow.warn.schema import Source


def test_source_parses_the_string_form() -> None:
    """``LOCATION#key=value,...`` sets constants, the name and the encoding."""
    source = Source.model_validate("https://x.test/a.csv#state=texas, name=tx ,encoding=cp1252")
    assert source.location == "https://x.test/a.csv"
    assert source.constants == {"state": "TX"}
    assert source.label == "tx"
    assert source.encoding == "cp1252"
    assert source.is_remote_http
    assert str(source) == "https://x.test/a.csv#state=TX,name=tx,encoding=cp1252"


def test_source_label_defaults_to_the_location() -> None:
    """Without a name, the source column shows the location as given."""
    source = Source.model_validate("data/ca.csv")
    assert source.label == "data/ca.csv"
    assert source.constants == {}
    assert not source.is_remote_http


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a.csv#stat=CA", "unknown field stat"),
        ("a.csv#state", "'state' in source 'a.csv#state' is not key=value"),
        (
            "a.csv#state=Atlantis",
            "'Atlantis' is not a US state or territory: use a code such as TX",
        ),
        ("a.csv#jobs=many", "jobs=many after '#' is not a whole number"),
        ("a.csv#encoding=nope", "unknown encoding 'nope' after '#'"),
        ("a.csv#encoding=utf-16", "convert the file to UTF-8"),
        ("#state=CA", "at least 1 character"),
    ],
)
def test_source_rejects_bad_specs(spec: str, message: str) -> None:
    """A malformed source string fails validation with a message that names the problem."""
    with pytest.raises(ValidationError, match=message):
        Source.model_validate(spec)


def test_normalise_header_ignores_case_spacing_and_underscores() -> None:
    """Overrides match a column whatever its case, spacing, underscores or byte order mark."""
    assert normalise_header("\ufeffTOTAL_LAYOFF_NUMBER ") == "total layoff number"
