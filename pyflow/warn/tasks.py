"""The example's Prefect tasks: one ETL step each, wrapping the functions of `pyflow.warn.etl`.

The wrappers add what Prefect is for (retries, timeouts, logging, the UI artifact); the work
itself stays in `pyflow.warn.etl`, where tests call it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.assets import materialize
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.futures import PrefectFuture

from pyflow.warn import etl
from pyflow.warn.alerts import CHANGED_LABEL, PUBLISHED_EVENT
from pyflow.warn.columns import Rules
from pyflow.warn.errors import FetchError
from pyflow.warn.schema import CHANGES_FILE, INTEGRATED_FILE, NOTICES_FILE, Source
from pyflow_kit import alerts, publish, reuse
from pyflow_kit.bootstrap import redact_url
from pyflow_kit.errors import OutputError

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
    name="fetch-source",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 4, 8],
    retry_condition_fn=is_transient,
)
def fetch_source(source: Source, work_dir: str, timeout: float) -> str:
    """Download an HTTP(S) source into the run's folder; return where it was saved."""
    location = etl.fetch_source(source, work_dir, timeout)
    get_run_logger().info("Fetched %s", source.shown_location)
    return location


@task(name="plan-sources", cache_key_fn=reuse.by_key)
def plan_sources(
    sources: list[Source],
    locations: dict[int, str],
    errors: dict[int, str],
    rules: Rules,
    partition_bytes: int,
    reuse_key: str = "",
) -> list[etl.SourcePlan]:
    """Read each source's header and first rows, map its columns and cut it into record ranges.

    The plans are reused from an earlier run with the same ``reuse_key`` (`etl.plan_key`: every
    source's bytes, the rules, the code), from the output's result storage the flow gives it
    (`pyflow_kit.reuse.options`); with none, they are made each time.
    """
    plans = etl.plan_sources(sources, locations, errors, rules, partition_bytes)
    logger = get_run_logger()
    for plan in plans:
        if plan.error:
            logger.warning("%s", plan.error)
    ranges = sum(len(plan.ranges) for plan in plans if not plan.error)
    logger.info(
        "Planned %s sources in %s ranges; each one's column mapping is in summary.json",
        len(plans),
        ranges,
    )
    return plans


@task(name="transform-source", cache_key_fn=reuse.by_key)
def transform_batch(
    batch: list[etl.Partition], work_dir: str, stack_bytes: int, run: str, reuse_key: str
) -> list[etl.PartResult]:
    """Normalise a batch of one source's partitions into part files of notices and rejects.

    Its result is reused by a later run whose batch has the same ``reuse_key`` (`etl.batch_key`:
    the source's bytes, mapping and ranges, and the code's version): the flow gives it the
    output's result storage (`pyflow_kit.reuse.options`) and a folder of the key's for its
    part files, which the later run reads in place.
    """
    try:  # the part files go to the output's cache, so a full disk is the output's
        parts = etl.transform_batch(batch, work_dir, stack_bytes, run, publish.OUTPUT_FIX)
    except OutputError:
        publish.remove(work_dir)  # half of them: a later run writes them again
        raise
    logger = get_run_logger()
    for part in parts:
        if part.error:
            logger.warning("%s", part.error)
    names = sorted({partition.plan.label for partition in batch})
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    logger.info(
        "Read %s rows from %s: %s kept, %s rejected",
        f"{sum(part.rows_in for part in parts):,}",
        shown,
        f"{sum(part.rows_kept for part in parts):,}",
        f"{sum(part.rows_rejected for part in parts):,}",
    )
    return parts


@task(name="check-row-counts", cache_policy=NO_CACHE)
def check_row_counts(
    plans: list[etl.SourcePlan], parts: list[etl.PartResult], output: str, allow_empty: bool
) -> list[etl.SourcePlan]:
    """Fail each source that gave no rows where the published run read rows from it."""
    checked = etl.fail_emptied(plans, parts, output, allow_empty)
    logger = get_run_logger()
    for before, after in zip(plans, checked, strict=True):
        if after.error and not before.error:
            logger.warning("%s", after.error)
    return checked


@task(name="merge-notices", cache_policy=NO_CACHE)
def merge_bucket(
    index: int,
    bounds: tuple[str | None, str | None],
    files: list[tuple[str, int]],
    labels: dict[int, str],
    work_dir: str,
) -> etl.BucketResult:
    """Merge one key range of every part into a sorted chunk of notices, dropping duplicates."""
    return etl.merge_bucket(index, bounds, files, labels, work_dir)


