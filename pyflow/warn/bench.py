"""Benchmark: the csv module's floor, plain Python, the flow on threads and on Dask, real data.

``python -m pyflow.warn.bench --rows 1000000 --files 20 --workers 2`` (what `invoke bench` runs)
generates a deterministic synthetic input in the layouts real states use, runs each variant in a
process of its own, checks that the flow variants' outputs are byte-identical to the plain
path's (by their SHA-256: a variant's files are deleted once it is done, so that they do not
crowd the page cache and the disk of the variants after it), and prints wall time, rows per
second and peak memory (of the largest process: the variant's own, or its largest Dask
worker), each with its ratio to plain Python. The engine
(Polars) runs one thread per process in every variant and in each Dask worker, so the ratios
show what more processes give, as they would across machines. Prefect's API server, started
once for all variants and warmed by one throwaway flow run (a long-running server is warm), is
not counted.

The variants:

- (0) Python's `csv` module reading and writing the same files, no transform: the floor a
  plain-Python pipeline cannot beat.
- (a) The ETL steps in one process, no Prefect (`pyflow.warn.etl.run_local`).
- (b), (c), (d) The flow on the thread runner, a temporary local Dask cluster, and a running one.
- (p) As (a1), in one process per Dask worker at once, each on its share of the files, with no
  Prefect and no Dask: the most that many processes can give on this machine, so the floor of
  (d)'s ratio here.
- (d1) As (d), on a running cluster of one worker: against (a1), what the orchestration itself
  costs (creating the run, each task's engine, the scheduler) with no two workers sharing cores.
- (e) ``python -m pyflow`` over the 44 real state files in ``../shared/warn-data/raw`` (when
  present), end to end: a new process, against this project's running Prefect server.
- (r) ``invoke run`` on the bundled sample, as a user runs it again once the server runs: the
  whole command, invoke's start and the flow's imports included, timed on its second run.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pyflow.warn.schema import Source
from pyflow_kit import commands
from pyflow_kit.bootstrap import root

if TYPE_CHECKING:
    from pyflow.warn.etl import Summary

STATES = ["CA", "TX", "NY", "WA", "FL", "IL", "OH", "PA", "GA", "MI", "NC", "NJ"]
LAYOUTS: list[tuple[tuple[str, ...], str]] = [
    (
        ("NOTICE_DATE", "JOB_SITE_NAME", "COUNTY_NAME", "WDA_NAME", "TOTAL_LAYOFF_NUMBER",
         "LayOff_Date", "WFDD_RECEIVED_DATE", "CITY_NAME"),
        "{y}-{m:02d}-{d:02d} 00:00:00",
    ),
    (
        ("notice_date", "effective_date", "received_date", "company", "city", "num_employees",
         "layoff_or_closure", "county", "address"),
        "{m:02d}/{d:02d}/{y}",
    ),
    (
        ("Company", "Location", "Layoff Start Date", "# of Workers", "Closure Layoff",
         "Type of Layoff", "Received Date", "Notes"),
        "{m}/{d}/{y}",
    ),
    (
        ("Company Name", "Address", "City", "County", "Notice Date", "Layoff Date",
         "Employees Affected", "Notice Type", "NAICS", "Notes"),
        "{month} {d}, {y}",
    ),
]  # fmt: skip
"""Headers and date forms modelled on four real states' files (TX, CA, WA, and a generic one)."""

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip
WORDS = [
    "Acme", "Pacific", "Golden", "Lone Star", "Empire", "Summit", "River", "Harbor", "Pioneer",
    "Evergreen", "Liberty", "Atlas", "Cascade", "Prairie", "Coastal", "Granite", "Valley", "Metro",
]  # fmt: skip
KINDS = ["Foods", "Logistics", "Medical Group", "Robotics Inc.", "Steel", "Software", "Bank", "LLC"]
CITIES = ["Springfield", "Riverside", "Franklin", "Greenville", "Bristol", "Clinton", "Salem"]
COUNTIES = ["Harris", "Dallas", "Travis", "King", "Cook", "Wayne", "Fulton", "Orange"]
NOTICE_KINDS = ["Layoff", "Closure", "Layoff Permanent", "Closure Temporary", "Layoff Temporary"]
NOTES = [
    "Loss of contract",
    "Business need changes, reorganization; permanent",
    "Facility closing, all positions affected",
    "Phased layoff\nsee attached letter",
    "",
]
VARIANTS = {
    "0": "csv module, read and write only",
    "a": "plain Python, sequential",
    "b": "flow, thread runner",
    "a1": "plain Python, engine on one thread",
    "p": "plain Python, a process per worker, files shared out",
    "c": "flow, temporary local Dask cluster",
    "d": "flow, running Dask cluster",
    "d1": "flow, running Dask cluster of one worker",
    "e": "real state files, python -m pyflow",
    "e2": "real state files again, python -m pyflow, every source reused",
    "r": "invoke run on the bundled sample, the second run",
}
TARGETS = {"a": ("0", 1.00), "b": ("a", 1.10), "d": ("a1", 0.60)}
SECONDS_TARGETS = {"e2": 2.0}
"""Wall-time targets in seconds: the repeat run over the real files, with the server running."""
"""Wall-time targets: a variant's time as a ratio to another's (d's is meant at 10 million rows).

The Dask lines compare like with like: the engine runs one thread per process in (a1) and in
each Dask worker, so their ratio shows what more processes give, as more machines would."""

