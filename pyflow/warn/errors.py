"""The example's errors: each message names the source, the problem and the fix."""

from __future__ import annotations

from pyflow_kit.errors import PyflowError


class SourceError(PyflowError):
    """A source cannot be found, fetched or read."""


class FetchError(SourceError):
    """A network source failed in a way that may pass: a timeout, a dropped connection or a 5xx."""
