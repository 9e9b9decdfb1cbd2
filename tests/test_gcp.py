"""The one-time Google Cloud set-up, run for real against a fake ``gcloud`` on PATH."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyflow import gcp

ROOT = Path(__file__).resolve().parent.parent
NUMBER = "123456789012"
EMAIL = "warn-release@acme-data.iam.gserviceaccount.com"
PRINCIPAL_SET = (
    f"principalSet://iam.googleapis.com/projects/{NUMBER}/locations/global/"
    "workloadIdentityPools/github-actions/attribute.repository/acme/pyflow"
)
PROVIDER = (
    f"projects/{NUMBER}/locations/global/workloadIdentityPools/github-actions/providers/pyflow"
)
SETTINGS = {
    "PYFLOW_GCP_PROJECT": "acme-data",
    "PYFLOW_GITHUB_REPOSITORY": "acme/pyflow",
    "PYFLOW_GCP_REGION": "europe-west1",
    "PYFLOW_ARTIFACT_REPOSITORY": "warn-images",
    "PYFLOW_RELEASE_SERVICE_ACCOUNT": "warn-release",
}
"""Settings other than the defaults, so the tests show they reach every command."""
RESOURCES = [
    f"iam service-accounts {EMAIL}",
    "artifacts repositories warn-images",
    "iam workload-identity-pools github-actions",
    "iam workload-identity-pools providers pyflow",
]
"""What the set-up creates, as the fake gcloud records it, in order."""

FAKE_GCLOUD = """#!{python}
\"\"\"A fake gcloud: logs its argv, describes what the state file holds, creates by adding to it.\"\"\"
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
VERBS = {{"describe", "create", "create-oidc", "enable", "add-iam-policy-binding"}}
args = sys.argv[1:]
with (HERE / "gcloud.log").open("a") as log:
    log.write(json.dumps(args) + "\\n")
state_file = HERE / "gcloud-state.json"
state = json.loads(state_file.read_text()) if state_file.exists() else []
at = next(i for i, arg in enumerate(args) if arg in VERBS)
group, verb, rest = args[:at], args[at], args[at + 1 :]
options = dict(arg[2:].split("=", 1) for arg in rest if arg.startswith("--") and "=" in arg)
names = [arg for arg in rest if not arg.startswith("--")]
command = " ".join([*group, verb])
if command in os.environ.get("FAKE_GCLOUD_FAIL", "").split(","):
    print(f"Creating {{names[0]}}...", file=sys.stderr)
    print(f"ERROR: (gcloud.{{command.replace(' ', '.')}}) PERMISSION_DENIED: caller lacks permission", file=sys.stderr)
    sys.exit(1)
if group == ["projects"]:
    if names == ["acme-data"] and options.get("format") == "value(projectNumber)":
        print("{number}")
        sys.exit(0)
    print(f"ERROR: (gcloud.projects.describe) [{{names[0]}}] not found or permission denied", file=sys.stderr)
    sys.exit(1)
if verb in {{"enable", "add-iam-policy-binding"}}:
    sys.exit(0)
name = names[0]
if group == ["iam", "service-accounts"] and verb == "create":
    name = f"{{name}}@{{options['project']}}.iam.gserviceaccount.com"
key = " ".join([*group, name])
if verb == "describe":
    if key in state:
        sys.exit(0)
    print(f"ERROR: NOT_FOUND: {{key}}", file=sys.stderr)
    sys.exit(1)
if key in state:
    print(f"ERROR: ALREADY_EXISTS: {{key}}", file=sys.stderr)
    sys.exit(1)
state_file.write_text(json.dumps([*state, key]))
"""


@dataclass(frozen=True)
class FakeGcloud:
    """The fake gcloud's record: the commands it ran and the resources it holds."""

    folder: Path

    def calls(self) -> list[list[str]]:
        """Return the argv of every call so far, in order."""
        log = self.folder / "gcloud.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def actions(self) -> list[str]:
        """Return each call's command words up to its verb, such as ``iam service-accounts create``."""
        return [" ".join(argv[: _verb_at(argv) + 1]) for argv in self.calls()]

    def resources(self) -> list[str]:
        """Return the resources created so far, in order."""
        state = self.folder / "gcloud-state.json"
        return json.loads(state.read_text()) if state.exists() else []

    def forget_calls(self) -> None:
        """Empty the log, keeping the resources."""
        (self.folder / "gcloud.log").unlink(missing_ok=True)


