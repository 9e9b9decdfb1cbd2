"""Tests of `pyflow_kit.docs`: the READMEs' generated parts come from the declarations."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import TEMPLATE
from pyflow_kit import commands, docs
from pyflow_kit.settings import Settings, variable_name

READMES = (TEMPLATE / "README.md", TEMPLATE / "kit" / "README.md")
"""The project's README (settings table) and the kit's (settings table, tasks reference)."""


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    """Each setting is one row: its variable, its default (per environment where they differ)."""
    table = docs.configuration_table()
    assert len(table.splitlines()) == 2 + len(Settings.model_fields)
    assert "| `PYFLOW_OUTPUT` | `data/output` (development), required (production) |" in table
    assert "| `PYFLOW_DEPLOYMENT_PARAMETERS` | `{}` |" in table
    assert "| `PYFLOW_KEEP_RUNS` | `10` |" in table


def test_tasks_reference_lists_every_task_and_option_as_declared() -> None:
    """Each command is a section: `invoke TASK`, its summary, what it runs, each option's help."""
    reference = docs.tasks_reference()
    for command in commands.COMMANDS:
        assert f"#### `invoke {command.task}`\n\n{command.summary} Runs `python -m " in reference
        for option in command.options:
            if option.name != commands.HOME:
                name = option.name if option.positional else option.flag
                assert f"- `{name}`: {option.help}\n" in reference
    assert "\n\n\n" not in reference


def test_generated_parts_replace_only_what_is_between_their_markers() -> None:
    """The text around the markers is kept; stale parts between them are replaced."""
    text = (
        f"before\n{docs.TABLE_START}\nstale\n{docs.TABLE_END}\n"
        f"middle\n{docs.TASKS_START}\nstale\n{docs.TASKS_END}\nafter\n"
    )
    result = docs.with_generated_parts(text)
    assert result.startswith(f"before\n{docs.TABLE_START}\n| Variable |")
    assert f"{docs.TABLE_END}\nmiddle\n{docs.TASKS_START}\n#### `invoke run`" in result
    assert result.endswith(f"{docs.TASKS_END}\nafter\n")
    assert "stale" not in result
    assert docs.with_generated_parts("no markers\n") == "no markers\n"


def test_docs_main_regenerates_the_files_in_place(tmp_path: Path) -> None:
    """`python -m pyflow_kit.docs FILE...` rewrites each file's generated parts."""
    readme = tmp_path / "README.md"
    readme.write_text(f"{docs.TABLE_START}\n{docs.TABLE_END}\n")
    assert docs.main([str(readme)]) == 0
    assert readme.read_text() == docs.with_generated_parts(readme.read_text())
    assert "PYFLOW_OUTPUT" in readme.read_text()


def test_readmes_generated_parts_are_up_to_date() -> None:
    """Both READMEs hold what the generator writes (`python -m pyflow_kit.docs FILE`)."""
    for path in READMES:
        text = path.read_text(encoding="utf-8")
        assert docs.TABLE_START in text, path
        assert text == docs.with_generated_parts(text), f"run `python -m pyflow_kit.docs {path}`"
    kit_readme = READMES[1].read_text(encoding="utf-8")
    assert docs.TASKS_START in kit_readme
    for name, field in Settings.model_fields.items():
        assert f"| `{variable_name(name)}` |" in kit_readme
        assert field.description in kit_readme


def test_readme_layout_names_every_file_and_folder_a_team_owns() -> None:
    """The root README's layout names each top-level file and folder of the project."""
    readme = READMES[0].read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=TEMPLATE,
        capture_output=True,
        check=True,
    ).stdout.decode()
    tops = {name.split("/")[0] for name in listed.split("\0") if name}
    named = set(re.findall(r"`([^`]+?)/?`", layout))
    missing = sorted(
        top
        for top in tops - {".gitignore", ".gitattributes"}
        if top not in named and not any(entry.startswith(f"{top}/") for entry in named)
    )
    assert missing == []


def test_every_kit_task_is_in_the_kits_readme() -> None:
    """The kit's README describes every task of the kit, the tool tasks included."""
    from pyflow_kit import collection

    readme = READMES[1].read_text(encoding="utf-8")
    for name in collection.namespace().task_names:
        assert f"`invoke {name}`" in readme or f"`{name}`" in readme, name
