"""The one-time Google Cloud set-up, run for real against a fake ``gcloud`` on PATH."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyflow_kit import gcp
from pyflow_kit.commands import GCP_SETUP

ROOT = Path(__file__).resolve().parent.parent
NUMBER = "123456789012"
EMAIL = "data-release@acme-data.iam.gserviceaccount.com"
PREVIEW_EMAIL = "data-preview@acme-data.iam.gserviceaccount.com"
POOL = f"iam.googleapis.com/projects/{NUMBER}/locations/global/workloadIdentityPools/github-actions"
PRODUCTION_JOBS = f"principal://{POOL}/subject/repo:acme/pyflow:environment:production"
"""The one identity that may act as the release account: jobs in the `production` environment."""
PREVIEW_JOBS = f"principal://{POOL}/subject/repo:acme/pyflow:environment:preview"
"""The one identity that may act as the preview account: jobs in the `preview` environment."""
EVERY_WORKFLOW = f"principalSet://{POOL}/attribute.repository/acme/pyflow"
"""What an earlier set-up trusted: any workflow of the repository, on any branch."""
PROVIDER = (
    f"projects/{NUMBER}/locations/global/workloadIdentityPools/github-actions/providers/pyflow"
)
WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"
WRITER = "roles/artifactregistry.writer"
SETTINGS = {
    "PYFLOW_GCP_PROJECT": "acme-data",
    "PYFLOW_GITHUB_REPOSITORY": "acme/pyflow",
    "PYFLOW_GCP_REGION": "europe-west1",
    "PYFLOW_ARTIFACT_REPOSITORY": "data-images",
    "PYFLOW_RELEASE_SERVICE_ACCOUNT": "data-release",
    "PYFLOW_PREVIEW_ARTIFACT_REPOSITORY": "data-previews",
    "PYFLOW_PREVIEW_SERVICE_ACCOUNT": "data-preview",
}
"""Settings other than the defaults, so the tests show they reach every command."""
RESOURCES = [
    f"iam service-accounts {EMAIL}",
    f"iam service-accounts {PREVIEW_EMAIL}",
    "artifacts repositories data-images",
    "artifacts repositories data-previews",
    "iam workload-identity-pools github-actions",
    "iam workload-identity-pools providers pyflow",
]
"""What the set-up creates, as the fake gcloud records it, in order."""
BINDINGS = {
    f"iam service-accounts {EMAIL}": [[WORKLOAD_IDENTITY_USER, PRODUCTION_JOBS]],
    f"iam service-accounts {PREVIEW_EMAIL}": [[WORKLOAD_IDENTITY_USER, PREVIEW_JOBS]],
    "artifacts repositories data-images": [[WRITER, f"serviceAccount:{EMAIL}"]],
    "artifacts repositories data-previews": [[WRITER, f"serviceAccount:{PREVIEW_EMAIL}"]],
}
"""Every IAM grant the set-up leaves, by resource: role and member."""

FAKE_GCLOUD = """#!{python}
\"\"\"A fake gcloud: logs its argv; holds resources and their IAM bindings in a state file.\"\"\"
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
VERBS = {{
    "describe", "create", "create-oidc", "enable", "add-iam-policy-binding",
    "remove-iam-policy-binding", "get-iam-policy",
}}
args = sys.argv[1:]
with (HERE / "gcloud.log").open("a") as log:
    log.write(json.dumps(args) + "\\n")
state_file = HERE / "gcloud-state.json"
state = json.loads(state_file.read_text()) if state_file.exists() else {{}}
resources = state.setdefault("resources", [])
bindings = state.setdefault("bindings", {{}})
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
if verb == "enable":
    sys.exit(0)
name = names[0]
if group == ["iam", "service-accounts"] and verb == "create":
    name = f"{{name}}@{{options['project']}}.iam.gserviceaccount.com"