def _verb_at(argv: list[str]) -> int:
    """Return where a gcloud command's verb is in its argv."""
    verbs = {"describe", "create", "create-oidc", "enable", "add-iam-policy-binding"}
    return next(i for i, arg in enumerate(argv) if arg in verbs)


@pytest.fixture
def fake_gcloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGcloud:
    """A fake gcloud first on PATH, for project acme-data, holding no resources yet."""
    folder = tmp_path / "gcloud"
    (folder / "bin").mkdir(parents=True)
    script = folder / "bin" / "gcloud"
    script.write_text(FAKE_GCLOUD.format(python=sys.executable, number=NUMBER))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_GCLOUD_FAIL", raising=False)
    return FakeGcloud(folder)


@pytest.fixture
def no_gcloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH on which there is no gcloud."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def gcp_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Real settings for the set-up, from the environment, in a folder without a .env."""
    monkeypatch.chdir(tmp_path)
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)


def _printed_commands(out: str) -> list[list[str]]:
    """Return the commands a dry run printed, each ``describe || create`` as two commands."""
    commands = []
    for line in out.split("\n\n", 1)[0].splitlines():
        words = shlex.split(line)
        while "||" in words:
            at = words.index("||")
            commands.append(words[:at])
            words = words[at + 1 :]
        commands.append(words)
    return commands


