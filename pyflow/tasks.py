"""Prefect tasks: one ETL step each, wrapping the plain functions of `pyflow.etl`.

The wrappers add what Prefect is for (retries, timeouts, logging, the UI artifact); the work
itself stays in `pyflow.etl`, where tests call it directly.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from pyflow import etl
from pyflow.errors import FetchError
from pyflow.schema import Aliases, Source

SUMMARY_ARTIFACT_KEY = "warn-notices-summary"
"""Stable key of the run summary artifact, so the UI shows its history."""


def is_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Retry only failures that may pass (network errors, 5xx), not a missing file or a 404."""
    return isinstance(state.data, FetchError)


@task(name="prepare-output", cache_policy=NO_CACHE)
def prepare_output(output: str) -> str:
    """Create the output location and check that it can be written; return its canonical form."""
    location = etl.prepare_output(output)
    get_run_logger().info("Writing to %s", location)
    return location


@task(
    name="prepare-source",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 4, 8],
    retry_condition_fn=is_transient,
)
def prepare_source(
    source_index: int, source: Source, work_dir: str, timeout: float, partition_bytes: int
) -> list[etl.Partition]:
    """Make a source readable (download it, or check it exists) and split it into partitions."""
    location = etl.fetch_source(source, work_dir, timeout)
    if location != source.location:
        get_run_logger().info("Fetched %s", source.location)
    partitions = etl.plan_partitions(source_index, source, location, partition_bytes)
    if len(partitions) > 1:
        get_run_logger().info("Split %s into %s partitions", source.label, len(partitions))
    return partitions


@task(name="transform-source", cache_policy=NO_CACHE)
def transform_source(partition: etl.Partition, aliases: Aliases, work_dir: str) -> etl.PartResult:
    """Normalise one partition's rows into sorted run files of notices and rejects."""
    part = etl.transform_source(partition, aliases, work_dir)
    get_run_logger().info(
        "Read %s rows from %s: %s valid, %s rejected",
        f"{part.rows_in:,}",
        partition.name,
        f"{part.rows_in - part.rows_rejected:,}",
        f"{part.rows_rejected:,}",
    )
    return part


@task(name="merge-outputs", cache_policy=NO_CACHE)
def merge_outputs(parts: list[etl.PartResult], output: str, work_dir: str) -> etl.MergeResult:
    """Merge every source's rows into staged notices.csv and rejects.csv, dropping duplicates."""
    merged = etl.merge_outputs(parts, output, work_dir)
    get_run_logger().info(
        "Merged %s notices (%s duplicates dropped)",
        f"{merged.rows_out:,}",
        f"{merged.rows_duplicate:,}",
    )
    return merged


@task(name="write-summary", cache_policy=NO_CACHE)
def write_summary(
    sources: list[Source],
    parts: list[etl.PartResult],
    merged: etl.MergeResult,
    started_at: str,
    work_dir: str,
) -> etl.Summary:
    """Add up the run's counts, check that they balance, and stage summary.json."""
    summary = etl.summarise(sources, parts, merged, started_at)
    etl.write_summary(summary, work_dir)
    return summary


@task(name="publish-outputs", cache_policy=NO_CACHE)
def publish_outputs(work_dir: str, output: str) -> list[str]:
    """Move notices.csv, rejects.csv and summary.json into the output location together."""
    published = etl.publish_outputs(work_dir, output)
    get_run_logger().info("Wrote %s", ", ".join(published))
    return published


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(summary: etl.Summary) -> None:
    """Show the run's summary in the Prefect UI as a markdown artifact with a stable key."""
    create_markdown_artifact(
        key=SUMMARY_ARTIFACT_KEY,
        markdown=summary_markdown(summary),
        description="Rows read, written, rejected and dropped as duplicates by this run.",
    )


def summary_markdown(summary: etl.Summary) -> str:
    """Render a summary as a markdown table."""
    rows = [
        ("Sources", f"{len(summary.sources):,}"),
        ("Rows read", f"{summary.rows_in:,}"),
        ("Notices written", f"{summary.rows_out:,}"),
        ("Rows rejected", f"{summary.rows_rejected:,}"),
        ("Duplicates dropped", f"{summary.rows_duplicate:,}"),
        ("Started", summary.started_at),
        ("Finished", summary.finished_at),
        ("Notices", f"`{summary.notices}`"),
        ("Rejects", f"`{summary.rejects}`"),
    ]
    lines = ["# WARN notices", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines) + "\n"


@task(name="clean-up", cache_policy=NO_CACHE)
def clean_up(work_dir: str) -> None:
    """Delete the run's intermediate files."""
    etl.remove_work_dir(work_dir)
