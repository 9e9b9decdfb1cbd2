"""The example's flow assembly: `warn_notices` composes the tasks of `pyflow.warn.tasks`.

The kit runs it on the task runner the settings choose (``PYFLOW_TASK_RUNNER``), here, in a
deployment and on a cluster alike; `check_parameters` is what `python -m pyflow` checks first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar, cast

from prefect import flow, unmapped
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.futures import wait
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque, quote

from pyflow.warn import etl
from pyflow.warn.alerts import ALERTS
from pyflow.warn.cli import check_before_run as check_parameters
from pyflow.warn.parameters import (
    FETCH_BACKOFF,
    FETCH_RETRIES,
    FETCH_TIMEOUT,
    PARTITION_BYTES,
    Bytes,
    Count,
    Delay,
    RunOptions,
    Seconds,
    Sources,
    run_options,
)
from pyflow.warn.tasks import (
    announce_notices,
    check_row_counts,
    clean_up,
    fetch_source,
    find_changes,
    merge_bucket,
    output_assets,
    plan_sources,
    prepare_output,
    publish_outputs,
    publish_summary,
    stage_outputs,
    transform_batch,
)
from pyflow_kit import publish, reuse
from pyflow_kit.settings import get_settings

T = TypeVar("T")


@flow(name="warn-notices")
def warn_notices(
    sources: Sources | None = None,
    output: str | None = None,
    strict: bool = False,
    allow_empty: bool = False,
    partition_bytes: Bytes = PARTITION_BYTES,
    aliases_file: Path | None = None,
    fetch_timeout: Seconds = FETCH_TIMEOUT,
    fetch_retries: Count = FETCH_RETRIES,
    fetch_backoff: Delay = FETCH_BACKOFF,
) -> etl.Summary | State:
    """Consolidate WARN Act layoff notices from many sources into one clean dataset.

    A source that cannot be read or mapped, or that gives no rows where the published run read
    some, does not stop the others: they are published, and the run then ends Failed, its
    message naming each failed source.

    Args:
        sources: Files or URLs to read, each `LOCATION[#key=value,...]` (such as
            `data/ca.csv#state=CA`); default: the bundled sample.
        output: Folder or fsspec URL for notices.csv, rejects.csv and summary.json;
            default: PYFLOW_OUTPUT.
        strict: All or nothing: a source that cannot be read or mapped fails the run, and
            nothing is written; default: the other sources are published and the run still fails.
        allow_empty: Publish a source that gives no rows where the run latest.json names read
            rows from it; default: such a source fails (a truncated download, an export of one
            line), the others are published, and the run fails naming it.
        partition_bytes: Sources larger than this many bytes are split, at record boundaries,
            into partitions of about this size, read in parallel; 0: never split.
        aliases_file: A TOML file of column names per field (the shape of
            `pyflow/warn/aliases.toml`), for headers the rules in `pyflow/warn/columns.toml`
            miss; yours win. Default: none.
        fetch_timeout: Seconds to wait on an HTTP(S) source before giving up.
        fetch_retries: Retries for an HTTP(S) source that fails.
        fetch_backoff: Seconds before the first retry; each further retry waits twice as long.
    """
    settings = get_settings(output=output)
    options = run_options(
        sources,
        strict,
        partition_bytes,
        aliases_file,
        fetch_timeout,
        fetch_retries,
        fetch_backoff,
        allow_empty,
    )
    started_at = etl.utc_now()
    location = prepare_output(settings.require_output())
    run = publish.new_run_id()
    run_folder = publish.run_dir(location, run)
    work_dir = publish.work_dir(run_folder, shared=settings.dask_address is not None)
    published = False
    used: list[str] = []
    forget: list[str] = []
    made: list[str] = []
    try:
        with publish.leased(run_folder, settings.run_lease_seconds):
            summary = transform_and_stage(
                options, location, run, work_dir, started_at, used, forget, made
            )
            publish_outputs.with_options(assets=output_assets(location))(
                location, run, summary.rows_out
            )
            published = True
            publish_summary(whole(summary))
            announce_notices(whole(summary), location)
    finally:  # once the lease is dropped, so that no renewal writes it again
        # a run that did not publish leaves the output as it was, but for what it read
        forget += [] if published else made
        clean_up(location, run, work_dir, published, settings.keep_runs, used, forget)
    if summary.failures:
        return Failed(message=failure_message(summary), data=summary)
    return summary


def transform_and_stage(
    options: RunOptions,
    location: str,
    run: str,
    work_dir: str,
    started_at: str,
    used: list[str],
    forget: list[str],
    made: list[str],
) -> etl.Summary:
    """Fetch, read, merge and write a run's files into its folder: the flow's tasks, in order.

    The plans are reused from an earlier run of the same sources, bytes, rules and code
    (`etl.plan_key`), and each source's batches from an earlier run that read the same
    (`etl.batch_key`); the keys of those that read without error are added to ``used`` (the
    cache keeps them), the others' to ``forget`` (`pyflow_kit.reuse.prune`). Plans made anew
    are added to ``made`` too: the cache keeps them only if the run publishes.

    Raises:
        SourceError: If a source fails in strict mode, or every source fails.
    """
    run_folder = publish.run_dir(location, run)
    fetch = fetch_source.with_options(
        retries=options.fetch_retries, retry_delay_seconds=options.retry_delays
    )
    downloads = {
        index: fetch.submit(source, work_dir, options.fetch_timeout)
        for index, source in enumerate(options.sources)
        if source.is_remote_http
    }
    wait(list(downloads.values()))
    fetched = {index: future.result(raise_on_failure=False) for index, future in downloads.items()}
    if options.strict:
        for error in fetched.values():
            if isinstance(error, BaseException):
                raise error
    locations = {index: where for index, where in fetched.items() if isinstance(where, str)}
    errors = {index: str(error) for index, error in fetched.items() if not isinstance(error, str)}
    version = etl.reuse_version(options.rules)
    digests = etl.source_digests(options.sources, locations, errors)
    plans_key = etl.plan_key(options.sources, digests, errors, options.partition_bytes, version)
    reuse.record_use(location, run, [plans_key])
    planning = plan_sources.with_options(**reuse.options(location, plans_key, files=False))(
        whole(options.sources),
        locations,
        errors,
        whole(options.rules),
        options.partition_bytes,
        plans_key,
        return_state=True,
    )
    plans = etl.rebased(planning.result(), options.sources, locations)
    if not etl.plans_reusable(plans, digests):
        forget.append(plans_key)
    else:
        used.append(plans_key)
        if planning.name != "Cached":
            made.append(plans_key)
    batch_bytes, stack_bytes = etl.batch_sizes(options.partition_bytes)
    planned = etl.plan_batches(plans, batch_bytes)
    keys = [etl.batch_key(batch, version) for batch in planned]
    reuse.record_use(location, run, [plans_key, *keys])
    batches = [
        transform.submit(whole_here(batch), reuse.files_dir(location, key), stack_bytes, run, key)
        for batch, key, transform in zip(
            planned, keys, reuse.tasks_for(transform_batch, location, keys), strict=True
        )
    ]
    wait(batches)
    parts = [
        part
        for batch, key, future in zip(planned, keys, batches, strict=True)
        for part in etl.adopt(future.result(), batch, reuse.files_dir(location, key))
    ]
    # a source that could not be read is read again next time, not reused with its error
    for key, future in zip(keys, batches, strict=True):
        (forget if etl.failed(future.result()) else used).append(key)
    plans = check_row_counts(whole(plans), whole(parts), location, options.allow_empty)
    etl.raise_failures(plans, parts, strict=options.strict)
    usable = etl.usable_parts(parts)
    ranges = etl.plan_buckets(usable, at_least=len(batches))
    labels = {plan.index: plan.label for plan in plans}
    merged = merge_bucket.map(
        range(len(ranges)),
        ranges,
        unmapped(etl.notice_files(usable)),
        unmapped(labels),
        unmapped(work_dir),
    )
    # as_is: the task starts at once, and writes the rejects while the merges run
    summary = stage_outputs(whole(plans), as_is(parts), as_is(list(merged)), run_folder, started_at)
    return find_changes(whole(summary), location, run_folder)


def as_is(value: T) -> T:
    """Hand a value to a task called in the flow as it is: Prefect does not walk it (`quote`).

    Futures handed over this way are not waited for before the task starts, and a large value
    (every part's key samples) is not walked looking for them. Only for tasks the flow calls,
    not those it submits: a Dask runner walks what it submits all the same.
    """
    return cast("T", quote(value))


def whole(value: T) -> T:
    """Hand a value to a task as it is, without Prefect walking into it (`opaque`).

    Prefect still waits for it if it is a future and records the task that returned it, but
    does not visit each of its items looking for more: with every source's plan, part or
    summary entry, that walk cost more than the tasks themselves. Only for tasks the flow
    calls (`whole_here` for those it submits).
    """
    return cast("T", opaque(value))


def whole_here(value: T) -> T:
    """Hand a value to a submitted task as it is (`whole`) when it runs in this process.

    On threads Prefect walks a submitted task's arguments as it does a called one's; a Dask
    runner takes the annotation for a tuple, so there the value goes as it is.
    """
    context = FlowRunContext.get()
    on_threads = context is not None and isinstance(context.task_runner, ThreadPoolTaskRunner)
    return whole(value) if on_threads else value


def failure_message(summary: etl.Summary) -> str:
    """Say which sources failed and why, for the run's final state."""
    reasons = "".join(f"\n  - {entry['error']}" for entry in summary.failures)
    return (
        f"{summary.sources_failed} of {len(summary.sources)} sources failed; the others were "
        f"published:{reasons}"
    )


__all__ = ["ALERTS", "check_parameters", "warn_notices"]