@pytest.mark.usefixtures("gcp_settings")
def test_main_creates_everything_in_order_and_prints_the_github_variables(
    fake_gcloud: FakeGcloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first run finds nothing, creates each resource in order, then prints the variables."""
    assert gcp.main([]) == 0
    assert fake_gcloud.actions() == [
        "projects describe",
        "services enable",
        "iam service-accounts describe",
        "iam service-accounts create",
        "artifacts repositories describe",
        "artifacts repositories create",
        "iam workload-identity-pools describe",
        "iam workload-identity-pools create",
        "iam workload-identity-pools providers describe",
        "iam workload-identity-pools providers create-oidc",
        "iam service-accounts add-iam-policy-binding",
        "artifacts repositories add-iam-policy-binding",
    ]
    assert fake_gcloud.resources() == RESOURCES
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("done: ")] == [
        "done: the APIs it needs",
        f"done: service account {EMAIL}",
        "done: Artifact Registry Docker repository warn-images in europe-west1",
        "done: Workload Identity pool github-actions",
        "done: OIDC provider pyflow, for acme/pyflow only",
        "done: acme/pyflow's workflows may act as the service account",
        "done: the service account may push to warn-images (and nothing else)",
    ]
    assert "exists, skipped" not in out
    variables = out.split("as variables:\n", 1)[1].splitlines()[:5]
    assert variables == [
        f"  GCP_WORKLOAD_IDENTITY_PROVIDER={PROVIDER}",
        f"  GCP_SERVICE_ACCOUNT={EMAIL}",
        "  PYFLOW_GCP_PROJECT=acme-data",
        "  PYFLOW_GCP_REGION=europe-west1",
        "  PYFLOW_ARTIFACT_REPOSITORY=warn-images",
    ]
    assert "PREFECT_API_KEY" in out


@pytest.mark.usefixtures("gcp_settings")
def test_main_run_again_skips_every_existing_resource(
    fake_gcloud: FakeGcloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run finds every resource, runs no create, and prints the same variables."""
    assert gcp.main([]) == 0
    first = capsys.readouterr().out
    fake_gcloud.forget_calls()
    assert gcp.main([]) == 0
    second = capsys.readouterr().out
    assert not [a for a in fake_gcloud.actions() if a.endswith(("create", "create-oidc"))]
    assert fake_gcloud.resources() == RESOURCES
    assert [line for line in second.splitlines() if line.startswith("exists, skipped: ")] == [
        f"exists, skipped: service account {EMAIL}",
        "exists, skipped: Artifact Registry Docker repository warn-images in europe-west1",
        "exists, skipped: Workload Identity pool github-actions",
        "exists, skipped: OIDC provider pyflow, for acme/pyflow only",
    ]
    assert second.split("\nSet these", 1)[1] == first.split("\nSet these", 1)[1]


@pytest.mark.usefixtures("gcp_settings")
def test_main_restricts_the_provider_to_the_one_github_repository(
    fake_gcloud: FakeGcloud,
) -> None:
    """The OIDC provider trusts GitHub's tokens, and only those of this repository's workflows."""
    assert gcp.main([]) == 0
    [provider] = [argv for argv in fake_gcloud.calls() if "create-oidc" in argv]
    assert provider == [
        "iam", "workload-identity-pools", "providers", "create-oidc", "pyflow",
        "--project=acme-data", "--location=global", "--workload-identity-pool=github-actions",
        "--issuer-uri=https://token.actions.githubusercontent.com",
        "--attribute-mapping=google.subject=assertion.sub,"
        "attribute.repository=assertion.repository,"
        "attribute.repository_owner=assertion.repository_owner,attribute.ref=assertion.ref",
        "--attribute-condition=assertion.repository=='acme/pyflow'",
    ]  # fmt: skip


@pytest.mark.usefixtures("gcp_settings")
def test_main_grants_only_the_two_roles_it_needs(fake_gcloud: FakeGcloud) -> None:
    """The repository's workflows may act as the account; it may write to one repository only."""
    assert gcp.main([]) == 0
    bindings = [argv for argv in fake_gcloud.calls() if "add-iam-policy-binding" in argv]
    assert bindings == [
        [
            "iam", "service-accounts", "add-iam-policy-binding", EMAIL, "--project=acme-data",
            "--role=roles/iam.workloadIdentityUser", f"--member={PRINCIPAL_SET}",
        ],
        [
            "artifacts", "repositories", "add-iam-policy-binding", "warn-images",
            "--project=acme-data", "--location=europe-west1",
            "--role=roles/artifactregistry.writer", f"--member=serviceAccount:{EMAIL}",
        ],
    ]  # fmt: skip
    granted = [arg for argv in fake_gcloud.calls() for arg in argv if arg.startswith("--role=")]
    assert granted == [
        "--role=roles/iam.workloadIdentityUser",
        "--role=roles/artifactregistry.writer",
    ]
    assert not [
        argv
        for argv in fake_gcloud.calls()
        if argv[0] == "projects" and "add-iam-policy-binding" in argv
    ]


@pytest.mark.usefixtures("gcp_settings")
def test_main_dry_run_prints_the_commands_a_run_runs_and_runs_none(
    fake_gcloud: FakeGcloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run runs no gcloud; its printed commands are exactly those a first run then runs."""
    assert gcp.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert fake_gcloud.calls() == []
    assert f"GCP_WORKLOAD_IDENTITY_PROVIDER={PROVIDER.replace(NUMBER, 'PROJECT_NUMBER')}" in out
    printed = _printed_commands(out)
    assert gcp.main([]) == 0
    ran = [
        ["gcloud", *(arg.replace(NUMBER, "PROJECT_NUMBER") for arg in argv)]
        for argv in fake_gcloud.calls()
    ]
    assert printed == ran


@pytest.mark.usefixtures("gcp_settings", "no_gcloud")
def test_main_dry_run_needs_no_gcloud(capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run works where gcloud is not installed, and shows the describe || create pairs."""
    assert gcp.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "gcloud artifacts repositories describe warn-images --project=acme-data "
        "--location=europe-west1 || gcloud artifacts repositories create warn-images "
        "--project=acme-data --location=europe-west1 --repository-format=docker "
        "'--description=pyflow images, one tag per release'"
    ) in out.splitlines()
    assert " \"--attribute-condition=assertion.repository=='acme/pyflow'\"\n" in out


@pytest.mark.parametrize(
    ("project", "repository"),
    [
        (None, None),
        ("your-project-id", "your-org/pyflow"),
        ("your-project-id", "pyflow"),
    ],
)
def test_main_refuses_placeholders_naming_both_settings(
    fake_gcloud: FakeGcloud,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    project: str | None,
    repository: str | None,
) -> None:
    """The placeholder project and a repository that is not OWNER/REPO stop it before any gcloud."""
    for name, value in (
        ("PYFLOW_GCP_PROJECT", project),
        ("PYFLOW_GITHUB_REPOSITORY", repository),
    ):
        if value is not None:
            monkeypatch.setenv(name, value)
    assert gcp.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("pyflow gcp: PYFLOW_GCP_PROJECT is still 'your-project-id'; ")
    shown = repository or "your-org/your-repo"
    assert f"PYFLOW_GITHUB_REPOSITORY='{shown}' is not this project's GitHub repository" in err
    assert "set them in .env" in err
    assert fake_gcloud.calls() == []


@pytest.mark.usefixtures("gcp_settings", "no_gcloud")
def test_main_without_gcloud_says_how_to_install_it(capsys: pytest.CaptureFixture[str]) -> None:
    """Without gcloud on PATH it stops, saying to install the Google Cloud CLI and log in."""
    assert gcp.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "gcloud is not installed" in err
    assert "install the Google Cloud CLI, then run `gcloud auth login`" in err


@pytest.mark.usefixtures("gcp_settings")
def test_main_stops_at_a_failing_create_and_can_be_run_again(
    fake_gcloud: FakeGcloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing create stops it with gcloud's error; once fixed, a re-run picks up from there."""
    monkeypatch.setenv("FAKE_GCLOUD_FAIL", "artifacts repositories create")
    assert gcp.main([]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        "pyflow gcp: creating Artifact Registry Docker repository warn-images in europe-west1 "
        "failed (gcloud exit status 1): "
        "ERROR: (gcloud.artifacts.repositories.create) PERMISSION_DENIED: caller lacks permission. "
        "Fix the cause and run the set-up again"
    )
    assert "safe to re-run" in captured.err
    assert fake_gcloud.actions()[-1] == "artifacts repositories create"
    assert fake_gcloud.resources() == RESOURCES[:1]
    assert "Set these in GitHub" not in captured.out

    monkeypatch.delenv("FAKE_GCLOUD_FAIL")
    fake_gcloud.forget_calls()
    assert gcp.main([]) == 0
    assert "iam service-accounts create" not in fake_gcloud.actions()
    assert fake_gcloud.resources() == RESOURCES


@pytest.mark.usefixtures("gcp_settings")
def test_main_explains_a_project_gcloud_cannot_read(
    fake_gcloud: FakeGcloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A project gcloud cannot describe stops it before any step, saying to log in or check it."""
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "acme-typo")
    assert gcp.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "pyflow gcp: cannot read the number of project 'acme-typo' (PYFLOW_GCP_PROJECT): "
        "ERROR: (gcloud.projects.describe) [acme-typo] not found or permission denied."
    )
    assert "`gcloud auth login`" in err
    assert fake_gcloud.actions() == ["projects describe"]


def test_module_help_shows_the_dry_run_flag() -> None:
    """``python -m pyflow.gcp --help`` runs as a program and documents --dry-run."""
    result = subprocess.run(
        [sys.executable, "-m", "pyflow.gcp", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pyflow.gcp [-h] [--dry-run]")
    assert "invoke gcp-setup" in result.stdout


def test_module_exits_1_on_a_placeholder(tmp_path: Path) -> None:
    """Run as a program with the placeholder settings, it prints one line and exits with 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLOW_")}
    result = subprocess.run(
        [sys.executable, "-m", "pyflow.gcp", "--dry-run"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("pyflow gcp: PYFLOW_GCP_PROJECT is still 'your-project-id'")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