ONE_THREAD = frozenset({"a1", "p", "c", "d", "d1"})
"""Variants whose processes (and Dask workers) run the engine on one thread."""

FLOW_VARIANTS = ("a", "b", "a1", "c", "d", "d1")
"""The variants whose outputs must be byte-identical."""

END_TO_END = frozenset({"e", "e2", "r"})
"""Variants timed as a user's whole command, in a new process against the running server."""

RUNNING_CLUSTER = frozenset({"d", "d1"})
"""Variants that run on a Dask cluster the bench starts before their clock does."""

REAL_DATA = root().parent / "shared" / "warn-data" / "raw"
"""Where the real state files are, beside the project's checkout."""


ROLES = {
    "notice_date": "notice", "NOTICE_DATE": "notice", "Notice Date": "notice",
    "received_date": "notice", "WFDD_RECEIVED_DATE": "notice", "Received Date": "notice",
    "effective_date": "effective", "LayOff_Date": "effective", "Layoff Start Date": "effective",
    "Layoff Date": "effective", "company": "company", "JOB_SITE_NAME": "company",
    "Company": "company", "Company Name": "company", "city": "city", "CITY_NAME": "city",
    "City": "city", "Location": "city", "num_employees": "jobs", "TOTAL_LAYOFF_NUMBER": "jobs",
    "# of Workers": "jobs", "Employees Affected": "jobs", "county": "county",
    "COUNTY_NAME": "county", "County": "county", "address": "address", "Address": "address",
    "layoff_or_closure": "kind", "Closure Layoff": "kind", "Type of Layoff": "kind",
    "Notice Type": "kind", "Notes": "notes", "NAICS": "naics", "WDA_NAME": "wda",
}  # fmt: skip
"""What each header of `LAYOUTS` holds."""


def _date(form: str, year: int, month: int, day: int) -> str:
    """Render a date in a layout's form."""
    return form.format(y=year, m=month, d=day, month=MONTHS[month - 1])


def _row(rng: random.Random, index: int, header: tuple[str, ...], form: str) -> list[str]:
    """Return one valid row's cells, in the layout's column order."""
    year, month, day = rng.randint(2015, 2025), rng.randint(1, 12), rng.randint(1, 28)
    jobs = rng.randint(1, 2500)
    effective = _date(form, year, month % 12 + 1, day)
    draw = rng.random()
    if draw < 0.05:
        effective = f"{effective} - {_date(form, year, month % 12 + 1, min(28, day + 7))}"
    elif draw < 0.07:
        effective = "TBD"
    city = rng.choice(CITIES)
    values = {
        "company": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(KINDS)} {index % 9973}",
        "notice": _date(form, year, month, day),
        "effective": effective,
        "city": city,
        "jobs": "N/A" if draw > 0.99 else f"{jobs:,}" if jobs >= 1000 else str(jobs),
        "county": rng.choice(COUNTIES),
        "address": f"{rng.randint(1, 9999)} {rng.choice(WORDS)} Street, Suite {rng.randint(1, 500)}, {city}",
        "kind": rng.choice(NOTICE_KINDS),
        "notes": rng.choice(NOTES),
        "naics": str(rng.randint(111110, 999999)),
        "wda": f"{rng.choice(COUNTIES)} Workforce Area",
    }  # fmt: skip
    return [values[ROLES[name]] for name in header]


