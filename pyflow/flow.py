"""Flow assembly: the flows compose the tasks of `pyflow.tasks` and do no work themselves.

Each flow's task runner comes from the settings when this module is imported, so a deployment's
runs pick theirs from the environment of the process that runs them: set ``PYFLOW_TASK_RUNNER``
(and ``PYFLOW_DASK_ADDRESS`` or ``PYFLOW_DASK_WORKERS``) as job variables, no code edit needed.
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.futures import wait

from pyflow import etl
from pyflow.config import get_settings
from pyflow.schema import Source
from pyflow.tasks import (
    clean_up,
    merge_outputs,
    prepare_output,
    prepare_source,
    publish_outputs,
    publish_summary,
    transform_source,
    write_summary,
)


@flow(name="warn-notices", task_runner=get_settings().build_task_runner())
def warn_notices(sources: list[Source] | None = None, output: str | None = None) -> etl.Summary:
    """Consolidate WARN Act layoff notices from many sources into one clean dataset.

    HTTP(S) sources are downloaded concurrently on the task runner; files are only checked and
    split, in the flow's own process, so no worker's time goes to such small steps.

    Args:
        sources: Files or URLs to read, each `LOCATION[#key=value,...]`; default: PYFLOW_SOURCES.
        output: Folder or fsspec URL for notices.csv, rejects.csv and summary.json;
            default: PYFLOW_OUTPUT.
    """
    settings = get_settings(sources=sources, output=output)
    started_at = etl.utc_now()
    location = prepare_output(settings.require_output())
    work_dir = etl.new_work_dir(location)
    try:
        prepare = prepare_source.with_options(
            retries=settings.fetch_retries, retry_delay_seconds=settings.retry_delays
        )
        options = (work_dir, settings.fetch_timeout, settings.partition_bytes)
        downloads = {
            index: prepare.submit(index, source, *options)
            for index, source in enumerate(settings.sources)
            if source.is_remote_http
        }
        try:
            files = {
                index: prepare(index, source, *options)
                for index, source in enumerate(settings.sources)
                if index not in downloads
            }
        finally:
            wait(list(downloads.values()))
        planned = [
            files[index] if index in files else downloads[index].result()
            for index in range(len(settings.sources))
        ]
        partitions = [partition for source_partitions in planned for partition in source_partitions]
        transformed = transform_source.map(
            partitions, unmapped(settings.aliases), unmapped(work_dir)
        )
        wait(transformed)
        parts = transformed.result()
        merged = merge_outputs(parts, location, work_dir)
        summary = write_summary(settings.sources, parts, merged, started_at, work_dir)
        publish_outputs(work_dir, location)
        publish_summary(summary)
    finally:
        clean_up(work_dir)
    return summary


FLOWS = (warn_notices,)
"""Every flow of the project: what `invoke check` validates and `invoke deploy` registers."""
