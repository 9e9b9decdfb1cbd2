"""What ``python -m pyflow`` checks for the example before it starts Prefect: fail fast."""

from __future__ import annotations

from typing import Any

from pyflow.warn import etl
from pyflow.warn.errors import SourceError
from pyflow.warn.parameters import load_aliases, sample_sources


def check_before_run(parameters: dict[str, Any]) -> None:
    """Fail fast on an unwritable output, a bad alias file, or missing local sources.

    A missing source fails the run here in strict mode, or when no source at all could be read;
    otherwise the run reads the others and reports it with them.

    Args:
        parameters: The flow's validated parameters, defaults filled in.

    Raises:
        PyflowError: Naming the output, file or source and the fix.
    """
    if parameters.get("output"):
        etl.prepare_output(parameters["output"])
    load_aliases(parameters.get("aliases_file"))
    sources = parameters.get("sources") or sample_sources()
    missing: list[SourceError] = []
    for source in sources:
        if source.is_remote_http:
            continue
        try:
            etl.check_source_exists(source)
        except SourceError as error:
            if parameters.get("strict"):
                raise
            missing.append(error)
    if missing and len(missing) == len(sources):
        raise SourceError("; ".join(str(error) for error in missing))
