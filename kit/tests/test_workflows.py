"""The GitHub workflows and the Dependabot configuration in .github/.

They are linted with actionlint and zizmor and checked against the GitHub workflow and
Dependabot schemas (check-jsonschema's bundled copies), all offline, and then read for what
pyflow promises: every step that does project work calls invoke, with tools at pinned versions;
every action is pinned by commit SHA; permissions are least-privilege; the jobs that hold cloud
credentials restore no cache and run in the GitHub environment Google trusts for them, the
release in `production`, the preview in `preview`, whose values never name production's.
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

from conftest import TEMPLATE, locked_version
from pyflow_kit import bootstrap, gcp

GITHUB = TEMPLATE / ".github"
CI = GITHUB / "workflows" / "ci.yml"
RELEASE = GITHUB / "workflows" / "release.yml"
PREVIEW = GITHUB / "workflows" / "preview.yml"
DEPENDABOT = GITHUB / "dependabot.yml"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))

OLDEST_MAJORS = {
    "actions/checkout": 7,
    "actions/setup-python": 7,
    "actions/cache": 5,
    "docker/login-action": 4,
    "google-github-actions/auth": 3,
}
"""The reviewed actions the workflows may use, and the oldest major version of each allowed."""

PINNED = re.compile(r"([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # (v(\d+)\.\d+\.\d+)")
"""A step's `uses:` line: the action, a full commit SHA, and the release it is, in a comment."""

SHARED_VARIABLES = {
    "GCP_WORKLOAD_IDENTITY_PROVIDER",
    "PYFLOW_GCP_PROJECT",
    "PYFLOW_GCP_REGION",
    "PYFLOW_IMAGE_NAME",
}
"""Repository variables both environments read: names, not rights (IAM decides who is who)."""

RELEASE_SETTINGS = {
    "PREFECT_FLOW_ENV",
    "PYFLOW_RELEASE_BRANCH",
    "PYFLOW_GCP_PROJECT",
    "PYFLOW_GCP_REGION",
    "PYFLOW_ARTIFACT_REPOSITORY",
    "PYFLOW_IMAGE_NAME",
    "PYFLOW_OUTPUT",
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
}

PREVIEW_SETTINGS = {
    "PYFLOW_GCP_PROJECT": "vars.PYFLOW_GCP_PROJECT",
    "PYFLOW_GCP_REGION": "vars.PYFLOW_GCP_REGION",
    "PYFLOW_ARTIFACT_REPOSITORY": "vars.PREVIEW_ARTIFACT_REPOSITORY",
    "PYFLOW_IMAGE_NAME": "vars.PYFLOW_IMAGE_NAME",
    "PYFLOW_OUTPUT": "vars.PREVIEW_OUTPUT",
    "PYFLOW_NAMESPACE": "vars.PREVIEW_NAMESPACE",
    "PREFECT_API_URL": "vars.PREVIEW_PREFECT_API_URL",
    "PREFECT_API_KEY": "secrets.PREVIEW_PREFECT_API_KEY",
}
"""What `invoke preview` is given, from where: the preview's own values, or shared names."""


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


def uses_lines(text: str) -> list[str]:
    """Return what follows `uses:` on each line of a workflow's text, its comment included."""
    return [m[1].strip() for m in re.finditer(r"^\s*(?:- )?uses:\s*(.+)$", text, re.MULTILINE)]


def holds_credentials(job: dict[str, Any]) -> bool:
    """Return whether a job can get cloud credentials: an OIDC token, or an environment's secrets."""
    return job.get("permissions", {}).get("id-token") == "write" or "environment" in job


def restored_caches(job: dict[str, Any]) -> list[str]:
    """Return the steps of a job that restore a cache: actions/cache*, or setup-python's cache."""
    found = []
    for step in job["steps"]:
        uses = step.get("uses", "")
        if uses.startswith("actions/cache"):
            found.append(uses)
        elif uses.startswith("actions/setup-python@") and step.get("with", {}).get("cache"):
            found.append(f"{uses} with cache: {step['with']['cache']}")
    return found


