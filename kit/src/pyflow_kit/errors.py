"""Errors the kit raises for bad input: each message names the problem and the fix."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PyflowError(Exception):
    """An error whose message is meant for the user, shown without a traceback."""


class SettingsError(PyflowError):
    """A setting (environment variable, .env entry or option) is missing or invalid."""


class OutputError(PyflowError):
    """The output location cannot be written."""


class DeployError(PyflowError):
    """A work pool or deployment cannot be registered."""


class LocalError(PyflowError):
    """The local server or worker cannot be started."""


class ReleaseError(PyflowError):
    """A check before a release failed."""


class NoCredentialsError(ReleaseError):
    """No Google credentials are available here."""


class ScaffoldError(PyflowError):
    """A flow cannot be scaffolded under this name."""


class ImageError(PyflowError):
    """The image cannot be named, built or pushed."""


class GcpError(PyflowError):
    """The one-time Google Cloud set-up cannot go on."""


def run_command(name: str, action: Callable[[], object], lead: str = "") -> int:
    """Run a command line's action; show its error, or an unreachable Prefect API, on one line.

    Returns:
        0, or 1 after printing ``pyflow NAME: [LEAD]message`` on standard error, no traceback.
    """
    import httpx

    try:
        action()
    except PyflowError as error:
        message = str(error)
    except httpx.HTTPError as error:
        message = (
            f"the Prefect API cannot be reached ({error}): start the server (`invoke server`), "
            "or fix PREFECT_API_URL in .env"
        )
    else:
        return 0
    sys.stderr.write(f"pyflow {name}: {lead}{message}\n")
    return 1
