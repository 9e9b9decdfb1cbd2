"""Benchmark: plain Python against the flow on threads, a temporary and a running Dask cluster.

``python -m pyflow.bench --rows 1000000 --files 8 --workers 2`` (what `invoke bench` runs)
generates a deterministic synthetic input, runs each variant in a process of its own, checks that
all outputs are byte-identical, and prints wall time, rows per second and peak memory (of the
largest process: the variant's own, or its largest Dask worker), each with its ratio to plain
Python. Prefect's API server, started once for all variants, is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflow.schema import Source

STATES = ["CA", "TX", "NY", "WA", "FL", "IL", "OH", "PA", "GA", "MI", "NC", "NJ"]
HEADERS = [
    ("Company", "Notice Date", "Effective Date", "City", "No. Of Employees"),
    ("Employer Name", "Date Received", "Layoff Date", "Location", "Number Affected"),
    (
        "Organization Name",
        "Initial Report Date",
        "Separation Date",
        "City Name",
        "Affected Workers",
    ),
    ("JOB_SITE_NAME", "NOTICE_DATE", "LayOff_Date", "CITY_NAME", "TOTAL_LAYOFF_NUMBER"),
]
DATE_FORMATS = ["{y}-{m:02d}-{d:02d}", "{m}/{d}/{y}", "{m:02d}/{d:02d}/{y}", "{y}-{m}-{d} 00:00:00"]
WORDS = [
    "Acme", "Pacific", "Golden", "Lone Star", "Empire", "Summit", "River", "Harbor", "Pioneer",
    "Evergreen", "Liberty", "Atlas", "Cascade", "Prairie", "Coastal", "Granite", "Valley", "Metro",
]  # fmt: skip
KINDS = ["Foods", "Logistics", "Medical Group", "Robotics Inc.", "Steel", "Software", "Bank", "LLC"]
CITIES = ["Springfield", "Riverside", "Franklin", "Greenville", "Bristol", "Clinton", "Salem"]
VARIANTS = {
    "a": "plain Python, sequential",
    "b": "flow, thread runner",
    "c": "flow, temporary local Dask cluster",
    "d": "flow, running Dask cluster",
}
TARGETS = {"b": 1.10, "c": 0.75, "d": 0.60}
"""Wall-time targets at 1 million rows, as ratios to plain Python."""


def _row(rng: random.Random, index: int) -> list[str]:
    """Return one valid row's values: company, notice date, effective date, city, jobs."""
    company = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(KINDS)} {index % 9973}"
    year, month, day = rng.randint(2015, 2025), rng.randint(1, 12), rng.randint(1, 28)
    form = rng.choice(DATE_FORMATS)
    notice = form.format(y=year, m=month, d=day)
    effective = form.format(y=year, m=month % 12 + 1, d=day) if rng.random() > 0.1 else ""
    return [company, notice, effective, rng.choice(CITIES), str(rng.randint(1, 2500))]


def _spoil(rng: random.Random, values: list[str]) -> list[str]:
    """Make a row invalid in one of the ways real files are."""
    kind = rng.randrange(5)
    if kind == 0:
        return ["", *values[1:]]
    if kind == 1:
        return [values[0], "31/31/2024", *values[2:]]
    if kind == 2:
        return [*values[:4], "unknown"]
    if kind == 3:
        return values[:3]
    return [""] * len(values)