def _spoil(rng: random.Random, cells: list[str], header: tuple[str, ...]) -> list[str]:
    """Make a row bad in one of the ways real files are: most are rejected, some lose a value."""
    roles = [ROLES[name] for name in header]
    kind = rng.randrange(4)
    if kind == 0:
        return ["" if role == "company" else cell for role, cell in zip(roles, cells, strict=True)]
    if kind == 1:
        return [*cells, "stray value beyond the header"]
    if kind == 2:
        return list(header)
    return [
        "31/31/2024" if role == "notice" else cell for role, cell in zip(roles, cells, strict=True)
    ]


def generate(folder: Path, rows: int, files: int, seed: int = 20240101) -> list[Source]:
    """Write ``rows`` rows over ``files`` CSV files, about 4 % bad and 3 % duplicates.

    Each file takes one of `LAYOUTS` (its columns, date form, quoting and extra columns), so
    rows are about the size real files' are. The same arguments always give the same bytes;
    files already written are reused.

    Returns:
        The sources, each with its state as a constant.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for number in range(files):
        path = folder / f"warn-{number:03d}.csv"
        state = STATES[number % len(STATES)]
        sources.append(Source(location=str(path), constants={"state": state}, name=path.name))
        count = rows // files + (1 if number < rows % files else 0)
        marker = folder / f".{path.name}.{count}.{seed}.v2"
        if marker.exists() and path.exists():
            continue
        rng = random.Random(seed * 1000 + number)
        header, form = LAYOUTS[number % len(LAYOUTS)]
        recent: list[list[str]] = []
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            for index in range(count):
                draw = rng.random()
                if draw < 0.03 and recent:
                    cells = list(rng.choice(recent))
                elif draw < 0.07:
                    cells = _spoil(rng, _row(rng, index, header, form), header)
                else:
                    cells = _row(rng, index, header, form)
                    recent = [*recent[-63:], cells]
                writer.writerow(cells)
        marker.touch()
    return sources


@dataclass(frozen=True)
class Measurement:
    """One variant's result."""

    variant: str
    seconds: float
    rows: int
    peak_mb: float
    label: str = ""

    @property
    def rows_per_second(self) -> float:
        """Throughput."""
        return self.rows / self.seconds


def high_water_mb(pid: int | str = "self") -> float:
    """Return a process's peak resident memory since it started (VmHWM), in MB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory(threading.Thread):
    """Follows the peak memory of this process and every process it starts (Dask workers)."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0.0
        self.done = threading.Event()

    def sample(self) -> None:
        """Record the largest peak among this process and its descendants now."""
        import psutil

        pids = [os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))]
        self.peak = max(self.peak, *(high_water_mb(pid) for pid in pids))

    def run(self) -> None:
        """Sample until stopped."""
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> float:
        """Stop following; return the peak seen, in MB."""
        self.sample()
        self.done.set()
        self.join()
        return self.peak


def _worker_peak_mb(address: str) -> float:
    """Return the largest peak resident memory among a running cluster's workers, in MB."""
    from distributed import Client

    with Client(address) as client:  # type: ignore[no-untyped-call]
        peaks = client.run(high_water_mb)
    return float(max(peaks.values()))


def warm_up() -> None:
    """Run one throwaway flow against the API: a new server's first requests cost it seconds."""
    from prefect import flow, task

    from pyflow_kit.runtime import without_heartbeats

    @task(name="pyflow-bench-warm-up-step")
    def step() -> None:
        """Do nothing: the server only records it."""

    @flow(name="pyflow-bench-warm-up")
    def warm() -> None:
        """Create a flow run and a task run, as each variant will."""
        step()

    quiet = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        with without_heartbeats():
            warm()
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def copy_with_csv(sources: list[Source], output: Path) -> int:
    """Read every source with the csv module and write it back unchanged; return the rows read."""
    output.mkdir(parents=True, exist_ok=True)
    csv.field_size_limit(sys.maxsize)
    rows = 0
    for source in sources:
        target = output / Path(source.location).name
        with (
            Path(source.location).open(newline="", encoding="utf-8") as reader,
            target.open("w", newline="", encoding="utf-8") as handle,
        ):
            writer = csv.writer(handle, lineterminator="\n")
            for row in csv.reader(reader):
                writer.writerow(row)
                rows += 1
    return rows - len(sources)


def real_sources(folder: Path = REAL_DATA) -> list[Source]:
    """Return the real state files as sources, each with its state (the file's name) as a constant."""
    return [
        Source(location=str(path), constants={"state": path.stem.upper()}, name=path.name)
        for path in sorted(folder.glob("*.csv"))
    ]


