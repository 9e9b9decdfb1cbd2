"""Tests of the benchmark's input generator and report."""

from __future__ import annotations

from pathlib import Path

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
    merged = etl.merge_outputs(parts, str(tmp_path / "out"))
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