def expressions(value: object) -> list[str]:
    """Return every `${{ ... }}` expression in a workflow, job or step, without the braces."""
    return [m.strip() for m in re.findall(r"\$\{\{(.*?)\}\}", yaml.safe_dump(value))]


def read_names(value: object, context: str) -> set[str]:
    """Return the names a workflow, job or step reads from a context: `vars` or `secrets`."""
    return {
        name
        for expression in expressions(value)
        for name in re.findall(rf"\b{context}\.([A-Za-z_][A-Za-z0-9_]*)", expression)
    }


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
        command, cwd=TEMPLATE, capture_output=True, text=True, check=False, timeout=120
    )


# --- Linters and schemas ------------------------------------------------------------------


def at_major_tags(text: str) -> str:
    """Return a workflow with each `ACTION@SHA # vX.Y.Z` as `ACTION@vX`.

    actionlint knows the inputs of popular actions by major tag, not by commit: on this copy it
    checks them too.
    """
    return PINNED.sub(lambda match: f"{match[1]}@v{match[4]}", text)


def test_workflows_pass_actionlint(tmp_path: Path) -> None:
    """Every workflow passes actionlint: syntax, expressions, contexts and action inputs."""
    copies = []
    for path in WORKFLOWS:
        copy = tmp_path / path.name
        copy.write_text(at_major_tags(path.read_text(encoding="utf-8")), encoding="utf-8")
        copies.append(str(copy))
    result = run_tool(tool("actionlint"), "-no-color", *map(str, WORKFLOWS), *copies)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    """The actionlint check bites: a misspelt action input and an unknown context fail."""
    broken = tmp_path / "broken.yml"
    text = at_major_tags(RELEASE.read_text(encoding="utf-8"))
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


