"""Projects made from the template with copier, and updated with `invoke upgrade`.

The quick tests apply `pyflow_kit.template` to small trees. The heavy one does what a team does,
offline, in temporary folders: it tags a copy of this repository as two versions, makes a
project with the example and one without from the first, edits them, and upgrades both.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import TEMPLATE, locked_version, tracked_files
from pyflow_kit import bootstrap, template
from pyflow_kit.errors import ScaffoldError
from pyflow_kit.testing import free_ports


def answers(**changed: object) -> template.Answers:
    """Return copier's default answers for a project named acme-layoffs, with ``changed``."""
    given: dict[str, object] = {
        "project_name": "acme-layoffs",
        "description": "Layoff notices, consolidated.",
        "example": True,
        "example_flow": "warn",
        "first_flow": "hello",
        "python_version": "3.12",
        "kit_source": "",
        "template_url": "gh:acme/pyflow",
        "template_commit": "v0.2.0",
        "template_hash": "0123abcd" * 5,
        "settings": {"gcp-project": "acme-data", "artifact-repository": "layoffs"},
        "production_work_pool": "acme-gke",
        "development_work_pool": "acme-local",
    }
    return template.Answers(**{**given, **changed})  # type: ignore[arg-type]


PYPROJECT = """[project]
name = "pyflow"
description = "A pyflow project."
dependencies = [
    "pyflow-kit",
    "polars (>=2.1,<3)",  # flow: warn
]

[tool.poetry.dependencies]
# The kit beside the project.  # template-only
pyflow-kit = { path = "kit", develop = true }

[tool.pyflow]
package = "pyflow"
default-flow = "warn-notices"  # flow: warn

[tool.ruff]
target-version = "py311"

[tool.mypy]
files = ["pyflow", "kit/src"]  # template-only
# project-only: files = ["pyflow"]
python_version = "3.11"
"""


def template_tree(root: Path) -> Path:
    """Write a small template: pyproject.toml, a README, a Dockerfile, a workflow, tasks.py."""
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / "pyflow").mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "README.md").write_text(
        "# pyflow\n\n<!-- template-only -->\nThe template.\n<!-- /template-only -->\n"
        "<!-- project-only\n{{ description }}\n-->\n"
        "| `kit/` | the kit |  <!-- template-only -->\n"
        "<!-- project-only: | `.copier-answers.yml` | answers | -->\n"
        "See [the kit](kit/README.md#settings).\n"
        "<!-- flow: warn -->\n## The example\n<!-- /flow: warn -->\n"
    )
    (root / "Dockerfile").write_text(
        "ARG BASE_IMAGE=python:3.11-slim-bookworm\n# <template-only>\nCOPY kit/src/ ./kit/src/\n"
        "# </template-only>\nRUN python -m compileall -q pyflow kit/src  # template-only\n"
        "# project-only: RUN python -m compileall -q pyflow\n"
    )
    (root / ".github" / "workflows" / "ci.yml").write_text(
        'jobs:\n  test:\n    steps:\n      - with:\n          python-version: "3.11"\n'
        "  # <template-only>\n  kit:\n    steps: []\n  # </template-only>\n"
    )
    (root / "tasks.py").write_text(
        '"""Tasks."""\n\nfrom invoke import task  # template-only\n'
        "from pyflow.warn import BENCH  # flow: warn\n\nns = 1\n\n\n"
        "# <template-only>\n@task\ndef test_kit(c):\n    pass\n# </template-only>\n"
    )
    return root


