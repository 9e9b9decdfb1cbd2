"""The example flow's parameters: their types and defaults, and what they decide for a run.

They are parameters of the ``warn-notices`` flow, not settings: Prefect validates them and shows
them in the UI's run form, and a deployment gets its own through ``PYFLOW_DEPLOYMENT_PARAMETERS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import Field

from pyflow.warn.columns import Rules, load_rules
from pyflow.warn.schema import Source
from pyflow_kit.errors import SettingsError

SAMPLE_STATES = ("ca", "dc", "fl", "in", "mo", "ny", "pa", "tx", "wi")
"""The bundled sample: slices of the real files nine states publish, each in its own layout."""

PARTITION_BYTES = 64 * 1024 * 1024
"""Default of ``partition_bytes``: sources larger than this are split."""

FETCH_TIMEOUT = 30.0
"""Default of ``fetch_timeout``, in seconds."""

FETCH_RETRIES = 3
"""Default of ``fetch_retries``."""

FETCH_BACKOFF = 2.0
"""Default of ``fetch_backoff``, in seconds."""

Sources = Annotated[list[Source], Field(min_length=1)]
"""At least one source."""

Bytes = Annotated[int, Field(ge=0)]
"""A size in bytes; 0 is allowed."""

Seconds = Annotated[float, Field(gt=0)]
"""A duration in seconds, more than 0."""

Count = Annotated[int, Field(ge=0)]
"""A whole number, 0 or more."""

Delay = Annotated[float, Field(ge=0)]
"""A delay in seconds, 0 or more."""


def sample_sources() -> list[Source]:
    """Return the bundled sample sources, each with its state as a constant."""
    folder = resources.files("pyflow.warn") / "sample"
    return [
        Source(
            location=str(folder / f"{stem}.csv"),
            constants={"state": stem.upper()},
            name=f"sample/{stem}.csv",
        )
        for stem in SAMPLE_STATES
    ]


def load_aliases(aliases_file: Path | None) -> Rules:
    """Return the header rules, with the bundled overrides plus the ``aliases_file`` parameter's.

    Raises:
        SettingsError: If the file cannot be read or is not an alias table, naming the parameter.
    """
    try:
        return load_rules(aliases_file)
    except (OSError, ValueError) as error:
        raise SettingsError(
            f"parameter aliases_file='{aliases_file}' cannot be used: {error}. Fix the file, or "
            "pass another (--param aliases_file=PATH, or the deployment's parameters)"
        ) from None


def retry_delays(backoff: float, retries: int) -> list[float]:
    """Return the seconds to wait before each retry of a failed fetch: backoff, twice, 4 times..."""
    from prefect.tasks import exponential_backoff

    return [float(delay) for delay in exponential_backoff(backoff)(retries)]


@dataclass(frozen=True)
class RunOptions:
    """What the example's parameters decide for one run, defaults filled in."""

    sources: list[Source]
    rules: Rules
    strict: bool = False
    allow_empty: bool = False
    partition_bytes: int = PARTITION_BYTES
    fetch_timeout: float = FETCH_TIMEOUT
    fetch_retries: int = FETCH_RETRIES
    fetch_backoff: float = FETCH_BACKOFF

    @property
    def retry_delays(self) -> list[float]:
        """Seconds to wait before each retry of a failed fetch."""
        return retry_delays(self.fetch_backoff, self.fetch_retries)


def run_options(
    sources: list[Source] | None = None,
    strict: bool = False,
    partition_bytes: int = PARTITION_BYTES,
    aliases_file: Path | None = None,
    fetch_timeout: float = FETCH_TIMEOUT,
    fetch_retries: int = FETCH_RETRIES,
    fetch_backoff: float = FETCH_BACKOFF,
    allow_empty: bool = False,
) -> RunOptions:
    """Turn the flow's parameters into a run's options: the sample if no sources, rules loaded.

    Raises:
        SettingsError: If the aliases file cannot be used.
    """
    return RunOptions(
        sources=list(sources) if sources else sample_sources(),
        strict=strict,
        allow_empty=allow_empty,
        partition_bytes=partition_bytes,
        rules=load_aliases(aliases_file),
        fetch_timeout=fetch_timeout,
        fetch_retries=fetch_retries,
        fetch_backoff=fetch_backoff,
    )