def test_workflows_pass_zizmor() -> None:
    """zizmor, the GitHub Actions security checker, finds nothing at its default persona (offline)."""
    result = run_tool(tool("zizmor"), "--offline", "--no-progress", str(GITHUB / "workflows"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout


def test_zizmor_reports_an_unpinned_action_and_a_restored_cache(tmp_path: Path) -> None:
    """The zizmor check bites: a tag pin and a pip cache in the release workflow are findings."""
    broken = tmp_path / "release.yml"
    text = RELEASE.read_text(encoding="utf-8")
    text = re.sub(r"actions/checkout@[0-9a-f]{40} # \S+", "actions/checkout@v7", text)
    text = text.replace(
        'python-version: "3.11"\n', 'python-version: "3.11"\n          cache: pip\n'
    )
    broken.write_text(text, encoding="utf-8")
    result = run_tool(tool("zizmor"), "--offline", "--no-progress", str(broken))
    assert result.returncode != 0
    assert "unpinned-uses" in result.stdout
    assert "cache-poisoning" in result.stdout


# --- What every workflow promises ---------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_do_project_work_only_through_invoke(path: Path) -> None:
    """Every `run:` step installs invoke at poetry.lock's version, or calls one invoke target."""
    install = f"pip install invoke=={locked_version('invoke')}"
    commands = [step["run"].strip() for step in steps(load(path)) if "run" in step]
    assert install in commands, "invoke is installed at the version poetry.lock holds"
    for command in commands:
        assert "\n" not in command, f"one command per step: {command!r}"
        assert command == install or re.fullmatch(r"invoke [a-z][\w-]*( .*)?", command)


def test_poetry_is_pinned_exactly_and_alike_in_setup_the_dockerfile_and_the_workflows() -> None:
    """Poetry and its plugin are pinned exactly, the same in `invoke setup` and the Dockerfile.

    The workflows install Poetry only through `invoke setup`, on a fresh runner Python that has
    none, so they get the Poetry bootstrap.py pins.
    """
    for package in bootstrap.POETRY_PACKAGES:
        assert re.fullmatch(r"[a-z0-9-]+==\d+(\.\d+)+", package), f"{package} is not pinned"
    dockerfile = (TEMPLATE / "Dockerfile").read_text(encoding="utf-8")
    args = ("POETRY_SPEC", "POETRY_MIRROR_PLUGIN_SPEC")
    specs = [re.search(rf'^ARG {arg}="([^"]+)"$', dockerfile, re.M) for arg in args]
    assert tuple(spec and spec[1] for spec in specs) == bootstrap.POETRY_PACKAGES
    assert [
        line
        for line in dockerfile.splitlines()
        if "pip install" in line and all(f'"${arg}"' in line for arg in args)
    ], "the Dockerfile installs Poetry from its pinned ARGs"
    for path in WORKFLOWS:
        commands = [step["run"].strip() for step in steps(load(path)) if "run" in step]
        assert "invoke setup" in commands, f"{path.name} does not install Poetry with setup"
        assert not [c for c in commands if "poetry" in c.lower()], f"{path.name}: other Poetry"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_pin_every_action_by_commit_sha(path: Path) -> None:
    """Every `uses:` is a reviewed action at a full commit SHA, its release in a comment."""
    lines = uses_lines(path.read_text(encoding="utf-8"))
    assert lines
    for line in lines:
        match = PINNED.fullmatch(line)
        assert match, f"`uses: {line}` is not ACTION@SHA # vX.Y.Z (a tag can be moved)"
        action, major = match[1], int(match[4])
        assert action in OLDEST_MAJORS, f"{action} is not one of the reviewed actions"
        assert major >= OLDEST_MAJORS[action], f"{action} {match[3]} is outdated"


def test_workflows_pin_each_action_to_one_commit_everywhere() -> None:
    """An action is pinned to the same commit and release in every job and workflow."""
    pins: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for line in uses_lines(path.read_text(encoding="utf-8")):
            action, _, pin = line.partition("@")
            pins.setdefault(action, set()).add(pin)
    assert {action: len(found) for action, found in pins.items()} == dict.fromkeys(pins, 1)


def test_pin_check_refuses_a_tag_or_a_sha_without_its_release() -> None:
    """The pin check bites: a major tag, a short SHA and a SHA without a comment are refused."""
    sha = "3d3c42e5aac5ba805825da76410c181273ba90b1"
    assert PINNED.fullmatch(f"actions/checkout@{sha} # v7.0.1")
    for line in (
        "actions/checkout@v7",
        f"actions/checkout@{sha[:12]} # v7.0.1",
        f"actions/checkout@{sha}",
    ):
        assert not PINNED.fullmatch(line)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_check_out_without_persisting_credentials(path: Path) -> None:
    """The checkout leaves no GitHub token in .git/config for later steps to use."""
    checkouts = [s for s in steps(load(path)) if s.get("uses", "").startswith("actions/checkout@")]
    assert checkouts
    for checkout in checkouts:
        assert checkout["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_set_up_the_supported_pythons(path: Path) -> None:
    """CI tests the project and the kit on every supported Python; every other job on 3.11."""
    supported = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    for name, job in load(path)["jobs"].items():
        python = step_using(job["steps"], "actions/setup-python")
        if path.name == "ci.yml" and name in ("test", "kit"):
            assert python["with"]["python-version"] == "${{ matrix.python }}"
            versions = job["strategy"]["matrix"]["python"]
            assert versions == ["3.11", "3.12", "3.13"]
            assert supported == ">=3.11,<3.14", "the matrix covers exactly the supported versions"
        else:
            assert python["with"]["python-version"] == "3.11"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_jobs_with_cloud_credentials_restore_no_cache(path: Path) -> None:
    """A job that can get cloud credentials restores no cache, which any branch could have written."""
    jobs = load(path)["jobs"]
    for name, job in jobs.items():
        if holds_credentials(job):
            assert restored_caches(job) == [], f"{path.name}: job {name} restores a cache"


def test_cache_check_finds_a_cache_in_a_job_with_credentials() -> None:
    """The cache check bites: setup-python's pip cache, or actions/cache, in the release job."""
    job = load(RELEASE)["jobs"]["release"]
    assert holds_credentials(job)
    python = step_using(job["steps"], "actions/setup-python")
    python["with"]["cache"] = "pip"
    job["steps"].append({"uses": "actions/cache/restore@" + "0" * 40, "with": {}})
    assert len(restored_caches(job)) == 2


def test_ci_jobs_hold_no_credentials_and_cache_pip_and_poetry_keyed_on_their_inputs() -> None:
    """CI holds no credentials, so it may cache: pip's downloads, and Poetry's environment by lock."""
    for job in load(CI)["jobs"].values():
        assert not holds_credentials(job)
        assert step_using(job["steps"], "actions/setup-python")["with"]["cache"] == "pip"
        [cache] = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache@")]
        assert ".venv" in cache["with"]["path"]
        assert "~/.cache/pypoetry" in cache["with"]["path"]
        assert "hashFiles('poetry.lock')" in cache["with"]["key"]
    assert not read_names(load(CI), "secrets")


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
    """CI sets up, lints, checks and tests, and builds the image (no push, no layer cache)."""
    commands = [step["run"] for step in steps(load(CI)) if "run" in step]
    targets = [command.split()[1] for command in commands if command.startswith("invoke ")]
    test_targets = [t for t in targets if t in {"setup", "lint", "check", "test"}]
    assert test_targets[:4] == ["setup", "lint", "check", "test"]
    [build] = [command for command in commands if command.startswith("invoke build")]
    assert build.split() == ["invoke", "build", "--engine", "docker", "--registry", "localhost"]
    assert "--push" not in build
    [test] = [command for command in commands if command.split()[:2] == ["invoke", "test"]]
    assert test == "invoke test --all", "the project's whole suite, its heavy tier too"


def test_ci_tests_the_kit_in_a_job_of_its_own() -> None:
    """The kit's suite is its own job on every supported Python, its image tests left to .ci/run."""
    jobs = load(CI)["jobs"]
    kit = jobs["kit"]
    assert kit["strategy"]["matrix"]["python"] == jobs["test"]["strategy"]["matrix"]["python"]
    commands = [step["run"] for step in kit["steps"] if "run" in step]
    assert [c for c in commands if c.startswith("invoke test")] == [
        "invoke test-kit --all --opts \"-m 'not container'\""
    ]
    assert not any("test-kit" in step.get("run", "") for step in jobs["test"]["steps"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_hand_no_actions_runtime_token_to_project_code(path: Path) -> None:
    """No step exports the Actions runtime token (the cache's key) or builds with the gha cache."""
    workflow = yaml.safe_dump(load(path))
    for exposed in ("ACTIONS_RUNTIME_TOKEN", "ACTIONS_RESULTS_URL", "ACTIONS_CACHE_URL"):
        assert exposed not in workflow
    assert "type=gha" not in workflow
    assert "ghaction-github-runtime" not in workflow


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
    """`invoke release` gets every production setting and the default branch; the key is a secret."""
    job = release_job()
    assert "env" not in job
    assert set(load(RELEASE).get("env", {})) <= {"PIP_DISABLE_PIP_VERSION_CHECK"}
    [release] = [s for s in job["steps"] if s.get("run", "").startswith("invoke release")]
    env = release["env"]
    assert set(env) == RELEASE_SETTINGS
    assert env["PREFECT_FLOW_ENV"] == "production"
    assert env["PYFLOW_RELEASE_BRANCH"] == "${{ github.event.repository.default_branch }}"
    assert env["PREFECT_API_KEY"] == "${{ secrets.PREFECT_API_KEY }}"
    for name in RELEASE_SETTINGS - {"PREFECT_FLOW_ENV", "PYFLOW_RELEASE_BRANCH", "PREFECT_API_KEY"}:
        assert env[name] == f"${{{{ vars.{name} }}}}"
    secrets = [s for s in job["steps"] if "secrets." in str(s)]
    assert secrets == [release]


def test_release_runs_in_the_environment_google_trusts_for_the_release_account() -> None:
    """The job's environment is the one `invoke gcp-setup` binds the release account to."""
    job = release_job()
    assert job["environment"] == gcp.RELEASE_ENVIRONMENT == "production"
    auth = step_using(job["steps"], "google-github-actions/auth")
    placed = gcp.github_variables(gcp_values(), "1")
    assert auth["with"]["service_account"] == "${{ vars.GCP_SERVICE_ACCOUNT }}"
    assert "GCP_SERVICE_ACCOUNT" in placed[gcp.RELEASE_ENVIRONMENT]


@pytest.mark.parametrize("path", [RELEASE, PREVIEW], ids=lambda p: p.name)
def test_deploying_jobs_read_exactly_what_gcp_setup_says_to_set_where_they_can_read_it(
    path: Path,
) -> None:
    """A job reads the variables gcp-setup places in the repository or its environment, and its secret."""
    [job] = load(path)["jobs"].values()
    environment = job["environment"]
    placed = gcp.github_variables(gcp_values(), "1")
    told = {
        name
        for place in ("repository", environment)
        for name in [*placed[place], *gcp.GITHUB_OTHER_VARIABLES[place]]
    }
    assert read_names(job, "vars") == told
    assert read_names(job, "secrets") == set(gcp.GITHUB_SECRETS[environment])


def gcp_values() -> gcp.GcpValues:
    """Return set-up values for reading where gcp-setup says each variable goes."""
    return gcp.GcpValues(
        "acme", "us-central1", "pyflow", "acme/pyflow", "rel", "pyflow-previews", "prev"
    )


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


def preview_job() -> dict[str, Any]:
    """Return the preview workflow's one job."""
    [job] = load(PREVIEW)["jobs"].values()
    return job


def test_preview_runs_for_this_repositorys_pull_requests_and_removes_on_close() -> None:
    """Pull requests from the repository itself get a preview; closing one removes it."""
    workflow = load(PREVIEW)
    assert workflow["on"]["pull_request"]["types"] == [
        "opened",
        "synchronize",
        "reopened",
        "closed",
    ]
    assert workflow["permissions"] == {}
    job = preview_job()
    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    runs = {s["run"]: s for s in job["steps"] if s.get("run", "").startswith("invoke preview")}
    deploy = runs['invoke preview --pr "$PR" --engine docker']
    remove = runs['invoke preview --pr "$PR" --remove']
    assert deploy["if"] == "github.event.action != 'closed'"
    assert remove["if"] == "github.event.action == 'closed'"
    number = "${{ github.event.pull_request.number }}"
    assert deploy["env"]["PR"] == remove["env"]["PR"] == number
    assert {k: v for k, v in deploy["env"].items() if k != "PR"} == {
        name: f"${{{{ {source} }}}}" for name, source in PREVIEW_SETTINGS.items()
    }
    assert {k: v for k, v in remove["env"].items() if k != "PR"} == {
        name: f"${{{{ {PREVIEW_SETTINGS[name]} }}}}"
        for name in ("PREFECT_API_URL", "PREFECT_API_KEY")
    }


def test_preview_runs_in_the_environment_google_trusts_for_the_preview_account() -> None:
    """The job's environment is the one `invoke gcp-setup` binds the preview account to."""
    job = preview_job()
    assert job["environment"] == gcp.PREVIEW_ENVIRONMENT == "preview"
    auth = step_using(job["steps"], "google-github-actions/auth")
    assert auth["with"] == {
        "workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
        "service_account": "${{ vars.PREVIEW_GCP_SERVICE_ACCOUNT }}",
        "token_format": "access_token",
    }
    placed = gcp.github_variables(gcp_values(), "1")
    assert "PREVIEW_GCP_SERVICE_ACCOUNT" in placed[gcp.PREVIEW_ENVIRONMENT]


def test_preview_reads_only_the_preview_environments_values_never_productions() -> None:
    """Its secret and its environment's variables are named PREVIEW_; none of production's is read."""
    job = preview_job()
    assert read_names(job, "secrets") == {"PREVIEW_PREFECT_API_KEY"}
    own = read_names(job, "vars") - SHARED_VARIABLES
    assert own and all(name.startswith("PREVIEW_") for name in own)
    release = release_job()
    productions = (read_names(release, "vars") - SHARED_VARIABLES) | read_names(release, "secrets")
    assert productions == {
        "GCP_SERVICE_ACCOUNT", "PYFLOW_ARTIFACT_REPOSITORY", "PYFLOW_OUTPUT", "PREFECT_API_URL",
        "PREFECT_API_KEY",
    }  # fmt: skip
    assert not productions & (read_names(job, "vars") | read_names(job, "secrets"))
    assert not [e for e in expressions(load(PREVIEW)) if "production" in e.lower()]