def test_apply_makes_the_template_a_project_with_the_answers(tmp_path: Path) -> None:
    """Template-only parts go, project-only ones appear, the answers land where they are read."""
    root = template_tree(tmp_path)
    template.apply(root, answers())
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "acme-layoffs"
    assert pyproject["project"]["description"] == "Layoff notices, consolidated."
    assert pyproject["tool"]["poetry"]["dependencies"]["pyflow-kit"] == {
        "git": "https://github.com/acme/pyflow.git",
        "tag": "v0.2.0",
        "subdirectory": "kit",
    }
    assert pyproject["tool"]["pyflow"] == {
        "package": "pyflow",
        "default-flow": "warn-notices",
        "defaults": {
            "gcp-project": "acme-data",
            "artifact-repository": "layoffs",
            "development": {"work-pool": "acme-local"},
            "production": {"work-pool": "acme-gke"},
        },
    }
    assert pyproject["tool"]["mypy"] == {"files": ["pyflow"], "python_version": "3.12"}
    assert pyproject["tool"]["ruff"]["target-version"] == "py312"
    assert (root / "README.md").read_text() == (
        "# acme-layoffs\n\nLayoff notices, consolidated.\n"
        "| `.copier-answers.yml` | answers |\n"
        "See [the kit](https://github.com/acme/pyflow/blob/v0.2.0/kit/README.md#settings).\n"
        "<!-- flow: warn -->\n## The example\n<!-- /flow: warn -->\n"
    )
    assert (root / "Dockerfile").read_text() == (
        "ARG BASE_IMAGE=python:3.12-slim-bookworm\nRUN python -m compileall -q pyflow\n"
    )
    assert (root / ".github" / "workflows" / "ci.yml").read_text() == (
        'jobs:\n  test:\n    steps:\n      - with:\n          python-version: "3.12"\n'
    )
    assert (root / "tasks.py").read_text() == (
        '"""Tasks."""\n\nfrom pyflow.warn import BENCH  # flow: warn\n\nns = 1\n'
    )
    assert not (root / "pyflow" / "hello").exists(), "with the example, no first flow"


def test_apply_without_the_example_leaves_none_of_it_and_writes_a_first_flow(
    tmp_path: Path,
) -> None:
    """No example: its marked lines go, and the first flow is written, on copy only."""
    root = template_tree(tmp_path)
    changed = template.apply(root, answers(example=False, first_flow="daily_report"))
    for path in (root / "pyproject.toml", root / "README.md", root / "tasks.py"):
        assert not re.search(r"(?i)\bwarn\b", path.read_text()), path.name
    assert (root / "pyflow" / "daily_report" / "flow.py") in changed
    assert '@flow(name="daily-report")' in (root / "pyflow/daily_report/flow.py").read_text()
    assert (root / "tests" / "daily_report" / "test_daily_report_flow.py").is_file()
    again = template_tree(tmp_path / "again")
    template.apply(again, answers(example=False, operation="update"))
    assert not (again / "pyflow" / "hello").exists(), "an update writes nothing in pyflow/"


def test_apply_refuses_a_first_flow_that_is_no_flow_name(tmp_path: Path) -> None:
    """A first flow named against the convention stops with the rule, and writes no flow."""
    root = template_tree(tmp_path)
    with pytest.raises(ScaffoldError, match="'Daily' is not a flow name"):
        template.apply(root, answers(example=False, first_flow="Daily"))
    assert not (root / "pyflow" / "Daily").exists()


def test_apply_to_a_project_it_made_changes_nothing(tmp_path: Path) -> None:
    """Applied again, as to files an update merged, it keeps one defaults table and all else."""
    root = template_tree(tmp_path)
    template.apply(root, answers(example=False))
    made = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    assert template.apply(root, answers(example=False, operation="update")) == []
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == made


def test_apply_refuses_a_relative_template_path_without_a_kit_source(tmp_path: Path) -> None:
    """The kit's git source must be absolute: a relative template path is refused, with the fix."""
    root = template_tree(tmp_path)
    with pytest.raises(ScaffoldError, match=r"the template is the relative path '\.\./pyflow'"):
        template.apply(root, answers(template_url="../pyflow"))
    template.apply(root, answers(template_url="../pyflow", kit_source="/src/pyflow/kit"))


