"""The GitHub workflows and the Dependabot configuration in .github/.

They are linted with actionlint and checked against the GitHub workflow and Dependabot schemas
(check-jsonschema's bundled copies), both offline, and then read for what pyflow promises:
every step that does project work calls invoke, permissions are least-privilege, and the
release authenticates to Google with Workload Identity Federation, never a key.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT

GITHUB = ROOT / ".github"
CI = GITHUB / "workflows" / "ci.yml"
RELEASE = GITHUB / "workflows" / "release.yml"
PREVIEW = GITHUB / "workflows" / "preview.yml"
DEPENDABOT = GITHUB / "dependabot.yml"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))

OLDEST_MAJORS = {
    "actions/checkout": 7,
    "actions/setup-python": 7,
    "actions/cache": 6,
    "actions/cache/restore": 6,
    "docker/setup-buildx-action": 4,
    "docker/login-action": 4,
    "crazy-max/ghaction-github-runtime": 4,
    "google-github-actions/auth": 3,
}
"""The actions the workflows may use, and the major version each was current at (2026)."""

RELEASE_SETTINGS = {
    "PREFECT_FLOW_ENV",
    "PYFLOW_GCP_PROJECT",
    "PYFLOW_GCP_REGION",
    "PYFLOW_ARTIFACT_REPOSITORY",
    "PYFLOW_IMAGE_NAME",
    "PYFLOW_OUTPUT",
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
}


def load(path: Path) -> dict[str, Any]:
    """Read a workflow; YAML 1.1 reads the key `on` as True, so it is renamed back."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    """Return every step of every job of a workflow."""
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def step_using(job_steps: list[dict[str, Any]], action: str) -> dict[str, Any]:
    """Return the one step of a job that uses an action (any version)."""
    [step] = [s for s in job_steps if s.get("uses", "").startswith(f"{action}@")]
    return step


def action_of(step: dict[str, Any]) -> tuple[str, int]:
    """Return the action a step uses and its major version, from `owner/name@vN`."""
    match = re.fullmatch(r"([\w.-]+/[\w./-]+)@v(\d+)", step["uses"])
    assert match, f"{step['uses']} is not pinned to a major version tag (owner/name@vN)"
    return match[1], int(match[2])


def tool(name: str) -> str:
    """Return the path of a command installed in this environment (next to its Python)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `poetry install` installs it with the dev tools")
    return found


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a linter on files of the repository; never reaches the network."""
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )


# --- Linters and schemas ------------------------------------------------------------------


def test_workflows_pass_actionlint() -> None:
    """Every workflow passes actionlint: syntax, expressions, contexts and action inputs."""
    result = run_tool(tool("actionlint"), "-no-color", *map(str, WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    """The actionlint check bites: a misspelt action input and an unknown context fail."""
    broken = tmp_path / "broken.yml"
    text = RELEASE.read_text(encoding="utf-8")
    text = text.replace("workload_identity_provider:", "workload_identity_providr:")
    broken.write_text(text.replace("vars.PYFLOW_OUTPUT", "var.PYFLOW_OUTPUT"), encoding="utf-8")
    result = run_tool(tool("actionlint"), "-no-color", str(broken))
    assert result.returncode == 1
    assert 'input "workload_identity_providr" is not defined' in result.stdout
    assert 'undefined variable "var"' in result.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_match_the_github_workflow_schema(path: Path) -> None:
    """Each workflow validates against the GitHub workflow schema (bundled, offline)."""
    result = run_tool(
        tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependabot_matches_the_dependabot_schema() -> None:
    """The Dependabot configuration validates against its schema (bundled, offline)."""
    result = run_tool(
        tool("check-jsonschema"), "--builtin-schema", "vendor.dependabot", str(DEPENDABOT)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_schema_refuses_an_unknown_trigger(tmp_path: Path) -> None:
    """The schema check bites: a misspelt event is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(CI.read_text(encoding="utf-8").replace("pull_request:", "pull_requests:"))
    result = run_tool(
        tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)
    )
    assert result.returncode == 1