def generate(folder: Path, rows: int, files: int, seed: int = 20240101) -> list[Source]:
    """Write ``rows`` rows over ``files`` CSV files, about 4 % bad and 3 % duplicates.

    The same arguments always give the same bytes; files already written are reused.

    Returns:
        The sources, each with the state its file lacks.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for number in range(files):
        path = folder / f"warn-{number:03d}.csv"
        state = STATES[number % len(STATES)]
        sources.append(Source(location=str(path), constants={"state": state}, name=path.name))
        count = rows // files + (1 if number < rows % files else 0)
        marker = folder / f".{path.name}.{count}.{seed}"
        if marker.exists() and path.exists():
            continue
        rng = random.Random(seed * 1000 + number)
        recent: list[list[str]] = []
        with path.open("w", encoding="utf-8", newline="") as handle:
            handle.write(",".join(f'"{name}"' for name in HEADERS[number % len(HEADERS)]) + "\n")
            for index in range(count):
                draw = rng.random()
                if draw < 0.03 and recent:
                    values = list(rng.choice(recent))
                    values[0] = values[0].upper()
                elif draw < 0.07:
                    values = _spoil(rng, _row(rng, index))
                else:
                    values = _row(rng, index)
                    recent = [*recent[-63:], values]
                handle.write(",".join(f'"{v}"' if "," in v else v for v in values) + "\n")
        marker.touch()
    return sources


@dataclass(frozen=True)
class Measurement:
    """One variant's result."""

    variant: str
    seconds: float
    rows: int
    peak_mb: float

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

    with Client(address) as client:
        peaks = client.run(high_water_mb)
    return max(peaks.values())


def run_variant(
    variant: str, sources: list[Source], output: Path, workers: int, address: str
) -> Measurement:
    """Run one variant in this process and measure it (what each variant's process does)."""
    from pyflow import etl
    from pyflow.config import get_settings

    settings = get_settings(
        sources=[str(s) for s in sources], output=str(output), dask_workers=workers
    )
    memory = PeakMemory()
    memory.start()
    if variant == "a":
        started = time.perf_counter()
        location = etl.prepare_output(str(output))
        work_dir = etl.new_work_dir(location)
        partitions = [
            partition
            for index, source in enumerate(settings.sources)
            for partition in etl.plan_partitions(
                index, source, source.location, settings.partition_bytes
            )
        ]
        parts = [etl.transform_source(p, settings.aliases, work_dir) for p in partitions]
        merged = etl.merge_outputs(parts, location, work_dir)
        summary = etl.summarise(settings.sources, parts, merged, etl.utc_now())
        etl.write_summary(summary, work_dir)
        etl.publish_outputs(work_dir, location)
        etl.remove_work_dir(work_dir)
        seconds = time.perf_counter() - started
        return Measurement(variant, seconds, summary.rows_in, memory.stop())
    from pyflow.flow import warn_notices

    runner_settings = get_settings(
        task_runner="threads" if variant == "b" else "dask",
        dask_workers=workers,
        dask_address=address if variant == "d" else None,
    )
    flow = warn_notices.with_options(task_runner=runner_settings.build_task_runner())
    started = time.perf_counter()
    summary = flow(sources=settings.sources, output=str(output))
    seconds = time.perf_counter() - started
    peak = memory.stop()
    if variant == "d":
        peak = max(peak, _worker_peak_mb(address))
    return Measurement(variant, seconds, summary.rows_in, peak)