key = " ".join([*group, name])
if verb == "get-iam-policy":
    policy = bindings.get(key, [])
    if options.get("flatten") != "bindings[].members" or options.get("format") != "value(bindings.members)":
        print(json.dumps({{"bindings": policy}}))
        sys.exit(0)
    role = options["filter"].removeprefix("bindings.role:")
    print("\\n".join(member for granted, member in policy if granted == role))
    sys.exit(0)
if verb.endswith("-iam-policy-binding"):
    binding = [options["role"], options["member"]]
    policy = bindings.setdefault(key, [])
    if verb.startswith("add"):
        policy.extend([binding] if binding not in policy else [])
    elif binding in policy:
        policy.remove(binding)
    else:
        print("ERROR: Policy binding with the specified principal, role, and condition not found!", file=sys.stderr)
        sys.exit(1)
elif verb == "describe":
    if key in resources:
        sys.exit(0)
    print(f"ERROR: NOT_FOUND: {{key}}", file=sys.stderr)
    sys.exit(1)
elif key in resources:
    print(f"ERROR: ALREADY_EXISTS: {{key}}", file=sys.stderr)
    sys.exit(1)
else:
    resources.append(key)
state_file.write_text(json.dumps(state))
"""


@dataclass(frozen=True)
class FakeGcloud:
    """The fake gcloud's record: the commands it ran, the resources and grants it holds."""

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

    def state(self) -> dict[str, Any]:
        """Return what the fake holds: ``resources`` and ``bindings``."""
        path = self.folder / "gcloud-state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def resources(self) -> list[str]:
        """Return the resources created so far, in order."""
        return list(self.state().get("resources", []))

    def bindings(self) -> dict[str, list[list[str]]]:
        """Return the IAM bindings held, by resource, each ``[role, member]``; none left out."""
        return {key: grants for key, grants in self.state().get("bindings", {}).items() if grants}

    def grant(self, resource: str, role: str, member: str) -> None:
        """Hold a binding before the set-up runs, as an earlier set-up left it."""
        state = self.state()
        state.setdefault("bindings", {}).setdefault(resource, []).append([role, member])
        (self.folder / "gcloud-state.json").write_text(json.dumps(state))

    def grant_changes(self) -> list[str]:
        """Return each IAM binding added or removed so far, in order, as ``add|remove MEMBER``."""
        return [
            f"{argv[_verb_at(argv)].split('-', 1)[0]} {arg.removeprefix('--member=')}"
            for argv in self.calls()
            if argv[_verb_at(argv)].endswith("-iam-policy-binding")
            for arg in argv
            if arg.startswith("--member=")
        ]

    def forget_calls(self) -> None:
        """Empty the log, keeping the resources."""
        (self.folder / "gcloud.log").unlink(missing_ok=True)


def _verb_at(argv: list[str]) -> int:
    """Return where a gcloud command's verb is in its argv."""
    verbs = {
        "describe", "create", "create-oidc", "enable", "add-iam-policy-binding",
        "remove-iam-policy-binding", "get-iam-policy",
    }  # fmt: skip
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


SHELL_OPERATORS = {"||", "&&", "|"}


def _printed_commands(out: str) -> list[list[str]]:
    """Return the gcloud commands a dry run printed, split at ``||``, ``|`` and ``&&``."""
    commands = []
    for line in out.split("\n\n", 1)[0].splitlines():
        command: list[str] = []
        for word in [*shlex.split(line), "||"]:
            if word not in SHELL_OPERATORS:
                command.append(word)
                continue
            if command[0] == "gcloud":
                commands.append(command)
            command = []
    return commands