# --- What every workflow promises ---------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_do_project_work_only_through_invoke(path: Path) -> None:
    """Every `run:` step installs invoke or calls one invoke target, and nothing else."""
    commands = [step["run"].strip() for step in steps(load(path)) if "run" in step]
    assert commands
    for command in commands:
        assert "\n" not in command, f"one command per step: {command!r}"
        assert command == "pip install invoke" or re.fullmatch(r"invoke [a-z][\w-]*( .*)?", command)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_use_current_major_versions_of_known_actions(path: Path) -> None:
    """Every action is a known one, pinned to a major version no older than the current one."""
    for step in steps(load(path)):
        if "uses" in step:
            action, major = action_of(step)
            assert action in OLDEST_MAJORS, f"{action} is not one of the reviewed actions"
            assert major >= OLDEST_MAJORS[action], f"{action}@v{major} is outdated"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_check_out_without_persisting_credentials(path: Path) -> None:
    """The checkout leaves no GitHub token in .git/config for later steps to use."""
    checkouts = [s for s in steps(load(path)) if s.get("uses", "").startswith("actions/checkout@")]
    assert checkouts
    for checkout in checkouts:
        assert checkout["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_set_up_python_with_pip_caching(path: Path) -> None:
    """Every job sets up Python with pip's cache: CI's tests on every supported version, the rest on 3.11."""
    supported = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    for name, job in load(path)["jobs"].items():
        python = step_using(job["steps"], "actions/setup-python")
        assert python["with"]["cache"] == "pip"
        if path.name == "ci.yml" and name == "test":
            assert python["with"]["python-version"] == "${{ matrix.python }}"
            versions = job["strategy"]["matrix"]["python"]
            assert versions == ["3.11", "3.12", "3.13"]
            assert supported == ">=3.11,<3.14", "the matrix covers exactly the supported versions"
        else:
            assert python["with"]["python-version"] == "3.11"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_cache_poetry_keyed_on_the_lock_file(path: Path) -> None:
    """Every job that runs `invoke setup` restores Poetry's environment keyed on poetry.lock."""
    for job in load(path)["jobs"].values():
        if any(s.get("run") == "invoke setup" for s in job["steps"]):
            [cache] = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache")]
            assert ".venv" in cache["with"]["path"]
            assert "~/.cache/pypoetry" in cache["with"]["path"]
            assert "hashFiles('poetry.lock')" in cache["with"]["key"]


# --- CI -----------------------------------------------------------------------------------


def test_ci_runs_on_pushes_to_main_and_pull_requests() -> None:
    """CI runs on every push to main and every pull request, and on nothing else."""
    assert load(CI)["on"] == {"push": {"branches": ["main"]}, "pull_request": None}


def test_ci_may_only_read_the_repository() -> None:
    """CI's token may read the repository's contents and nothing more, in every job."""
    workflow = load(CI)
    assert workflow["permissions"] == {"contents": "read"}
    assert all("permissions" not in job for job in workflow["jobs"].values())


def test_ci_runs_the_invoke_targets_in_order() -> None:
    """CI sets up, lints, checks and tests, and builds the image (no push) with the gha cache."""
    commands = [step["run"] for step in steps(load(CI)) if "run" in step]
    targets = [command.split()[1] for command in commands if command.startswith("invoke ")]
    test_targets = [t for t in targets if t in {"setup", "lint", "check", "test"}]
    assert test_targets[:4] == ["setup", "lint", "check", "test"]
    [build] = [command for command in commands if command.startswith("invoke build")]
    assert build.split() == [
        "invoke",
        "build",
        "--engine",
        "docker",
        "--registry",
        "localhost",
        "--cache-from",
        "type=gha,scope=pyflow-image",
        "--cache-to",
        "type=gha,scope=pyflow-image,mode=max",
    ]
    assert "--push" not in build
    [test] = [command for command in commands if command.startswith("invoke test")]
    assert test == "invoke test --opts \"-m 'not container'\"", "only the image tests run elsewhere"


def test_ci_exposes_the_actions_cache_to_the_image_build() -> None:
    """The image job sets up buildx and exposes the Actions runtime before `invoke build`."""
    image = load(CI)["jobs"]["image"]["steps"]
    uses = [step.get("uses", "").split("@")[0] for step in image]
    build = next(
        i for i, step in enumerate(image) if step.get("run", "").startswith("invoke build")
    )
    assert uses.index("docker/setup-buildx-action") < build
    assert uses.index("crazy-max/ghaction-github-runtime") < build


# --- Release ------------------------------------------------------------------------------


def release_job() -> dict[str, Any]:
    """Return the release workflow's one job."""
    [job] = load(RELEASE)["jobs"].values()
    return job


def test_release_runs_when_a_release_is_published() -> None:
    """The release workflow runs on a published release and never twice at once."""
    workflow = load(RELEASE)
    assert workflow["on"] == {"release": {"types": ["published"]}}
    assert workflow["concurrency"]["cancel-in-progress"] is False


def test_release_has_least_privilege_permissions() -> None:
    """Nothing by default; the job may read the repository and request an OIDC token."""
    assert load(RELEASE)["permissions"] == {}
    assert release_job()["permissions"] == {"contents": "read", "id-token": "write"}


def test_release_checks_out_the_release_tag() -> None:
    """The release builds the tagged commit, with its tags, so `invoke release` can check them."""
    checkout = step_using(release_job()["steps"], "actions/checkout")
    assert checkout["with"]["ref"] == "${{ github.event.release.tag_name }}"
    assert checkout["with"]["fetch-depth"] == 0


def test_release_authenticates_with_workload_identity_federation() -> None:
    """Google auth uses a workload identity provider and service account from variables."""
    job = release_job()
    auth = step_using(job["steps"], "google-github-actions/auth")
    assert auth["with"] == {
        "workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
        "service_account": "${{ vars.GCP_SERVICE_ACCOUNT }}",
        "token_format": "access_token",
    }
    text = RELEASE.read_text(encoding="utf-8")
    assert "credentials_json" not in text
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in text


def test_release_logs_in_to_artifact_registry_with_the_short_lived_token() -> None:
    """Docker logs in to the region's Artifact Registry with the federated access token."""
    steps_ = release_job()["steps"]
    login = step_using(steps_, "docker/login-action")
    assert login["with"] == {
        "registry": "${{ vars.PYFLOW_GCP_REGION }}-docker.pkg.dev",
        "username": "oauth2accesstoken",
        "password": "${{ steps.auth.outputs.access_token }}",
    }
    order = [s.get("id") or s.get("uses", s.get("run")) for s in steps_]
    assert (
        order.index("auth")
        < order.index(login["uses"])
        < order.index("invoke release --engine docker")
    )


def test_release_passes_settings_only_to_invoke_release() -> None:
    """`invoke release` gets every production setting; the API key is a secret, the rest variables."""
    job = release_job()
    assert "env" not in job and "env" not in load(RELEASE)
    [release] = [s for s in job["steps"] if s.get("run", "").startswith("invoke release")]
    env = release["env"]
    assert set(env) == RELEASE_SETTINGS
    assert env["PREFECT_FLOW_ENV"] == "production"
    assert env["PREFECT_API_KEY"] == "${{ secrets.PREFECT_API_KEY }}"
    for name in RELEASE_SETTINGS - {"PREFECT_FLOW_ENV", "PREFECT_API_KEY"}:
        assert env[name] == f"${{{{ vars.{name} }}}}"
    secrets = [s for s in job["steps"] if "secrets." in str(s)]
    assert secrets == [release]


# --- Dependabot ---------------------------------------------------------------------------


def test_dependabot_updates_actions_and_python_weekly_in_groups() -> None:
    """Dependabot keeps GitHub Actions and the Poetry dependencies current, weekly, grouped."""
    updates = {u["package-ecosystem"]: u for u in yaml.safe_load(DEPENDABOT.read_text())["updates"]}
    assert set(updates) == {"github-actions", "pip"}
    for update in updates.values():
        assert update["directory"] == "/"
        assert update["schedule"]["interval"] == "weekly"
        assert update["groups"]
    assert updates["github-actions"]["groups"]["github-actions"]["patterns"] == ["*"]
    assert "prefect-*" in updates["pip"]["groups"]["prefect"]["patterns"]
    assert updates["pip"]["groups"]["development"]["dependency-type"] == "development"


# --- The preview workflow -----------------------------------------------------------------


def test_preview_runs_for_this_repositorys_pull_requests_and_removes_on_close() -> None:
    """Pull requests from the repository itself get a preview; closing one removes it."""
    workflow = load(PREVIEW)
    assert workflow["on"]["pull_request"]["types"] == [
        "opened",
        "synchronize",
        "reopened",
        "closed",
    ]
    [job] = workflow["jobs"].values()
    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    runs = {s["run"]: s for s in job["steps"] if s.get("run", "").startswith("invoke preview")}
    number = "${{ github.event.pull_request.number }}"
    deploy = runs[f"invoke preview --pr {number} --engine docker"]
    remove = runs[f"invoke preview --pr {number} --remove"]
    assert deploy["if"] == "github.event.action != 'closed'"
    assert remove["if"] == "github.event.action == 'closed'"
    assert set(deploy["env"]) == RELEASE_SETTINGS
    assert deploy["env"]["PREFECT_API_KEY"] == "${{ secrets.PREFECT_API_KEY }}"
    assert set(remove["env"]) == {"PREFECT_FLOW_ENV", "PREFECT_API_URL", "PREFECT_API_KEY"}
