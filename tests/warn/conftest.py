"""The example's test helpers: its sample, the real data beside the checkout, its command line.

pyflow-kit's pytest plugin gives the rest (``prefect_server``, ``run_flow``, ``gcs_emulator``,
``http_sources``; see `pyflow_kit.testing`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pyflow_kit.testing import PrefectServer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "pyflow" / "warn" / "sample"
PUBLISHED = [".latest.lock", "latest.json", "notices.csv", "rejects.csv", "runs", "summary.json"]
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
