"""The example's test helpers: its sample, the real data beside the checkout, its command line.

pyflow-kit's pytest plugin gives the rest (``prefect_server``, ``run_flow``, ``gcs_emulator``,
``http_sources``; see `pyflow_kit.testing`).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyflow_kit.testing import PrefectServer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "pyflow" / "warn" / "sample"
PUBLISHED = [
    ".latest.lock", "cache", "changes.csv", "integrated.csv", "latest.json", "notices.csv",
    "rejects.csv", "runs", "summary.json",
]  # fmt: skip
"""What a local output folder holds after a run: the pointer, its lock, the runs and the copies."""
WARN_DATA = ROOT.parent / "shared" / "warn-data"
"""The real WARN files 44 states publish, and the peer's output on them (see its README)."""


Cli = Callable[..., "subprocess.CompletedProcess[str]"]
"""Runs ``python -m pyflow`` with the options given; returns the finished process."""


@pytest.fixture
def run_cli(isolated_settings: Path, prefect_server: PrefectServer) -> Cli:
    """Run ``python -m pyflow`` in the test's folder, on the session's Prefect server."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        shutil.copy(ROOT / "prefect.toml", isolated_settings / "prefect.toml")
        return subprocess.run(
            [sys.executable, "-m", "pyflow", *args],
            cwd=isolated_settings,
            env=prefect_server.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def warn_data() -> Path:
    """The real data set beside the checkout; the test is skipped, saying so, when it is absent."""
    if not (WARN_DATA / "raw").is_dir():
        pytest.skip(
            f"the real WARN files are not here ({WARN_DATA / 'raw'}): this test reads the "
            "44 states' files from ../shared/warn-data, beside the project's checkout"
        )
    return WARN_DATA


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write CSV text to a file in the test's folder and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@dataclass
class DayTwo:
    """The changes `make_day_two` made to a folder of sources: what a comparison must find."""

    added: set[tuple[str, str]] = field(default_factory=set)
    amended: set[tuple[str, str]] = field(default_factory=set)
    removed: set[tuple[str, str]] = field(default_factory=set)
    states: set[str] = field(default_factory=set)


def make_day_two(folder: Path, summary_path: Path, every: int = 1) -> DayTwo:
    """Change every ``every``-th source of a folder the way a state's next publication may.

    In each such file (one whose header is its first line): one row's jobs go up by 7 (an
    amendment), another row is deleted (a removal), and a row for a new company is appended (an
    addition). Rows are only chosen where their company is on no other row of the file, so each
    change is one notice's. The sources' column mapping comes from the first run's summary.

    Returns:
        The (state, company) of each change, for the comparison to find.
    """
    entries = json.loads(summary_path.read_text(encoding="utf-8"))["sources"]
    made = DayTwo()
    for number, entry in enumerate(sorted(entries, key=lambda e: e["source"])):
        fields = (entry["mapping"] or {}).get("fields", {})
        path = folder / entry["source"]
        if number % every or "company" not in fields or "jobs" not in fields:
            continue
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except UnicodeDecodeError:
            continue
        header = rows[0]
        if fields["company"] not in header or fields["jobs"] not in header:
            continue
        company, jobs = header.index(fields["company"]), header.index(fields["jobs"])
        names = [row[company] if len(row) > company else "" for row in rows[1:]]
        unique = [
            index
            for index, row in enumerate(rows[1:], 1)
            if len(row) == len(header)
            and row[company].strip()
            and row[company] == row[company].strip()
            and "  " not in row[company]
            and "\n" not in row[company]
            and names.count(row[company]) == 1
            and row[jobs].strip().isdigit()
            and int(row[jobs]) > 0
        ]
        if len(unique) < 3:
            continue
        state = path.stem.upper()
        amend, remove, model = unique[0], unique[1], unique[2]
        rows[amend][jobs] = str(int(rows[amend][jobs]) + 7)
        made.amended.add((state, rows[amend][company]))
        made.removed.add((state, rows[remove][company]))
        added = list(rows[model])
        added[company] = f"Day Two Newcomer {state}"
        made.added.add((state, added[company]))
        rows = [row for index, row in enumerate(rows) if index != remove] + [added]
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        made.states.add(state)
    return made
