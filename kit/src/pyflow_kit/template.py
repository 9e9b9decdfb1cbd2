"""Make a project of the template's files with copier's answers (copier's task, `copier.yml`).

copier copies the template repository's files, less those `copier.yml` excludes, then runs
`main` in the new project with the answers. It does the same to each version it compares when
it updates a project (`invoke upgrade`), so what this writes depends on the answers and the
files alone, never on what is already there. It takes out what only the template repository
has (lines and blocks marked ``template-only``, as `pyflow_kit.scaffold` marks a flow's) and
uncomments what only a project has (``project-only``, see `keep_project_only`), takes out the
example's marked lines when the answer is no (its folders are excluded), with a first flow in
its place when the project is made (an update never writes in the team's ``pyflow/`` and
``tests/``, which `copier.yml` excludes then), and writes the answers where the project reads
them. Standard library only: it runs
with copier's Python, from the template's own ``kit/src``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pyflow_kit import scaffold
from pyflow_kit.errors import PyflowError, ScaffoldError
from pyflow_kit.project import Project

TEMPLATE_MARK = "template-only"
"""The mark of what only the template repository has (its kit, its own CI, this wiring)."""

KIT_DOCS = "kit/README.md"
"""Where the template's README links to the kit's reference; a project links to its source."""


@dataclass(frozen=True)
class Answers:
    """The answers to `copier.yml`'s questions, and where the template came from."""

    project_name: str
    description: str
    example: bool
    example_flow: str
    first_flow: str
    python_version: str
    kit_source: str
    template_url: str
    template_commit: str
    template_hash: str
    settings: dict[str, str]
    production_work_pool: str
    development_work_pool: str
    operation: str = "copy"


def kit_dependency(answers: Answers) -> str:
    """Return pyproject.toml's line for pyflow-kit: a path, else the template's own git version.

    A version tag (``v0.2.0``) is named as such; any other commit by its hash.
    """
    if answers.kit_source:
        return f"pyflow-kit = {{ path = {json.dumps(answers.kit_source)}, develop = false }}"
    pin = (
        f"tag = {json.dumps(answers.template_commit)}"
        if is_tag(answers)
        else f"rev = {json.dumps(answers.template_hash)}"
    )
    return (
        f"pyflow-kit = {{ git = {json.dumps(git_url(answers.template_url))}, {pin}, "
        'subdirectory = "kit" }'
    )


def is_tag(answers: Answers) -> bool:
    """Return whether copier copied a tag (``v0.2.0``), not a commit after one or a bare hash."""
    commit = answers.template_commit
    return "-g" not in commit and not answers.template_hash.startswith(commit)


def git_url(source: str) -> str:
    """Return a git URL for copier's source of the template (``gh:`` and ``gl:`` expanded).

    Raises:
        ScaffoldError: If the source is a relative path, which the project cannot resolve.
    """
    for short, host in (("gh:", "https://github.com/"), ("gl:", "https://gitlab.com/")):
        if source.startswith(short):
            return host + source.removeprefix(short).removesuffix(".git") + ".git"
    if "://" in source or source.startswith("git@"):
        return source
    if not Path(source).is_absolute():
        raise ScaffoldError(
            f"the template is the relative path {source!r}, which the project cannot take "
            "pyflow-kit from: give copier its absolute path or git URL, or -d kit_source=PATH"
        )
    return Path(source).as_uri()


def kit_docs(answers: Answers) -> str:
    """Return where the project's README links for the kit's reference."""
    if answers.kit_source:
        return str(Path(answers.kit_source) / "README.md")
    url = git_url(answers.template_url).removesuffix(".git")
    ref = answers.template_commit if is_tag(answers) else answers.template_hash
    return (
        f"{url}/blob/{ref}/kit/README.md" if url.startswith("https://") else f"{url}/kit/README.md"
    )


