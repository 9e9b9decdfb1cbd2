"""Tests of the benchmark's input generator, its report, and a small run of every variant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, WARN_DATA
from pyflow.warn import bench, etl
from pyflow.warn.columns import load_rules
from pyflow_kit.testing import isolated_env


def test_generate_is_deterministic_and_realistic(tmp_path: Path) -> None:
    """The same sizes give the same bytes in rows of real size, 3 % rejected, 3 % duplicates."""
    first = bench.generate(tmp_path / "a", 20_000, 4)
    second = bench.generate(tmp_path / "b", 20_000, 4)
    for one, two in zip(first, second, strict=True):
        assert Path(one.location).read_bytes() == Path(two.location).read_bytes()
    size = sum(Path(source.location).stat().st_size for source in first)
    assert 100 < size / 20_000 < 200
    summary = etl.run_local(first, str(tmp_path / "out"), load_rules(), 0)
    assert summary.rows_in == 20_000
    assert 0.02 < summary.rows_rejected / summary.rows_in < 0.04
    assert 0.02 < summary.rows_duplicate / summary.rows_in < 0.04
    for entry in summary.sources:
        assert set(entry["mapping"]["fields"]) == {
            "company",
            "notice_date",
            "effective_date",
            "jobs",
            "city",
        }


def test_report_gives_ratios_and_verdicts_against_each_target() -> None:
    """Each row shows its ratio to (a) and whether its own target is met."""
    results = {
        "0": bench.Measurement("0", 2.0, 1_000_000, 20.0),
        "a": bench.Measurement("a", 1.8, 1_000_000, 400.0),
        "b": bench.Measurement("b", 2.1, 1_000_000, 500.0),
        "a1": bench.Measurement("a1", 3.0, 1_000_000, 380.0),
        "p": bench.Measurement("p", 1.8, 1_000_000, 350.0),
        "d": bench.Measurement("d", 2.1, 1_000_000, 300.0),
        "d1": bench.Measurement("d1", 3.4, 1_000_000, 310.0),
    }
    table = bench.report(results, identical=True)
    assert (
        "| (a) plain Python, sequential | 1.8 s | 555,556 | 400 MB | 1.00x | 1.00x | <= 1.00x (0): 0.90x, met |"
        in table
    )
    assert (
        "| (b) flow, thread runner | 2.1 s | 476,190 | 500 MB | 1.17x | 1.25x | <= 1.10x (a): 1.17x, not met |"
        in table
    )
    assert (
        "| (d) flow, running Dask cluster | 2.1 s | 476,190 | 300 MB | 1.17x | 0.75x | <= 0.60x (a1): 0.70x, not met |"
        in table
    )
    assert "| 1.00x | 0.88x | the floor of (d) here: 0.60x (a1) |" in table
    assert "| 1.89x | 0.78x | the orchestration's own cost: +0.4 s over (a1) |" in table
    assert table.endswith("Outputs identical across the flow variants: yes")


@pytest.mark.slow
@pytest.mark.heavy
def test_bench_runs_every_variant_and_checks_their_outputs(tmp_path: Path) -> None:
    """`python -m pyflow.warn.bench` runs every variant, prints the table, and the outputs agree."""
    env = isolated_env()
    result = subprocess.run(
        [sys.executable, "-m", "pyflow.warn.bench", "--rows", "3000", "--files", "2",
         "--folder", str(tmp_path), "--real-data", str(SAMPLE)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| (")]
    assert [line.split(")")[0] for line in table] == [
        "| (0", "| (a", "| (b", "| (a1", "| (p", "| (c", "| (d", "| (d1", "| (e", "| (e2", "| (r",
    ]  # fmt: skip
    assert "| (e) 9 real state files, python -m pyflow |" in result.stdout
    assert "| (e2) 9 real state files again (9 reused), python -m pyflow; imports " in result.stdout
    assert "(tasks: " in result.stdout and "transform-source" in result.stdout
    assert "| (r) invoke run on the bundled sample, the second run | " in result.stdout
    assert "Outputs identical across the flow variants: yes" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_bench_runs_chosen_variants_on_the_running_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--variants 0,a,b runs those three, each in its own process, and their outputs agree."""
    folder = tmp_path / "bench"
    code = bench.main(
        ["--variants", "0,a,b", "--rows", "2000", "--files", "2", "--folder", str(folder)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    table = [line.split(")")[0] for line in out.splitlines() if line.startswith("| (")]
    assert table == ["| (0", "| (a", "| (b"]
    assert "| (a) plain Python, sequential | " in out and "| 1.00x | 1.00x |" in out
    assert "Outputs identical across the flow variants: yes" in out
    left = sorted(path.name for path in folder.iterdir())
    assert left == ["input-2000x2"], "each variant's output is removed once measured"


def test_bench_reads_the_real_files_beside_the_checkout() -> None:
    """Line (e) reads ../shared/warn-data/raw, where the tests read the real files too."""
    assert bench.REAL_DATA == WARN_DATA / "raw"


def test_bench_refuses_unknown_variants(capsys: pytest.CaptureFixture[str]) -> None:
    """--variants takes the variants' names only."""
    with pytest.raises(SystemExit) as raised:
        bench.main(["--variants", "ax"])
    assert raised.value.code == 2
    assert (
        "'ax' is not a list of the variants 0, a, b, a1, p, c, d, d1, e, e2, r"
        in capsys.readouterr().err
    )


def test_bench_refuses_zero_files(capsys: pytest.CaptureFixture[str]) -> None:
    """--files 0 is refused with a message, not a ZeroDivisionError."""
    with pytest.raises(SystemExit) as raised:
        bench.main(["--files", "0"])
    assert raised.value.code == 2
    assert "'0' is not a whole number of at least 1" in capsys.readouterr().err


def test_output_digest_tells_outputs_apart_by_every_byte(tmp_path: Path) -> None:
    """Two variants' outputs digest alike only when notices.csv and rejects.csv are the same."""
    for name, rejects in (("one", "r\n1\n"), ("two", "r\n1\n"), ("three", "r\n2\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notices.csv").write_text("n\n1\n")
        (tmp_path / name / "rejects.csv").write_text(rejects)
    one, two, three = (bench.output_digest(tmp_path / n) for n in ("one", "two", "three"))
    assert one == two != three
