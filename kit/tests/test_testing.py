"""Tests of the kit's pytest plugin, run as a project runs it: pytest in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import project_env

pytestmark = pytest.mark.slow

RECORDER = """
import os
from pathlib import Path

def test_records_the_server(prefect_server):
    from prefect.settings import PREFECT_API_URL
    assert PREFECT_API_URL.value() == prefect_server.api_url
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    Path(os.environ["RECORDS"], worker).write_text(f"{prefect_server.api_url} {prefect_server.home}")
"""


def test_prefect_server_is_one_for_the_whole_run_and_stops_with_it(tmp_path: Path) -> None:
    """Two pytest-xdist workers get the same real server; it answers, and is gone after the run."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_recorder.py").write_text(RECORDER)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    records = tmp_path / "records"
    records.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "each", "tests"],
        cwd=tmp_path, env=project_env(RECORDS=str(records)), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    seen = {path.name: path.read_text().split() for path in records.iterdir()}
    assert sorted(seen) == ["gw0", "gw1"]
    assert seen["gw0"] == seen["gw1"], "both workers used one server"
    api_url, home = seen["gw0"]
    assert not Path(home).exists(), "the run's server folder is removed"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{api_url}/health", timeout=2)