def settings_table(answers: Answers) -> str:
    """Return the ``[tool.pyflow.defaults]`` tables of the answers: the project's own defaults."""
    lines = ["", "[tool.pyflow.defaults]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in answers.settings.items()]
    for environment, pool in (
        ("development", answers.development_work_pool),
        ("production", answers.production_work_pool),
    ):
        lines += ["", f"[tool.pyflow.defaults.{environment}]", f"work-pool = {json.dumps(pool)}"]
    return "\n".join(lines) + "\n"


PROJECT_LINE = re.compile(r"^([ \t]*)(?:# project-only: (.*)|<!-- project-only: (.*) -->)$", re.M)
PROJECT_BLOCK = re.compile(r"^<!-- project-only\n(.*?)^-->\n", re.MULTILINE | re.DOTALL)


def keep_project_only(text: str) -> str:
    """Return the text with what only a project has uncommented.

    That is a line ``# project-only: TEXT`` or ``<!-- project-only: TEXT -->`` (``TEXT``
    replaces it, after the line's indentation) and a Markdown comment
    ``<!-- project-only`` ... ``-->`` (its lines replace it): the template repository's own
    files have them as comments.
    """
    text = PROJECT_LINE.sub(lambda found: found[1] + (found[2] or found[3]), text)
    return PROJECT_BLOCK.sub(r"\1", text)


def toml_string(value: str) -> str:
    """Return a TOML basic string of ``value`` (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def edit_pyproject(text: str, answers: Answers) -> str:
    """Return pyproject.toml with the project's name, description, kit, settings and Python."""
    for pattern, line in (
        (r'^name = ".*"$', f"name = {toml_string(answers.project_name)}"),
        (r'^description = ".*"$', f"description = {toml_string(answers.description)}"),
        (r"^pyflow-kit = \{.*\}$", kit_dependency(answers)),
    ):
        text = re.sub(pattern, line.replace("\\", "\\\\"), text, count=1, flags=re.M)
    earlier = r"(?ms)^\n?\[tool\.pyflow\.defaults[^\n]*\n.*?(?=^\n*\[(?!tool\.pyflow\.defaults)|\Z)"
    lines = re.sub(earlier, "", text).splitlines(keepends=True)  # applied twice, one table
    start = lines.index("[tool.pyflow]\n")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    text = "".join([*lines[:end], settings_table(answers), *lines[end:]])
    short = answers.python_version.replace(".", "")
    text = re.sub(r'(?m)^target-version = "py\d+"$', f'target-version = "py{short}"', text)
    return re.sub(
        r'(?m)^python_version = "[\d.]+"$', f'python_version = "{answers.python_version}"', text
    )


def edit_python(text: str, version: str) -> str:
    """Return a workflow or Dockerfile with the project's Python version where one is pinned."""
    text = re.sub(r'(?m)^(\s*python-version: )"3\.\d+"$', rf'\1"{version}"', text)
    return re.sub(r"(?m)^(ARG BASE_IMAGE=python:)3\.\d+(-)", rf"\g<1>{version}\2", text)


def edit_readme(text: str, answers: Answers) -> str:
    """Return the README with the project's name and description, linking to the kit's docs."""
    text = re.sub(r"(?m)\A# .*$", f"# {answers.project_name}", text, count=1)
    text = text.replace("{{ description }}", answers.description)
    return text.replace(f"]({KIT_DOCS}", f"]({kit_docs(answers)}")


def apply(root: Path, answers: Answers) -> list[Path]:
    """Make the template's files in ``root`` the project the answers describe; return the changed.

    Raises:
        ScaffoldError: If the first flow's name is not a flow name, or the kit has no source.
    """
    changed: list[Path] = []
    for path in scaffold.marked_files(root):
        text = original = path.read_text(encoding="utf-8")
        text = keep_project_only(scaffold.strip_marked(text, TEMPLATE_MARK))
        if not answers.example:
            text = scaffold.strip_marked(text, f"flow: {answers.example_flow}")
        if path.name == "pyproject.toml" and path.parent == root:
            text = edit_pyproject(text, answers)
        elif path.name == "README.md" and path.parent == root:
            text = edit_readme(text, answers)
        elif path.name == "Dockerfile" or ".github" in path.parts:
            text = edit_python(text, answers.python_version)
        if path.suffix == ".py":  # as ruff formats it, where a marked block left blank lines
            text = re.sub(r"\n{4,}", "\n\n\n", text).rstrip("\n") + "\n"
        if text != original:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    if not answers.example and answers.operation == "copy":  # an update leaves pyflow/ alone
        scaffold.check_name(answers.first_flow)
        project = Project(root=root, package="pyflow", settings="", default_flow=None)
        made = scaffold.files(answers.first_flow, project)
        scaffold.write(made)
        changed += list(made.files)
    return changed


def parser() -> argparse.ArgumentParser:
    """Return the command line copier's task gives: one option per answer."""
    found = argparse.ArgumentParser(prog="pyflow_kit.template", description=__doc__)
    for name in Answers.__dataclass_fields__:
        if name not in ("settings", "example", "operation"):
            found.add_argument(f"--{name.replace('_', '-')}", default="")
    found.add_argument("--operation", choices=("copy", "update"), default="copy")
    found.add_argument("--example", choices=("True", "False"), required=True)
    found.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    return found


def main(argv: list[str] | None = None) -> int:
    """Apply copier's answers to the project in the working folder; one message if it cannot."""
    args = vars(parser().parse_args(argv))
    settings = dict(item.split("=", 1) for item in args.pop("setting"))
    answers = Answers(**{**args, "example": args["example"] == "True", "settings": settings})
    try:
        apply(Path.cwd(), answers)
    except PyflowError as error:
        print(f"pyflow template: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