@pytest.mark.parametrize(
    ("changed", "line"),
    [
        ({"kit_source": "/src/pyflow/kit"}, '{ path = "/src/pyflow/kit", develop = false }'),
        (
            {},
            '{ git = "https://github.com/acme/pyflow.git", tag = "v0.2.0", subdirectory = "kit" }',
        ),
        (
            {"template_commit": "v0.2.0-3-g0123abc", "template_url": "/srv/pyflow"},
            f'{{ git = "file:///srv/pyflow", rev = "{"0123abcd" * 5}", subdirectory = "kit" }}',
        ),
        (
            {"template_commit": "0123abc"},
            '{ git = "https://github.com/acme/pyflow.git", '
            f'rev = "{"0123abcd" * 5}", subdirectory = "kit" }}',
        ),
    ],
)
def test_kit_dependency_is_the_path_else_the_templates_version(
    changed: dict[str, str], line: str
) -> None:
    """A path stays a path; else the template's git repository, by tag, or by commit between tags."""
    assert template.kit_dependency(answers(**changed)) == f"pyflow-kit = {line}"


def test_main_reads_copiers_answers_and_says_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line copier runs: one option per answer; a bad answer is one message."""
    template_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = [
        "--operation=copy",
        "--project-name=acme",
        "--example=False",
        "--example-flow=warn",
        "--kit-source=/src/pyflow/kit",
        "--first-flow=9lives",
        "--setting=gcp-project=acme-data",
    ]
    assert template.main(argv) == 1
    assert capsys.readouterr().err == (
        "pyflow template: '9lives' is not a flow name: use lower-case letters, digits and _ "
        "(not first), such as daily_report\n"
    )
    assert template.main([*argv[:-2], "--first-flow=hello", *argv[-1:]]) == 0
    assert (tmp_path / "pyflow" / "hello" / "flow.py").is_file()
    defaults = tomllib.loads((tmp_path / "pyproject.toml").read_text())["tool"]["pyflow"]
    assert defaults["defaults"]["gcp-project"] == "acme-data"


@pytest.mark.slow
def test_a_project_takes_the_kit_from_the_templates_git_version(tmp_path: Path) -> None:
    """By default the kit is the template repository's, at the tag copied.

    Before `invoke setup`, invoke loads its tasks from a copy in .kit/; Poetry locks it from git.
    """
    source = template_copy(tmp_path / "pyflow")
    project = make_project(tmp_path, source, None, "acme", "-d", "example=false")
    spec = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["poetry"]
    assert spec["dependencies"]["pyflow-kit"] == {
        "git": source.as_uri(),
        "tag": VERSIONS[0],
        "subdirectory": "kit",
    }
    env = new_user_env(invoke_only(tmp_path / "tools") / "bin")
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace(source.as_uri(), (tmp_path / "nowhere").as_uri()))
    failed = invoke(project, env, "--list", ok=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[-1] == (
        f"pyflow: cannot fetch pyflow-kit from git+{(tmp_path / 'nowhere').as_uri()}"
        f"@{VERSIONS[0]}#subdirectory=kit: check the network and its git URL"
    )
    fetched = project / ".kit"
    assert not [path for path in fetched.glob("*") if path.suffix != ".partial"], "none half-made"
    pyproject.write_text(text)
    listed = invoke(project, env, "--list")
    assert re.search(r"(?m)^  upgrade +Update the project to a newer template", listed.stdout)
    [kit] = [path for path in fetched.iterdir() if path.suffix != ".partial"]
    assert (kit / "pyflow_kit" / "collection.py").is_file()
    assert git(project, "status", "--porcelain") == "", ".kit/ is ignored"
    poetry = shlex.split(bootstrap.find_poetry())
    env = bootstrap.install_env(bootstrap.poetry_env(bootstrap.pip_index_url()))
    subprocess.run([*poetry, "lock"], cwd=project, env=env, check=True, capture_output=True)
    lock = tomllib.loads((project / "poetry.lock").read_text())
    locked = next(item for item in lock["package"] if item["name"] == "pyflow-kit")
    assert locked["source"]["type"] == "git"
    commit = git(source, "rev-parse", f"{VERSIONS[0]}^{{commit}}").strip()
    assert (locked["source"]["reference"], locked["source"]["resolved_reference"]) == (
        VERSIONS[0],
        commit,
    )


# --- A team's life: copier copy, edits, invoke upgrade (heavy) --------------------------------

VERSIONS = ("v0.1.0", "v0.1.1")
DOCKERFILE_CHANGE = "# The image of a later template version."
README_CHANGE = "Quick start, as the later template says it."
TEAM_README = "Acme's layoff desk runs these flows every morning."
TEAM_FLOW_LINE = "# Acme's own change to its flow."
SUMMARIES = {
    "with-example": r"(?m)^pyflow: read [\d,]+ rows from \d+ sources: [\d,]+ notices, ",
    "without-example": r"(?m)^pyflow: flow 'hello' completed; it returned 6$",
}
"""The last lines of `invoke run` in each project: what the run did."""


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` as a team member; return what it prints."""
    identity = ["-c", "user.name=Team", "-c", "user.email=team@example.org"]
    done = subprocess.run(
        ["git", *identity, *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    return done.stdout


def new_user_env(invoke_bin: Path, **extra: str) -> dict[str, str]:
    """Return a shell's environment on a new machine: invoke installed, no project settings.

    Nothing of this test session reaches it: no Prefect or pyflow settings, no coverage, no
    active virtual environment, not CI (a team's first `invoke setup` is on its own machine).
    """
    dropped = ("PREFECT_", "PYFLOW_", "COV", "PYTEST", "INVOKE_", "VIRTUAL_ENV", "PYTHONPATH")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env.pop("CI", None)
    here = Path(sys.executable).parent
    path = [folder for folder in env["PATH"].split(os.pathsep) if Path(folder) != here]
    return {**env, "PATH": os.pathsep.join([str(invoke_bin), *path]), **extra}


def invoke(
    project: Path, env: dict[str, str], *args: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``invoke ARGS`` in a project as its team does; check it succeeded, with no traceback."""
    done = subprocess.run(
        ["invoke", *args], cwd=project, env=env, capture_output=True, text=True, timeout=1500
    )
    output = done.stdout + done.stderr
    if ok:
        assert done.returncode == 0, f"invoke {' '.join(args)} in {project.name}:\n{output}"
        assert "Traceback" not in output, output
    return done


def tag_template(source: Path, version: str) -> None:
    """Commit the template copy's files and tag them as ``version``."""
    git(source, "add", "-A")
    git(source, "commit", "-qm", f"pyflow {version}")
    git(source, "tag", version)


def release_second_version(source: Path) -> None:
    """Change a template-owned file, the README's template part and the kit; tag the result."""
    with (source / "Dockerfile").open("a") as dockerfile:
        dockerfile.write(f"{DOCKERFILE_CHANGE}\n")
    readme = source / "README.md"
    text = readme.read_text()
    readme.write_text(text.replace("## Quick start\n", f"## Quick start\n\n{README_CHANGE}\n", 1))
    old, new = kit_versions(source)
    for path, line in (
        (source / "kit" / "pyproject.toml", 'version = "{}"'),
        (source / "kit" / "src" / "pyflow_kit" / "__init__.py", '__version__ = "{}"'),
    ):
        text = path.read_text()
        assert line.format(old) in text, f"{path.name} holds the kit's version {old}"
        path.write_text(text.replace(line.format(old), line.format(new), 1))
    tag_template(source, VERSIONS[1])


def kit_versions(source: Path) -> tuple[str, str]:
    """Return the kit's version in a template copy, and the next patch version after it."""
    version = tomllib.loads((source / "kit" / "pyproject.toml").read_text())["project"]["version"]
    major, minor, patch = version.split(".")
    return version, f"{major}.{minor}.{int(patch) + 1}"


def template_copy(source: Path) -> Path:
    """Copy this repository's files but the kit's tests to ``source``; tag the first version."""
    for name in tracked_files(TEMPLATE):
        if not name.startswith("kit/tests/"):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(TEMPLATE / name, source / name)
    git(source, "init", "-q", "-b", "main")
    tag_template(source, VERSIONS[0])
    return source


def invoke_only(folder: Path) -> Path:
    """Make a Python environment with invoke alone, as `pip install invoke` gives a new user."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"invoke=={locked_version('invoke')}"], check=True, timeout=300)
    return folder


def make_project(tmp_path: Path, source: Path, kit: Path | None, name: str, *data: str) -> Path:
    """Make a project of the template's first version with copier, as the README says."""
    copier = Path(sys.executable).parent / "copier"
    command = [str(copier), "copy", "--trust", "--defaults", "--vcs-ref", VERSIONS[0]]
    command += [*(["-d", f"kit_source={kit}"] if kit else []), *data]
    command += [str(source), str(tmp_path / name)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    project = tmp_path / name
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "A new pyflow project")
    return project


def owned_lines(project: Path) -> int:
    """Return the lines of the files a project's repository holds, but for poetry.lock."""
    names = git(project, "ls-files").split()
    return sum(
        len((project / name).read_bytes().splitlines()) for name in names if name != "poetry.lock"
    )


def fake_gh(folder: Path) -> Path:
    """Write a `gh` that records its arguments (GitHub cannot be reached from here)."""
    folder.mkdir()
    gh = folder / "gh"
    gh.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"with open({str(folder / 'calls')!r}, 'a') as calls:\n"
        "    calls.write(repr(sys.argv[1:]) + '\\n')\n"
    )
    gh.chmod(gh.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.mark.slow
@pytest.mark.heavy
def test_projects_from_copier_upgrade_and_keep_the_teams_edits(tmp_path: Path) -> None:
    """A team makes projects with copier, edits them, upgrades: both its and the template's stay.

    One project has the example and one has not; in each, after the upgrade, `invoke check`,
    `invoke lint` and `invoke test` pass, and `invoke run` printed its summary before.
    """
    source = template_copy(tmp_path / "pyflow")
    checkout = tmp_path / "checkout"  # the team's clone of the template, for its kit
    git(tmp_path, "clone", "-q", "--branch", VERSIONS[0], str(source), str(checkout))
    tools = invoke_only(tmp_path / "tools")
    gh = fake_gh(tmp_path / "gh")

    projects = {
        "with-example": make_project(tmp_path, source, checkout / "kit", "with-example"),
        "without-example": make_project(
            tmp_path, source, checkout / "kit", "without-example", "-d", "example=false"
        ),
    }
    bare = projects["without-example"]
    assert not [name for name in git(bare, "ls-files").split() if "warn" in name]
    for name in ("pyproject.toml", "README.md", "tasks.py", ".pre-commit-config.yaml"):
        assert not re.search(r"(?i)\bwarn\b", (bare / name).read_text()), name
    assert "polars" not in (bare / "pyproject.toml").read_text(), "the example's dependency"
    assert owned_lines(bare) <= 2000, f"{owned_lines(bare)} lines to own without the example"

    ports = dict(zip(projects, map(str, free_ports(2)), strict=True))
    team_files = {"with-example": "pyflow/warn/flow.py", "without-example": "pyflow/hello/flow.py"}
    try:
        for name, project in projects.items():
            env = new_user_env(tools / "bin", PYFLOW_SERVER_PORT=ports[name])
            # The README's quick start, then the team commits the lock `invoke setup` made.
            ran = invoke(project, env, "setup", "run")
            assert re.search(SUMMARIES[name], ran.stdout), ran.stdout
            assert "ERROR" not in ran.stdout + ran.stderr
            git(project, "add", "-A")
            git(project, "commit", "-qm", "Lock")
            locked = {
                item["name"]
                for item in tomllib.loads((project / "poetry.lock").read_text())["package"]
            }
            assert ("polars" in locked) == (name == "with-example"), "the example's dependency"
            # The team's edits: its flow, and its section of the README.
            flow = project / team_files[name]
            flow.write_text(f"{TEAM_FLOW_LINE}\n{flow.read_text()}")
            readme = project / "README.md"
            placeholder = re.search(r"(?s)## About this project\n\n(.*?)\n\n", readme.read_text())
            assert placeholder, "the README has the team's section"
            readme.write_text(readme.read_text().replace(placeholder[1], TEAM_README))
            git(project, "commit", "-qam", "The team's own work")
        kits = kit_versions(source)
        release_second_version(source)
        git(checkout, "fetch", "-q", "--tags")
        git(checkout, "checkout", "-q", VERSIONS[1])
        for name, project in projects.items():
            env = new_user_env(tools / "bin", PYFLOW_SERVER_PORT=ports[name])
            env["PATH"] = os.pathsep.join([str(gh), env["PATH"]])
            origin = tmp_path / f"{name}.git"  # the team's GitHub repository
            git(tmp_path, "init", "-q", "--bare", str(origin))
            git(project, "remote", "add", "origin", str(origin))
            upgraded = invoke(project, env, "upgrade", "--to", VERSIONS[1])
            assert (
                f"pyflow upgrade: template {VERSIONS[0]} -> {VERSIONS[1]}, "
                f"pyflow-kit {kits[0]} -> {kits[1]}" in upgraded.stdout
            ), upgraded.stdout
            proposed = invoke(project, env, "upgrade-pr")
            assert "Traceback" not in proposed.stdout + proposed.stderr
            branch = f"template-update/{VERSIONS[1]}"
            assert git(project, "branch", "--show-current").strip() == branch
            assert git(origin, "log", "--format=%s", "-1", branch).strip() == (
                f"Update from the pyflow template {VERSIONS[1]}"
            )
            calls = (gh / "calls").read_text().splitlines()
            assert calls[-2:] == [
                "['auth', 'setup-git']",
                repr(
                    [
                        "pr", "create", "--head", branch, "--title",
                        f"Update from the pyflow template {VERSIONS[1]}",
                        "--body", _pull_request_body(),
                    ]
                ),
            ]  # fmt: skip
            assert (project / "Dockerfile").read_text().endswith(f"{DOCKERFILE_CHANGE}\n")
            readme = (project / "README.md").read_text()
            assert README_CHANGE in readme and TEAM_README in readme
            assert (project / team_files[name]).read_text().startswith(f"{TEAM_FLOW_LINE}\n")
            assert f"_commit: {VERSIONS[1]}" in (project / ".copier-answers.yml").read_text()
            lock = tomllib.loads((project / "poetry.lock").read_text())
            kit = next(item for item in lock["package"] if item["name"] == "pyflow-kit")
            assert kit["version"] == kits[1]
            assert not list(project.rglob("*.rej")), "no hunk of the update was left out"
            for task in ("check", "lint", "test"):
                invoke(project, env, task)
        assert not list((bare / "pyflow").glob("warn*")), "the update brought no example back"
    finally:
        for name, project in projects.items():
            if (project / ".venv").is_dir():
                subprocess.run(
                    ["invoke", "server", "--stop"],
                    cwd=project,
                    env=new_user_env(tools / "bin", PYFLOW_SERVER_PORT=ports[name]),
                    capture_output=True,
                    check=False,
                    timeout=120,
                )


def _pull_request_body() -> str:
    """Return the body `invoke upgrade-pr` gives its pull request."""
    from pyflow_kit.collection import PULL_REQUEST_BODY

    return PULL_REQUEST_BODY