@task(name="stage-outputs", cache_policy=NO_CACHE)
def stage_outputs(
    plans: list[etl.SourcePlan],
    parts: list[etl.PartResult],
    merges: Sequence[PrefectFuture[etl.BucketResult]],
    run_folder: str,
    started_at: str,
) -> etl.Summary:
    """Write rejects.csv while the merges run, then notices.csv; add up and check the counts.

    ``merges`` are the merge tasks' futures, in bucket order, passed quoted (`prefect.utilities.
    annotations.quote`) so the task starts before they finish and writes the rejects meanwhile.
    notices.csv waits for every merge: copying each chunk in as its merge finished slowed the
    merges still running more than it saved (they share the disk's write-back), measured.
    """
    usable = etl.usable_parts(parts)
    labels = {plan.index: plan.label for plan in plans}
    etl.write_rejects(usable, labels, run_folder)
    buckets = etl.write_notices([merge.result() for merge in merges], run_folder)
    summary = etl.summarise(plans, parts, buckets, run_folder, started_at)
    get_run_logger().info(
        "Merged %s notices (%s rejected, %s duplicates dropped)",
        f"{summary.rows_out:,}",
        f"{summary.rows_rejected:,}",
        f"{summary.rows_duplicate:,}",
    )
    return summary


@task(name="find-changes", cache_policy=NO_CACHE)
def find_changes(summary: etl.Summary, output: str, run_folder: str) -> etl.Summary:
    """Write changes.csv and integrated.csv against the published run, then summary.json."""
    summary = etl.with_changes(summary, output, run_folder)
    changes = summary.changes
    if changes["compared_with"]:
        get_run_logger().info(
            "Since run %s: %s added, %s amended, %s removed",
            changes["compared_with"],
            f"{changes['added']:,}",
            f"{changes['amended']:,}",
            f"{changes['removed']:,}",
        )
    else:
        get_run_logger().info("No changes listed: %s", changes["reason"])
    return summary


ASSET_FILES = (NOTICES_FILE, CHANGES_FILE, INTEGRATED_FILE)
"""The files at the top of the output the UI's asset view shows each run materializing."""


@materialize("pyflow://warn-notices/outputs", name="publish-outputs", cache_policy=NO_CACHE)
def publish_outputs(output: str, run: str, rows_out: int) -> publish.Published:
    """Point latest.json at the run, unless a run that started later is published already.

    The flow names the assets it materializes: the output's `ASSET_FILES` (`output_assets`).
    """
    published = publish.publish(output, run, etl.OUTPUT_FILES, rows_out=rows_out)
    if published.is_latest:
        get_run_logger().info("Published run %s: latest.json and the files at the top name it", run)
    else:
        get_run_logger().info(
            "Run %s, which started later, was published first; this run's files stay in %s",
            published.latest,
            publish.run_dir(output, run),
        )
    return published


def output_assets(output: str) -> list[str]:
    """Return the asset keys of the files a run publishes at the top of the output."""
    return [publish.asset_key(output, name) for name in ASSET_FILES]


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(summary: etl.Summary) -> None:
    """Show the run's summary in the Prefect UI as a markdown artifact with a stable key."""
    create_markdown_artifact(
        key=SUMMARY_ARTIFACT_KEY,
        markdown=summary_markdown(summary),
        description="Rows read, kept, rejected and dropped as duplicates, per source and in all.",
    )


