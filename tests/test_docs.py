"""Tests of `pyflow.docs`: the README's configuration table is generated from the settings."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT
from pyflow import docs
from pyflow.config import Settings, variable_name


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    """Each setting is one row: its variable, its default (per environment where they differ)."""
    table = docs.configuration_table()
    assert len(table.splitlines()) == 2 + len(Settings.model_fields)
    assert "| `PYFLOW_OUTPUT` | `data/output` (development), required (production) |" in table
    assert "| `PYFLOW_DEPLOYMENT_PARAMETERS` | `{}` |" in table
    assert "| `PYFLOW_KEEP_RUNS` | `10` |" in table


def test_with_configuration_table_replaces_only_what_is_between_the_markers() -> None:
    """The text around the markers is kept; a stale table between them is replaced."""
    text = f"before\n{docs.TABLE_START}\nstale\n{docs.TABLE_END}\nafter\n"
    result = docs.with_configuration_table(text)
    assert result.startswith(f"before\n{docs.TABLE_START}\n| Variable |")
    assert result.endswith(f"{docs.TABLE_END}\nafter\n")
    assert "stale" not in result


def test_docs_main_regenerates_the_table_in_place(tmp_path: Path) -> None:
    """`python -m pyflow.docs FILE` rewrites the file's table (README.md by default)."""
    readme = tmp_path / "README.md"
    readme.write_text(f"{docs.TABLE_START}\n{docs.TABLE_END}\n")
    assert docs.main([str(readme)]) == 0
    assert readme.read_text() == docs.with_configuration_table(readme.read_text())
    assert "PYFLOW_OUTPUT" in readme.read_text()


def test_readme_configuration_table_matches_the_settings() -> None:
    """The README's configuration table is the one generated from the settings (`invoke docs`)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert docs.TABLE_START in readme
    assert readme == docs.with_configuration_table(readme), "run `python -m pyflow.docs`"
    for name, field in Settings.model_fields.items():
        assert f"| `{variable_name(name)}` |" in readme
        assert field.description in readme


def test_readme_layout_names_every_module_and_each_tasks_module() -> None:
    """The layout table names every module of the template, and each invoke task's module."""
    import inspect
    import re

    from invoke import Collection

    import tasks

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    from pyflow.flow import FLOWS

    yours = {Path(inspect.getsourcefile(flow.fn) or "").resolve() for flow in FLOWS}
    modules = [
        p
        for p in (ROOT / "pyflow").rglob("*.py")
        if p.name != "__init__.py" and p.resolve() not in yours | {ROOT / "pyflow" / "flow.py"}
    ]
    missing = [
        str(p.relative_to(ROOT)) for p in modules if f"`{p.relative_to(ROOT)}`" not in layout
    ]
    assert missing == []
    hops = dict(
        re.findall(
            r"^\| ((?:`[\w-]+`(?:, )?)+) \| .*\| (`pyflow/.*|`pyproject.*) \|$", layout, re.M
        )
    )
    named = {task for cell in hops for task in re.findall(r"`([\w-]+)`", cell)}
    assert named == set(Collection.from_module(tasks).task_names)