def _variables(out: str) -> dict[str, dict[str, str]]:
    """Return the GitHub variables the set-up printed with values, by place, then by name."""
    places: dict[str, dict[str, str]] = {}
    for line in out.split("\nSet these in GitHub", 1)[1].splitlines():
        if line.startswith("In "):
            place = places.setdefault(line.removeprefix("In ").split(" (", 1)[0], {})
        elif line.startswith("  variable ") and "=" in line:
            name, value = line.removeprefix("  variable ").split("=", 1)
            place[name] = value
    return places


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
        "iam service-accounts describe",
        "iam service-accounts create",
        "artifacts repositories describe",
        "artifacts repositories create",
        "artifacts repositories describe",
        "artifacts repositories create",
        "iam workload-identity-pools describe",
        "iam workload-identity-pools create",
        "iam workload-identity-pools providers describe",
        "iam workload-identity-pools providers create-oidc",
        "iam service-accounts add-iam-policy-binding",
        "iam service-accounts add-iam-policy-binding",
        "iam service-accounts get-iam-policy",
        "artifacts repositories add-iam-policy-binding",
        "artifacts repositories add-iam-policy-binding",
    ]
    assert fake_gcloud.resources() == RESOURCES
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("done: ")] == [
        "done: the APIs it needs",
        f"done: service account {EMAIL}",
        f"done: service account {PREVIEW_EMAIL}",
        "done: Artifact Registry Docker repository data-images in europe-west1",
        "done: Artifact Registry Docker repository data-previews in europe-west1",
        "done: Workload Identity pool github-actions",
        "done: OIDC provider pyflow, for acme/pyflow only",
        f"done: acme/pyflow's production environment may act as {EMAIL}",
        f"done: acme/pyflow's preview environment may act as {PREVIEW_EMAIL}",
        f"done: {EMAIL} may push to data-images (and nothing else)",
        f"done: {PREVIEW_EMAIL} may push to data-previews (and nothing else)",
    ]
    assert "exists, skipped" not in out
    assert _variables(out) == {
        "the repository": {
            "GCP_WORKLOAD_IDENTITY_PROVIDER": PROVIDER,
            "PYFLOW_GCP_PROJECT": "acme-data",
            "PYFLOW_GCP_REGION": "europe-west1",
        },
        "the production environment": {
            "GCP_SERVICE_ACCOUNT": EMAIL,
            "PYFLOW_ARTIFACT_REPOSITORY": "data-images",
        },
        "the preview environment": {
            "PREVIEW_GCP_SERVICE_ACCOUNT": PREVIEW_EMAIL,
            "PREVIEW_ARTIFACT_REPOSITORY": "data-previews",
        },
    }
    production, preview = out.split("In the production environment", 1)[1].split(
        "In the preview environment"
    )
    assert "\n  secret PREFECT_API_KEY: " in production
    assert "\n  secret PREVIEW_PREFECT_API_KEY: " in preview
    assert "secret" not in out.split("In the repository", 1)[1].split("In the production")[0]


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
    assert fake_gcloud.bindings() == BINDINGS
    assert [line for line in second.splitlines() if line.startswith("exists, skipped: ")] == [
        f"exists, skipped: service account {EMAIL}",
        f"exists, skipped: service account {PREVIEW_EMAIL}",
        "exists, skipped: Artifact Registry Docker repository data-images in europe-west1",
        "exists, skipped: Artifact Registry Docker repository data-previews in europe-west1",
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
def test_main_trusts_each_account_to_one_github_environment_only(fake_gcloud: FakeGcloud) -> None:
    """Only `production` jobs may be the release account, only `preview` jobs the preview one."""
    assert gcp.main([]) == 0
    bindings = fake_gcloud.bindings()
    assert bindings == BINDINGS
    trusted = {
        resource: [member for role, member in grants if role == WORKLOAD_IDENTITY_USER]
        for resource, grants in bindings.items()
    }
    assert trusted[f"iam service-accounts {EMAIL}"] == [
        "principal://iam.googleapis.com/projects/123456789012/locations/global/"
        "workloadIdentityPools/github-actions/subject/repo:acme/pyflow:environment:production"
    ]
    assert trusted[f"iam service-accounts {PREVIEW_EMAIL}"] == [
        "principal://iam.googleapis.com/projects/123456789012/locations/global/"
        "workloadIdentityPools/github-actions/subject/repo:acme/pyflow:environment:preview"
    ]
    members = [member for grants in bindings.values() for _, member in grants]
    assert not [member for member in members if member.startswith("principalSet://")]


@pytest.mark.usefixtures("gcp_settings")
def test_main_grants_each_account_push_to_its_own_repository_only(
    fake_gcloud: FakeGcloud,
) -> None:
    """Releases push to the release repository, previews to theirs; no project-wide role."""
    assert gcp.main([]) == 0
    writers = {
        resource: members
        for resource, grants in fake_gcloud.bindings().items()
        if (members := [member for role, member in grants if role == WRITER])
    }
    assert writers == {
        "artifacts repositories data-images": [f"serviceAccount:{EMAIL}"],
        "artifacts repositories data-previews": [f"serviceAccount:{PREVIEW_EMAIL}"],
    }
    granted = {arg for argv in fake_gcloud.calls() for arg in argv if arg.startswith("--role=")}
    assert granted == {f"--role={WORKLOAD_IDENTITY_USER}", f"--role={WRITER}"}
    assert not [
        argv
        for argv in fake_gcloud.calls()
        if argv[0] == "projects" and "add-iam-policy-binding" in argv
    ]


@pytest.mark.usefixtures("gcp_settings")
def test_main_removes_the_trust_an_earlier_set_up_gave_every_workflow(
    fake_gcloud: FakeGcloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """A project set up before keeps no trust of any branch's workflows in the release account."""
    release_account = f"iam service-accounts {EMAIL}"
    fake_gcloud.grant(release_account, WORKLOAD_IDENTITY_USER, EVERY_WORKFLOW)
    fake_gcloud.grant(release_account, "roles/iam.serviceAccountUser", "user:ops@acme.example")
    assert gcp.main([]) == 0
    assert fake_gcloud.bindings()[release_account] == [
        ["roles/iam.serviceAccountUser", "user:ops@acme.example"],
        [WORKLOAD_IDENTITY_USER, PRODUCTION_JOBS],
    ]
    what = f"the trust of every acme/pyflow workflow in {EMAIL}, from an earlier set-up"
    assert f"done: {what}" in capsys.readouterr().out
    # The old trust goes right after the environments are bound, before any later step.
    assert fake_gcloud.grant_changes() == [
        f"add {PRODUCTION_JOBS}",
        f"add {PREVIEW_JOBS}",
        f"remove {EVERY_WORKFLOW}",
        f"add serviceAccount:{EMAIL}",
        f"add serviceAccount:{PREVIEW_EMAIL}",
    ]

    fake_gcloud.forget_calls()
    assert gcp.main([]) == 0
    assert f"absent, skipped: {what}" in capsys.readouterr().out
    assert "iam service-accounts remove-iam-policy-binding" not in fake_gcloud.actions()


@pytest.mark.usefixtures("gcp_settings")
def test_main_that_fails_after_binding_the_environments_leaves_no_repository_wide_trust(
    fake_gcloud: FakeGcloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step failing after the environments are bound finds the earlier set-up's trust gone."""
    release_account = f"iam service-accounts {EMAIL}"
    fake_gcloud.grant(release_account, WORKLOAD_IDENTITY_USER, EVERY_WORKFLOW)
    monkeypatch.setenv("FAKE_GCLOUD_FAIL", "artifacts repositories add-iam-policy-binding")
    assert gcp.main([]) == 1
    assert fake_gcloud.actions()[-1] == "artifacts repositories add-iam-policy-binding"
    bindings = fake_gcloud.bindings()
    assert bindings[release_account] == [[WORKLOAD_IDENTITY_USER, PRODUCTION_JOBS]]
    members = [member for grants in bindings.values() for _, member in grants]
    assert not [member for member in members if member.startswith("principalSet://")]


@pytest.mark.usefixtures("gcp_settings")
def test_main_stops_when_it_cannot_read_the_policy_it_would_clean(
    fake_gcloud: FakeGcloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable policy stops it with gcloud's error, rather than leaving a trust unchecked."""
    monkeypatch.setenv("FAKE_GCLOUD_FAIL", "iam service-accounts get-iam-policy")
    assert gcp.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "pyflow gcp: reading the IAM policy for the trust of every acme/pyflow workflow in "
        f"{EMAIL}, from an earlier set-up failed (gcloud exit status 1): ERROR: "
    )
    assert "safe to re-run" in err


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
    # An earlier set-up's trust is held, so the run removes it too: every printed command runs.
    fake_gcloud.grant(f"iam service-accounts {EMAIL}", WORKLOAD_IDENTITY_USER, EVERY_WORKFLOW)
    assert gcp.main([]) == 0
    ran = [
        ["gcloud", *(arg.replace(NUMBER, "PROJECT_NUMBER") for arg in argv)]
        for argv in fake_gcloud.calls()
    ]
    assert printed == ran


@pytest.mark.usefixtures("gcp_settings", "no_gcloud")
def test_main_dry_run_needs_no_gcloud(capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run works where gcloud is not installed, and shows each step as a shell line."""
    assert gcp.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert (
        "gcloud artifacts repositories describe data-images --project=acme-data "
        "--location=europe-west1 || gcloud artifacts repositories create data-images "
        "--project=acme-data --location=europe-west1 --repository-format=docker "
        "'--description=pyflow images, one tag per release'"
    ) in lines
    assert " \"--attribute-condition=assertion.repository=='acme/pyflow'\"\n" in out
    every_workflow = EVERY_WORKFLOW.replace(NUMBER, "PROJECT_NUMBER")
    assert (
        f"gcloud iam service-accounts get-iam-policy {EMAIL} --project=acme-data "
        "'--flatten=bindings[].members' --filter=bindings.role:roles/iam.workloadIdentityUser "
        f"'--format=value(bindings.members)' | grep -qxF {every_workflow} && "
        f"gcloud iam service-accounts remove-iam-policy-binding {EMAIL} --project=acme-data "
        f"--role=roles/iam.workloadIdentityUser --member={every_workflow}"
    ) in lines


@pytest.mark.usefixtures("gcp_settings")
@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("PYFLOW_PREVIEW_ARTIFACT_REPOSITORY", "PYFLOW_ARTIFACT_REPOSITORY"),
        ("PYFLOW_PREVIEW_SERVICE_ACCOUNT", "PYFLOW_RELEASE_SERVICE_ACCOUNT"),
    ],
)
def test_main_refuses_previews_sharing_the_releases_account_or_repository(
    fake_gcloud: FakeGcloud,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    setting: str,
) -> None:
    """Previews that would push as the release account, or to its repository, stop it early."""
    monkeypatch.setenv(name, SETTINGS[setting])
    assert gcp.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"pyflow gcp: {name} is {setting} ('{SETTINGS[setting]}'): previews")
    assert "set them in .env" in err
    assert fake_gcloud.calls() == []


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
        "pyflow gcp: creating Artifact Registry Docker repository data-images in europe-west1 "
        "failed (gcloud exit status 1): "
        "ERROR: (gcloud.artifacts.repositories.create) PERMISSION_DENIED: caller lacks permission. "
        "Fix the cause and run the set-up again"
    )
    assert "safe to re-run" in captured.err
    assert fake_gcloud.actions()[-1] == "artifacts repositories create"
    assert fake_gcloud.resources() == RESOURCES[:2]
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
    """``python -m pyflow_kit.gcp --help`` runs as a program and documents --dry-run."""
    result = subprocess.run(
        [sys.executable, "-m", "pyflow_kit.gcp", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pyflow_kit.gcp [-h] [--dry-run]")
    assert GCP_SETUP.summary in " ".join(result.stdout.split())


def test_module_exits_1_on_a_placeholder(tmp_path: Path) -> None:
    """Run as a program with the placeholder settings, it prints one line and exits with 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLOW_")}
    result = subprocess.run(
        [sys.executable, "-m", "pyflow_kit.gcp", "--dry-run"],
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
