"""Tests of source specifications: ``LOCATION#key=value,...``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pyflow.warn.columns import normalise_header
from pyflow.warn.schema import Source, redact_location


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


def test_source_shows_a_url_without_its_credentials_or_query() -> None:
    """The label and shown location drop user:password@ and ?query; fetching keeps them."""
    url = "https://user:secret@x.test:8443/warn/a.csv?X-Goog-Signature=abc-sig&X-Goog-Date=1"
    source = Source.model_validate(f"{url}#state=CA")
    assert source.location == url
    assert source.label == source.shown_location == "https://x.test:8443/warn/a.csv"
    assert Source.model_validate(f"{url}#name=ca").label == "ca"
    assert source.scrub(f"GET {url} failed; retry {url}") == (
        "GET https://x.test:8443/warn/a.csv failed; retry https://x.test:8443/warn/a.csv"
    )


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("data/what?.csv", "data/what?.csv"),
        ("/abs/path.csv", "/abs/path.csv"),
        ("file:///tmp/a.csv", "file:///tmp/a.csv"),
        ("gs://bucket/a.csv?generation=5", "gs://bucket/a.csv"),
        ("s3://key:secret@bucket/a.csv", "s3://bucket/a.csv"),
        ("http://[::1]:80/a.csv?sig=1", "http://[::1]:80/a.csv"),
        ("http://user:pw@[bad/a.csv?sig=1", "http://[bad/a.csv"),
    ],
)
def test_redact_location_keeps_paths_and_strips_url_secrets(location: str, shown: str) -> None:
    """A local path is shown as given; a URL without credentials or query string."""
    assert redact_location(location) == shown


def test_source_spec_errors_do_not_show_credentials() -> None:
    """A malformed spec of a signed URL is named without its password or signature."""
    with pytest.raises(ValidationError) as raised:
        Source.model_validate("http://u:secret@h/x.csv?sig=abc-sig#state")
    assert "'state' in source 'http://h/x.csv#state' is not key=value" in str(raised.value)
    assert "secret" not in str(raised.value) and "abc-sig" not in str(raised.value)