def run_variant(
    variant: str, sources: list[Source], output: Path, workers: int, address: str
) -> Measurement:
    """Run one variant in this process and measure it (what each variant's process does).

    For (p), ``sources`` are this process's share of the files.
    """
    memory = PeakMemory()
    memory.start()
    if variant == "0":
        started = time.perf_counter()
        rows = copy_with_csv(sources, output)
        return Measurement(variant, time.perf_counter() - started, rows, memory.stop())
    from pyflow.warn import etl
    from pyflow.warn.parameters import PARTITION_BYTES, load_aliases
    from pyflow_kit.settings import get_settings

    if variant in ("a", "a1", "p"):
        started = time.perf_counter()
        summary = etl.run_local(sources, str(output), load_aliases(None), PARTITION_BYTES)
        seconds = time.perf_counter() - started
        return Measurement(variant, seconds, summary.rows_in, memory.stop())
    from pyflow.warn.flow import warn_notices
    from pyflow_kit.runners import build_task_runner
    from pyflow_kit.runtime import without_heartbeats

    runner_settings = get_settings(
        task_runner="threads" if variant == "b" else "dask",
        dask_workers=workers,
        dask_address=address if variant in RUNNING_CLUSTER else None,
    )
    flow = warn_notices.with_options(task_runner=build_task_runner(runner_settings))
    with without_heartbeats():
        started = time.perf_counter()
        summary = cast("Summary", flow(sources=sources, output=str(output)))
        seconds = time.perf_counter() - started
    peak = memory.stop()
    if variant in RUNNING_CLUSTER:
        peak = max(peak, _worker_peak_mb(address))
    return Measurement(variant, seconds, summary.rows_in, peak)


def run_real(folder: Path, output: Path, env: dict[str, str]) -> Measurement | str:
    """Time ``python -m pyflow`` over the real state files, end to end; or say why it cannot run."""
    sources = real_sources(folder)
    if not sources:
        return f"no real data: {folder} holds no CSV files (it is ../shared/warn-data/raw)"
    command = [sys.executable, "-m", "pyflow", "--flow", "warn-notices", "--output", str(output)]
    for source in sources:
        command += ["--source", str(source)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return f"python -m pyflow failed on the real data:\n{done.stderr[-2000:]}"
    rows = json.loads((output / "summary.json").read_text())["rows_in"]
    return Measurement("e", seconds, rows, 0.0, f"{len(sources)} {VARIANTS['e']}")


def run_real_again(folder: Path, output: Path, env: dict[str, str]) -> Measurement | str:
    """Time ``python -m pyflow`` over the real files a second time, and say where the time goes.

    The first run reads every source; the second finds each one's result in the output's cache
    (the same bytes, rules and code), so it pays for starting, planning, merging and comparing.
    """
    first = run_real(folder, output, env)
    if isinstance(first, str):
        return first
    again = run_real(folder, output, env)
    if isinstance(again, str):
        return again
    summary = json.loads((output / "summary.json").read_text())
    reused = sum(1 for entry in summary["sources"] if entry["reused_from"])
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import pyflow.warn.flow"], env=env, check=True, capture_output=True
    )
    imports = time.perf_counter() - started
    label = (
        f"{len(summary['sources'])} real state files again ({reused} reused), python -m pyflow; "
        f"{where_the_time_goes(again.seconds, imports, env)}"
    )
    return Measurement("e2", again.seconds, again.rows, 0.0, label)