def _start_cluster(workers: int, log: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Start a real Dask scheduler and worker processes on loopback; return its address.

    The workers preload pyflow's tasks, as a cluster kept for pyflow would (deploy/dask-cluster.yaml).
    """
    from distributed import Client

    from pyflow.local import port_is_free

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
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
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
                        "pyflow.tasks",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                for _ in range(workers)
            ]
            with Client(address, timeout=60) as client:
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


def _variants(value: str) -> str:
    """Accept only letters of ``abcd``, each once."""
    if not value or set(value) - set(VARIANTS) or len(set(value)) != len(value):
        raise argparse.ArgumentTypeError(f"'{value}' is not a choice of the letters a, b, c and d")
    return value


def main(argv: list[str] | None = None) -> int:
    """Generate the input, run the four variants, compare outputs and print the table."""
    parser = argparse.ArgumentParser(prog="python -m pyflow.bench", description=__doc__)
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows to generate (default: 1,000,000)"
    )
    parser.add_argument(
        "--files", type=int, default=8, help="files to spread them over (default: 8)"
    )
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (default: 2)")
    parser.add_argument(
        "--folder",
        type=Path,
        default=Path("data/bench"),
        help="where inputs and outputs go (default: data/bench)",
    )
    parser.add_argument(
        "--variants",
        default="abcd",
        type=_variants,
        help="which variants to run, letters of abcd (default: abcd)",
    )
    parser.add_argument("--run-variant", help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    inputs = args.folder / f"input-{args.rows}x{args.files}"
    if args.run_variant:
        sources = generate(inputs, args.rows, args.files)
        output = args.folder / f"output-{args.run_variant}"
        measured = run_variant(args.run_variant, sources, output, args.workers, args.address)
        print(json.dumps(measured.__dict__))
        return 0
    return compare(args, inputs)


def compare(args: argparse.Namespace, inputs: Path) -> int:
    """Run each variant in its own process against one Prefect server, and report."""
    from pyflow.runtime import prefect_api, quiet_logging

    started = time.perf_counter()
    generate(inputs, args.rows, args.files)
    size = sum(p.stat().st_size for p in inputs.glob("*.csv"))
    print(
        f"bench: {args.rows:,} rows in {args.files} files ({size / 1e6:,.0f} MB), generated or reused in {time.perf_counter() - started:.1f} s"
    )
    quiet_logging()
    results: dict[str, Measurement] = {}
    log = args.folder / "bench.log"
    with prefect_api() as api_url:
        env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "DASK_LOGGING__DISTRIBUTED": "error",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        for variant in args.variants:
            output = args.folder / f"output-{variant}"
            shutil.rmtree(output, ignore_errors=True)
            address, cluster = ("", [])
            if variant == "d":
                address, cluster = _start_cluster(args.workers, log)
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pyflow.bench", "--rows", str(args.rows), "--files", str(args.files),
                     "--workers", str(args.workers), "--folder", str(args.folder), "--run-variant", variant,
                     "--address", address],
                    env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
            finally:
                _stop(cluster)
            if done.returncode != 0:
                print(f"bench: variant ({variant}) failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            results[variant] = Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))
            print(
                f"bench: ({variant}) {VARIANTS[variant]}: {results[variant].seconds:.1f} s",
                flush=True,
            )
    identical = outputs_identical(args.folder, results)
    print(report(results, identical))
    if not identical:
        print("bench: the variants wrote different outputs: that is a bug", file=sys.stderr)
        return 1
    return 0


def outputs_identical(folder: Path, results: dict[str, Any]) -> bool:
    """Return whether every variant wrote the same notices.csv and rejects.csv bytes."""
    contents = {
        variant: tuple(
            (folder / f"output-{variant}" / name).read_bytes()
            for name in ("notices.csv", "rejects.csv")
        )
        for variant in results
    }
    return len(set(contents.values())) == 1


def report(results: dict[str, Measurement], identical: bool) -> str:
    """Render the results as a markdown table, with ratios to plain Python and the targets."""
    base = results.get("a")
    lines = [
        "| Variant | Wall time | Rows/s | Peak memory | Time vs (a) | Memory vs (a) | Target |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, measured in results.items():
        time_ratio = f"{measured.seconds / base.seconds:.2f}x" if base else "-"
        memory_ratio = f"{measured.peak_mb / base.peak_mb:.2f}x" if base else "-"
        target = TARGETS.get(variant)
        verdict = "-"
        if target and base:
            met = measured.seconds / base.seconds <= target
            verdict = f"<= {target:.2f}x: {'met' if met else 'not met'}"
        lines.append(
            f"| ({variant}) {VARIANTS[variant]} | {measured.seconds:.1f} s | "
            f"{measured.rows_per_second:,.0f} | {measured.peak_mb:,.0f} MB | {time_ratio} | "
            f"{memory_ratio} | {verdict} |"
        )
    lines.append("")
    lines.append(f"Outputs identical across variants: {'yes' if identical else 'NO'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
