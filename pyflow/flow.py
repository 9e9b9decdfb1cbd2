"""Flow assembly: the flows compose the tasks of `pyflow.tasks` and do no work themselves."""

from __future__ import annotations

from prefect import flow, unmapped

from pyflow import etl
from pyflow.config import get_settings
from pyflow.schema import Source
from pyflow.tasks import (
    clean_up,
    fetch_source,
    merge_outputs,
    prepare_output,
    publish_summary,
    transform_source,
    write_summary,
)


@flow(name="warn-notices")
def warn_notices(sources: list[Source] | None = None, output: str | None = None) -> etl.Summary:
    """Consolidate WARN Act layoff notices from many sources into one clean dataset.

    Args:
        sources: Files or URLs to read, each `LOCATION[#key=value,...]`; default: PYFLOW_SOURCES.
        output: Folder or fsspec URL for notices.csv, rejects.csv and summary.json;
            default: PYFLOW_OUTPUT.
    """
    settings = get_settings(sources=sources, output=output)
    started_at = etl.utc_now()
    location = prepare_output(settings.output)
    work_dir = etl.new_work_dir(location)
    try:
        fetch = fetch_source.with_options(
            retries=settings.fetch_retries, retry_delay_seconds=settings.retry_delays
        )
        fetched = fetch.map(settings.sources, unmapped(work_dir), unmapped(settings.fetch_timeout))
        parts = transform_source.map(
            range(len(settings.sources)),
            settings.sources,
            fetched.result(),
            unmapped(settings.aliases),
            unmapped(work_dir),
        ).result()
        merged = merge_outputs(parts, location)
        summary = write_summary(settings.sources, parts, merged, started_at, location)
        publish_summary(summary)
    finally:
        clean_up(work_dir)
    return summary


FLOWS = (warn_notices,)
"""Every flow of the project: what `invoke check` validates and `invoke deploy` registers."""
