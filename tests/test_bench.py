"""Tests of the benchmark's input generator and report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from pyflow import bench, etl
from pyflow.schema import load_aliases


def test_generate_is_deterministic_and_realistic(tmp_path: Path) -> None:
    """The same sizes give the same bytes; about 4 % of rows are bad and 3 % duplicates."""
    first = bench.generate(tmp_path / "a", 20_000, 3)
    second = bench.generate(tmp_path / "b", 20_000, 3)
    for one, two in zip(first, second, strict=True):
        assert Path(one.location).read_bytes() == Path(two.location).read_bytes()
    aliases = load_aliases()
    parts = [
        etl.transform_source(etl.Partition(i, 0, s, s.location), aliases, str(tmp_path / "work"))
        for i, s in enumerate(first)
    ]
    merged = etl.merge_outputs(parts, str(tmp_path / "out"), str(tmp_path / "work"))
    rows = sum(p.rows_in for p in parts)
    assert rows == 20_000
    assert 0.03 < sum(p.rows_rejected for p in parts) / rows < 0.05
    assert 0.02 < merged.rows_duplicate / rows < 0.04


def test_report_gives_ratios_to_plain_python_and_the_verdicts() -> None:
    """Each row shows its ratio to (a) and whether its target is met."""
    results = {
        "a": bench.Measurement("a", 10.0, 1_000_000, 200.0),
        "b": bench.Measurement("b", 10.5, 1_000_000, 250.0),
        "d": bench.Measurement("d", 7.0, 1_000_000, 180.0),
    }
    table = bench.report(results, identical=True)
    assert (
        "| (b) flow, thread runner | 10.5 s | 95,238 | 250 MB | 1.05x | 1.25x | <= 1.10x: met |"
        in table
    )
    assert (
        "| (d) flow, running Dask cluster | 7.0 s | 142,857 | 180 MB | 0.70x | 0.90x | <= 0.60x: not met |"
        in table
    )
    assert table.endswith("Outputs identical across variants: yes")


@pytest.mark.slow
def test_bench_runs_all_four_variants_and_checks_their_outputs(tmp_path: Path) -> None:
    """`python -m pyflow.bench` runs a, b, c and d, prints the table, and the outputs agree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYFLOW_"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyflow.bench",
            "--rows",
            "3000",
            "--files",
            "2",
            "--folder",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| (")]
    assert [line.split(")")[0] for line in table] == ["| (a", "| (b", "| (c", "| (d"]
    assert "Outputs identical across variants: yes" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_bench_refuses_unknown_variants(capsys: pytest.CaptureFixture[str]) -> None:
    """--variants takes letters of abcd only."""
    with pytest.raises(SystemExit) as raised:
        bench.main(["--variants", "ax"])
    assert raised.value.code == 2
    assert "'ax' is not a choice of the letters a, b, c and d" in capsys.readouterr().err