def where_the_time_goes(total: float, imports: float, env: dict[str, str]) -> str:
    """Split a run's wall time: starting Python and importing, the flow run, its longest tasks."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        run = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    flow_seconds = run.total_run_time.total_seconds()
    spent: dict[str, tuple[int, float]] = {}
    for task_run in tasks:
        name = task_run.name.rsplit("-", 1)[0]
        count, seconds = spent.get(name, (0, 0.0))
        spent[name] = (count + 1, seconds + task_run.total_run_time.total_seconds())
    longest = sorted(spent.items(), key=lambda item: -item[1][1])[:4]
    return (
        f"imports {imports:.1f} s, flow run {flow_seconds:.1f} s (tasks: "
        + ", ".join(f"{name} {seconds:.2f} s x{count}" for name, (count, seconds) in longest)
        + f"), the rest {max(0.0, total - imports - flow_seconds):.1f} s"
    )


def run_invoke_twice(output: Path, env: dict[str, str]) -> Measurement | str:
    """Time a second ``invoke run`` on the bundled sample, whole, as a user sees it; or say why not.

    The first run warms what a user's first run warms (the server, the file cache), as their
    ``invoke setup run`` does; the second is the one timed.
    """
    command = [sys.executable, "-m", "invoke", "run", "--output", str(output)]
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=root(), env=env, capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            return f"invoke run failed:\n{done.stderr[-2000:]}"
    rows = json.loads((output / "summary.json").read_text())["rows_in"]
    return Measurement("r", seconds, rows, 0.0)


def start_cluster(
    workers: int, log: Path, env: dict[str, str] | None = None
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Start a real Dask scheduler and worker processes on loopback; return its address.

    The scheduler and workers preload `pyflow.preload`, as every cluster pyflow starts does. The
    processes come back scheduler first; the Dask tests start their cluster with this too.
    """
    from distributed import Client

    from pyflow_kit.local import port_is_free
    from pyflow_kit.runners import PRELOAD

    port = next(p for p in range(8786, 8999) if port_is_free(p))
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    processes: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        try:
            processes.append(
                subprocess.Popen(
                    [
                        dask,
                        "scheduler",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--dashboard-address",
                        ":0",
                        "--preload",
                        PRELOAD,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
            processes += [
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--preload",
                        PRELOAD,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
                for _ in range(workers)
            ]
            with Client(address, timeout=60) as client:  # type: ignore[no-untyped-call]
                client.wait_for_workers(workers, timeout=120)
        except BaseException:
            _stop(processes)
            raise
    return address, processes


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Stop the cluster's processes, workers first."""
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _variants(value: str) -> list[str]:
    """Accept a comma-separated list of variant names, each once."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or set(names) - set(VARIANTS) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"'{value}' is not a list of the variants {', '.join(VARIANTS)}, such as 0,a,d"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """Generate the input, run the variants, compare outputs and print the table."""
    from pyflow.warn import BENCH

    parser = commands.parser(BENCH.module, [BENCH])
    parser.add_argument("--run-variant", help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--share", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.variants = _variants(args.variants or ",".join(VARIANTS))
    except argparse.ArgumentTypeError as error:
        parser.error(f"argument --variants: {error}")
    args.folder, args.real_data = Path(args.folder), Path(args.real_data or REAL_DATA)
    inputs = args.folder / f"input-{args.rows}x{args.files}"
    if args.run_variant:
        sources = generate(inputs, args.rows, args.files)
        output = args.folder / f"output-{args.run_variant}"
        if args.share is not None:
            sources = sources[args.share :: args.workers]
            output = output / str(args.share)
        measured = run_variant(args.run_variant, sources, output, args.workers, args.address)
        print(json.dumps(measured.__dict__))
        return 0
    return compare(args, inputs)


def compare(args: argparse.Namespace, inputs: Path) -> int:
    """Run each variant in its own process against one Prefect server, and report."""
    from pyflow_kit.runtime import prefect_api, quiet_logging

    started = time.perf_counter()
    generate(inputs, args.rows, args.files)
    size = sum(p.stat().st_size for p in inputs.glob("*.csv"))
    print(
        f"bench: {args.rows:,} rows in {args.files} files ({size / 1e6:,.0f} MB), generated or "
        f"reused in {time.perf_counter() - started:.1f} s"
    )
    quiet_logging()
    results: dict[str, Measurement] = {}
    digests: dict[str, str] = {}
    notes: list[str] = []
    log = args.folder / "bench.log"
    with prefect_api() as api_url:
        warm_up()
        shared = {
            **{k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"},
            "PREFECT_API_URL": api_url,
            "DASK_LOGGING__DISTRIBUTED": "error",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        for variant in args.variants:
            env = {**shared, **({"POLARS_MAX_THREADS": "1"} if variant in ONE_THREAD else {})}
            output = args.folder / f"output-{variant}"
            shutil.rmtree(output, ignore_errors=True)
            os.sync()  # the last variant's writes go to disk now, not during this one
            if variant in END_TO_END:
                measured = (
                    run_real(args.real_data, output, env)
                    if variant == "e"
                    else run_real_again(args.real_data, output, env)
                    if variant == "e2"
                    else run_invoke_twice(output, env)
                )
                if isinstance(measured, str):
                    notes.append(f"({variant}) not run: {measured}")
                    print(f"bench: ({variant}) not run: {measured}", flush=True)
                    continue
                results[variant] = measured
                label = measured.label or VARIANTS[variant]
                print(f"bench: ({variant}) {label}: {measured.seconds:.1f} s", flush=True)
                shutil.rmtree(output, ignore_errors=True)
                continue
            address, cluster = "", list[subprocess.Popen[bytes]]()
            if variant in RUNNING_CLUSTER:
                workers = 1 if variant == "d1" else args.workers
                address, cluster = start_cluster(workers, log, env)
            shares = range(min(args.workers, args.files)) if variant == "p" else [None]
            try:
                processes = [_variant_process(args, variant, env, address, s) for s in shares]
                done = [(process, *process.communicate()) for process in processes]
            finally:
                _stop(cluster)
            failed = [err for process, _, err in done if process.returncode != 0]
            if failed:
                print(f"bench: variant ({variant}) failed:\n{failed[0][-3000:]}", file=sys.stderr)
                return 1
            parts = [Measurement(**json.loads(out.strip().splitlines()[-1])) for _, out, _ in done]
            results[variant] = Measurement(
                variant,
                max(part.seconds for part in parts),
                sum(part.rows for part in parts),
                max(part.peak_mb for part in parts),
            )
            print(
                f"bench: ({variant}) {VARIANTS[variant]}: {results[variant].seconds:.1f} s",
                flush=True,
            )
            if variant in FLOW_VARIANTS:
                digests[variant] = output_digest(output)
            # its files (a gigabyte at 10 million rows) would otherwise crowd the next variants
            shutil.rmtree(output, ignore_errors=True)
    identical = len(set(digests.values())) <= 1
    print(report(results, identical))
    for note in notes:
        print(note)
    if not identical:
        print("bench: the variants wrote different outputs: that is a bug", file=sys.stderr)
        return 1
    return 0


def _variant_process(
    args: argparse.Namespace, variant: str, env: dict[str, str], address: str, share: int | None
) -> subprocess.Popen[str]:
    """Start a process that runs one variant (or, for (p), its share of the files) and measures it."""
    command = [
        sys.executable, "-m", "pyflow.warn.bench", "--rows", str(args.rows),
        "--files", str(args.files), "--workers", str(args.workers), "--folder", str(args.folder),
        "--run-variant", variant, "--address", address,
        *(["--share", str(share)] if share is not None else []),
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def output_digest(output: Path) -> str:
    """Return the SHA-256 of a variant's notices.csv and rejects.csv, to compare with the others'."""
    digest = hashlib.sha256()
    for name in ("notices.csv", "rejects.csv"):
        with (output / name).open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def report(results: dict[str, Measurement], identical: bool) -> str:
    """Render the results as a markdown table, with ratios to plain Python and the targets."""
    base = results.get("a")
    lines: list[str] = [
        "| Variant | Wall time | Rows/s | Peak memory | Time vs (a) | Memory vs (a) | Target |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, measured in results.items():
        time_ratio = f"{measured.seconds / base.seconds:.2f}x" if base else "-"
        memory_ratio = (
            f"{measured.peak_mb / base.peak_mb:.2f}x" if base and measured.peak_mb else "-"
        )
        verdict = "-"
        if variant == "p" and "a1" in results:
            ratio = measured.seconds / results["a1"].seconds
            verdict = f"the floor of (d) here: {ratio:.2f}x (a1)"
        if variant == "d1" and "a1" in results:
            extra = measured.seconds - results["a1"].seconds
            verdict = f"the orchestration's own cost: {extra:+.1f} s over (a1)"
        if variant in SECONDS_TARGETS:
            target = SECONDS_TARGETS[variant]
            verdict = f"<= {target:.1f} s: {'met' if measured.seconds <= target else 'not met'}"
        if variant in TARGETS and TARGETS[variant][0] in results:
            other, target = TARGETS[variant]
            ratio = measured.seconds / results[other].seconds
            verdict = f"<= {target:.2f}x ({other}): {ratio:.2f}x, {'met' if ratio <= target else 'not met'}"
        memory = f"{measured.peak_mb:,.0f} MB" if measured.peak_mb else "-"
        lines.append(
            f"| ({variant}) {measured.label or VARIANTS[variant]} | {measured.seconds:.1f} s | "
            f"{measured.rows_per_second:,.0f} | {memory} | {time_ratio} | "
            f"{memory_ratio} | {verdict} |"
        )
    lines.append("")
    lines.append(f"Outputs identical across the flow variants: {'yes' if identical else 'NO'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