def summary_markdown(summary: etl.Summary) -> str:
    """Render a summary as markdown: the totals, a narrow table of sources, then each one's details.

    The table holds only short cells (the label, counts, whether it failed), so it fits a
    laptop's screen; each source's mapping and failure, which can be long, follow as a list.
    """
    totals = [
        ("Sources", f"{len(summary.sources):,}"),
        ("Sources failed", f"{summary.sources_failed:,}"),
        ("Rows read", f"{summary.rows_in:,}"),
        ("Notices written", f"{summary.rows_out:,}"),
        ("Rows rejected", f"{summary.rows_rejected:,}"),
        ("Duplicates dropped", f"{summary.rows_duplicate:,}"),
        ("Started", summary.started_at),
        ("Finished", summary.finished_at),
        ("Notices", f"`{summary.notices}`"),
        ("Rejects", f"`{summary.rejects}`"),
    ]
    lines = ["# WARN notices", "", "| Total | Count |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in totals]
    lines += [
        "",
        "## Sources",
        "",
        "| Source | Rows read | Kept | Rejected | Status |",
        "|---|---:|---:|---:|---|",
    ]
    details = ["", "## Each source", ""]
    for entry in summary.sources:
        lines.append(
            f"| {_cell(entry['source'])} | {entry['rows_in']:,} | {entry['rows_kept']:,} | "
            f"{entry['rows_rejected']:,} | {'**failed**' if entry['error'] else 'read'} |"
        )
        details.append(f"- **{_text(entry['source'])}**")
        details += [f"  - {name}: {_text(text)}" for name, text in _details(entry) if text]
    return "\n".join(lines + changes_markdown(summary.changes) + details) + "\n"


def changes_markdown(changes: dict[str, Any]) -> list[str]:
    """Render a run's changes for the artifact: counts per state and kind, then the first rows."""
    lines = ["", "## Changes", ""]
    if not changes.get("compared_with"):
        return [*lines, _text(changes.get("reason") or "No changes were listed.")]
    kinds = ("added", "amended", "removed")
    lines += [
        f"Since run `{changes['compared_with']}`: "
        + ", ".join(f"{changes[kind]:,} {kind}" for kind in kinds)
        + " (every one in `changes.csv`).",
        "",
    ]
    if not changes.get("by_state"):
        return lines
    lines += ["| State | Added | Amended | Removed |", "|---|---:|---:|---:|"]
    lines += [
        f"| {_cell(state)} | " + " | ".join(f"{counts[kind]:,}" for kind in kinds) + " |"
        for state, counts in changes["by_state"].items()
    ]
    lines += ["", "| Change | State | Company | Notice date | Notice |", "|---|---|---|---|---|"]
    lines += [
        f"| {row['change']} | {_cell(row['state'])} | {_cell(row['company'])} | "
        f"{_cell(row['notice_date'])} | `{row['notice_id']}` |"
        for row in changes.get("first", [])
    ]
    return lines


def _details(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """Return a source's details for the artifact: its failure, mapping, and what it lacks."""
    mapping = entry["mapping"] or {}
    columns = "; ".join(
        f"{field} ← {header}" for field, header in mapping.get("fields", {}).items()
    )
    constants = "; ".join(
        f"{field} = {value}" for field, value in mapping.get("constants", {}).items()
    )
    layout = [f"cells split at '{mapping['delimiter']}'"] if "delimiter" in mapping else []
    above = mapping.get("lines_above_header", [])
    layout += [f"{len(above)} title line(s) above the header skipped"] if above else []
    ignored = mapping.get("ignored", [])
    more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
    sections = " / ".join(
        f"from record {section['record']}: "
        + "; ".join(f"{field} ← {header}" for field, header in section["fields"].items())
        + (f" ({section['error']})" if section.get("error") else "")
        for section in mapping.get("sections", [])
    )
    return [
        ("Failed", entry["error"] or ""),
        ("Columns", "; ".join(filter(None, (columns, constants, *layout)))),
        ("Sections", sections),
        ("Ignored", ", ".join(ignored[:5]) + more),
        ("Lacks", ", ".join(mapping.get("missing", []))),
    ]


def _cell(text: str) -> str:
    """Make text safe for one markdown table cell."""
    return " ".join(text.replace("|", "\\|").split())


def _text(text: str) -> str:
    """Make text safe for one markdown list item: one line, no emphasis of its own."""
    return " ".join(text.replace("\\", "\\\\").replace("*", "\\*").split())


@task(name="announce-notices", cache_policy=NO_CACHE)
def announce_notices(summary: etl.Summary, output: str) -> None:
    """Emit the run's event (`PUBLISHED_EVENT`) with its counts, for the alerts to follow."""
    changes = summary.changes
    payload = {
        "run": summary.run,
        "output": redact_url(output),
        "notices": summary.rows_out,
        "sources_failed": summary.sources_failed,
        "compared_with": changes.get("compared_with"),
        **{kind: changes.get(kind, 0) for kind in ("added", "amended", "removed")},
        "companies": [alerts.chat_text(name) for name in changes.get("companies", [])],
    }
    changed = bool(payload["added"] or payload["amended"])
    alerts.emit(
        PUBLISHED_EVENT,
        f"pyflow.output.{payload['output']}",
        payload,
        **{CHANGED_LABEL: str(changed).lower()},
    )
    get_run_logger().info(
        "Emitted %s (%s added, %s amended, %s removed); the Prefect server sends the alerts "
        "`invoke deploy` created for it, if PYFLOW_ALERT_WEBHOOK was set then",
        PUBLISHED_EVENT,
        payload["added"],
        payload["amended"],
        payload["removed"],
    )


@task(name="clean-up", cache_policy=NO_CACHE)
def clean_up(
    output: str,
    run: str,
    work_dir: str,
    published: bool,
    keep_runs: int,
    used: list[str],
    forget: list[str],
) -> None:
    """Delete the run's intermediate files (all its files if it did not publish); tidy old runs.

    It also prunes the cache (`reuse.prune`): what no run used lately, the results of sources
    that could not be read (``forget``), and the records Prefect keeps of failed tasks.
    """
    removed = publish.finish_run(output, run, work_dir, published, keep_runs)
    if removed:
        get_run_logger().info("Removed old or crashed runs: %s", ", ".join(removed))
    if not published:
        reuse.drop_use(output, run)  # what it wrote stays, young, for the next run to reuse
    pruned = reuse.prune(output, used, forget)
    if pruned:
        get_run_logger().info("Removed %s cached results no run will use", len(pruned))
