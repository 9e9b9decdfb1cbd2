"""The one-time Google Cloud set-up for releases: account, repository, Workload Identity, IAM.

Run it as ``python -m pyflow.gcp [--dry-run]`` (``invoke gcp-setup`` runs it). It reads the
project, region, repository, GitHub repository and service account from the settings (``.env``),
then with ``gcloud`` creates what is missing and skips what exists, so it can be re-run safely.
At the end it prints the GitHub repository variables the release workflow reads. ``--dry-run``
prints every command instead and runs none (it needs no ``gcloud``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

from pyflow.config import PLACEHOLDERS, Settings, get_settings
from pyflow.errors import GcpError, run_command

GCLOUD = "gcloud"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
GCP_APIS = (
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "sts.googleapis.com",
)
WORKLOAD_IDENTITY_POOL = "github-actions"
WORKLOAD_IDENTITY_PROVIDER = "pyflow"
ATTRIBUTE_MAPPING = (
    "google.subject=assertion.sub,attribute.repository=assertion.repository,"
    "attribute.repository_owner=assertion.repository_owner,attribute.ref=assertion.ref"
)
GITHUB_REPOSITORY = re.compile(r"[A-Za-z0-9-]+/[A-Za-z0-9._-]+")
"""What PYFLOW_GITHUB_REPOSITORY must look like: OWNER/REPO."""
PROJECT_NUMBER_PLACEHOLDER = "PROJECT_NUMBER"
"""Stands for the project number in a dry run, which does not ask gcloud for it."""
TIMEOUT = 600.0
"""Seconds to wait for one gcloud command."""
ERROR_LINES = 5
"""How many lines of gcloud's standard error a failure shows, from its last ``ERROR:`` line."""
GCLOUD_MISSING = (
    "gcloud is not installed (not found on PATH): install the Google Cloud CLI, then run "
    "`gcloud auth login`, and run the set-up again (or pass --dry-run to see the commands)"
)


@dataclass(frozen=True)
class GcpValues:
    """The names the set-up creates and uses, taken from the settings."""

    project: str
    region: str
    repository: str
    github: str
    account: str

    @property
    def email(self) -> str:
        """The release service account's e-mail address."""
        return f"{self.account}@{self.project}.iam.gserviceaccount.com"

    def principal_set(self, project_number: str) -> str:
        """The Workload Identity principal set of the GitHub repository's workflows."""
        return (
            f"principalSet://iam.googleapis.com/projects/{project_number}/locations/global/"
            f"workloadIdentityPools/{WORKLOAD_IDENTITY_POOL}/attribute.repository/{self.github}"
        )


@dataclass(frozen=True)
class GcpStep:
    """One resource of the set-up: the command that finds it, and the one that makes it.

    A step without ``describe`` (enabling APIs, adding an IAM binding) is safe to repeat, so
    it always runs.
    """

    what: str
    create: list[str]
    describe: list[str] | None = None


def gcp_values(settings: Settings) -> GcpValues:
    """Return the set-up's names from the settings.

    Args:
        settings: pyflow's settings.

    Returns:
        The project, region, repository, GitHub repository and service account to set up.

    Raises:
        GcpError: Naming every setting that is still a placeholder or malformed, and the fix.
    """
    problems = []
    if settings.gcp_project in PLACEHOLDERS:
        problems.append(f"PYFLOW_GCP_PROJECT is still '{settings.gcp_project}'")
    github = settings.github_repository
    if not GITHUB_REPOSITORY.fullmatch(github) or github.startswith("your-org/"):
        problems.append(
            f"PYFLOW_GITHUB_REPOSITORY='{github}' is not this project's GitHub repository, "
            "OWNER/REPO"
        )
    if problems:
        raise GcpError(
            "; ".join(problems) + ": set them in .env (see .env.example) or the environment"
        )
    return GcpValues(
        project=settings.gcp_project,
        region=settings.gcp_region,
        repository=settings.artifact_repository,
        github=github,
        account=settings.release_service_account,
    )


def project_number_command(project: str) -> list[str]:
    """Return the command that prints a project's number (Workload Identity names use it)."""
    return [GCLOUD, "projects", "describe", project, "--format=value(projectNumber)"]


def gcp_plan(values: GcpValues, project_number: str) -> list[GcpStep]:
    """Return the set-up's steps in order: each `describe` is skipped-if-exists for its `create`.

    Args:
        values: The names to set up.
        project_number: The project's number (or a placeholder, for a dry run).

    Returns:
        The steps, each a resource with the commands that find and create it.
    """
    project = f"--project={values.project}"
    pool = [WORKLOAD_IDENTITY_POOL, project, "--location=global"]
    provider = [
        WORKLOAD_IDENTITY_PROVIDER,
        project,
        "--location=global",
        f"--workload-identity-pool={WORKLOAD_IDENTITY_POOL}",
    ]
    repository = [values.repository, project, f"--location={values.region}"]
    return [
        GcpStep("the APIs it needs", [GCLOUD, "services", "enable", *GCP_APIS, project]),
        GcpStep(
            f"service account {values.email}",
            [
                *(GCLOUD, "iam", "service-accounts", "create", values.account, project),
                "--display-name=pyflow releases (GitHub Actions)",
            ],
            [GCLOUD, "iam", "service-accounts", "describe", values.email, project],
        ),
        GcpStep(
            f"Artifact Registry Docker repository {values.repository} in {values.region}",
            [
                *(GCLOUD, "artifacts", "repositories", "create", *repository),
                "--repository-format=docker",
                "--description=pyflow images, one tag per release",
            ],
            [GCLOUD, "artifacts", "repositories", "describe", *repository],
        ),
        GcpStep(
            f"Workload Identity pool {WORKLOAD_IDENTITY_POOL}",
            [
                *(GCLOUD, "iam", "workload-identity-pools", "create", *pool),
                "--display-name=GitHub Actions",
            ],
            [GCLOUD, "iam", "workload-identity-pools", "describe", *pool],
        ),
        GcpStep(
            f"OIDC provider {WORKLOAD_IDENTITY_PROVIDER}, for {values.github} only",
            [
                *(GCLOUD, "iam", "workload-identity-pools", "providers", "create-oidc", *provider),
                f"--issuer-uri={GITHUB_ISSUER}",
                f"--attribute-mapping={ATTRIBUTE_MAPPING}",
                f"--attribute-condition=assertion.repository=='{values.github}'",
            ],
            [GCLOUD, "iam", "workload-identity-pools", "providers", "describe", *provider],
        ),
        GcpStep(
            f"{values.github}'s workflows may act as the service account",
            [
                *(GCLOUD, "iam", "service-accounts", "add-iam-policy-binding", values.email),
                project,
                "--role=roles/iam.workloadIdentityUser",
                f"--member={values.principal_set(project_number)}",
            ],
        ),
        GcpStep(
            f"the service account may push to {values.repository} (and nothing else)",
            [
                *(GCLOUD, "artifacts", "repositories", "add-iam-policy-binding", *repository),
                "--role=roles/artifactregistry.writer",
                f"--member=serviceAccount:{values.email}",
            ],
        ),
    ]


def github_variables(values: GcpValues, project_number: str) -> dict[str, str]:
    """Return the GitHub repository variables the release workflow reads, by name."""
    return {
        "GCP_WORKLOAD_IDENTITY_PROVIDER": (
            f"projects/{project_number}/locations/global/workloadIdentityPools/"
            f"{WORKLOAD_IDENTITY_POOL}/providers/{WORKLOAD_IDENTITY_PROVIDER}"
        ),
        "GCP_SERVICE_ACCOUNT": values.email,
        "PYFLOW_GCP_PROJECT": values.project,
        "PYFLOW_GCP_REGION": values.region,
        "PYFLOW_ARTIFACT_REPOSITORY": values.repository,
    }


def _quoted(arg: str) -> str:
    """Quote one argument for a POSIX shell, in double quotes when that reads better."""
    if "'" in arg and not any(char in arg for char in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def shown(command: list[str]) -> str:
    """Return a command as a shell would read it, for printing."""
    return " ".join(_quoted(arg) for arg in command)


def dry_run_lines(values: GcpValues) -> list[str]:
    """Return every command of the set-up, with ``PROJECT_NUMBER`` for the project's number."""
    lines = [shown(project_number_command(values.project))]
    for step in gcp_plan(values, PROJECT_NUMBER_PLACEHOLDER):
        create = shown(step.create)
        lines.append(f"{shown(step.describe)} || {create}" if step.describe else create)
    return lines


def _gcloud(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run one gcloud command, without a shell or a terminal, capturing what it prints.

    Raises:
        GcpError: If gcloud is not installed, or does not finish in time.
    """
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise GcpError(GCLOUD_MISSING) from None
    except subprocess.TimeoutExpired:
        raise GcpError(
            f"`{shown(command)}` did not finish in {TIMEOUT:.0f} seconds: check your network "
            "and `gcloud auth list`, then run the set-up again (it skips what already exists)"
        ) from None


def _last_lines(text: str) -> str:
    """Return gcloud's error output on one line: from its last ``ERROR:`` line, else its end."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [at for at, line in enumerate(lines) if line.startswith("ERROR:")]
    lines = lines[errors[-1] :][:ERROR_LINES] if errors else lines[-ERROR_LINES:]
    return " | ".join(lines).rstrip(".: ") or "(nothing on standard error)"


def project_number(project: str) -> str:
    """Ask gcloud for a project's number.

    Raises:
        GcpError: If gcloud cannot read the project (not logged in, or no such project).
    """
    result = _gcloud(project_number_command(project))
    number = result.stdout.strip()
    if result.returncode != 0 or not number.isdigit():
        said = _last_lines(result.stderr) if result.returncode != 0 else f"it printed '{number}'"
        raise GcpError(
            f"cannot read the number of project '{project}' (PYFLOW_GCP_PROJECT): {said}. "
            "Check that you are logged in (`gcloud auth login`) and that the project exists and "
            "you can see it (`gcloud projects list`)"
        )
    return number


def _say(line: str) -> None:
    """Print one line of the set-up's progress or summary."""
    print(line, flush=True)


def apply(steps: list[GcpStep]) -> None:
    """Run the steps in order: skip each resource that exists, create the others.

    Raises:
        GcpError: At the first create that fails, naming the step and gcloud's error; the
            steps after it are not run.
    """
    for step in steps:
        if step.describe and _gcloud(step.describe).returncode == 0:
            _say(f"exists, skipped: {step.what}")
            continue
        _say(f"creating: {step.what}: {shown(step.create)}")
        result = _gcloud(step.create)
        if result.returncode != 0:
            raise GcpError(
                f"creating {step.what} failed (gcloud exit status {result.returncode}): "
                f"{_last_lines(result.stderr)}. Fix the cause and run the set-up again: it is "
                "safe to re-run, and skips what already exists"
            )
        _say(f"done: {step.what}")


def print_github_variables(values: GcpValues, number: str) -> None:
    """Print the GitHub repository variables and secret the release workflow reads."""
    _say("\nSet these in GitHub (Settings, Secrets and variables, Actions), as variables:")
    for name, value in github_variables(values, number).items():
        _say(f"  {name}={value}")
    _say(
        "  PYFLOW_IMAGE_NAME, PYFLOW_OUTPUT (gs://BUCKET/PATH) and PREFECT_API_URL, as in .env\n"
        "and as a secret:\n  PREFECT_API_KEY (a Prefect Cloud API key; none for a server without auth)"
    )


def set_up(settings: Settings, dry_run: bool = False) -> None:
    """Set up Google Cloud once for releases, or with ``dry_run`` print the commands only.

    Args:
        settings: pyflow's settings, which name the project and the GitHub repository.
        dry_run: Print every gcloud command and run none (needs no gcloud).

    Raises:
        GcpError: If a setting is a placeholder, gcloud is missing or a command fails.
    """
    values = gcp_values(settings)
    if dry_run:
        for line in dry_run_lines(values):
            _say(line)
        number = PROJECT_NUMBER_PLACEHOLDER
    else:
        number = project_number(values.project)
        apply(gcp_plan(values, number))
    print_github_variables(values, number)


def build_parser() -> argparse.ArgumentParser:
    """Describe the command line of ``python -m pyflow.gcp``."""
    parser = argparse.ArgumentParser(
        prog="python -m pyflow.gcp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print every gcloud command with your values and run none (default: run them)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the set-up from the command line; print a problem as one line, with exit status 1."""
    args = build_parser().parse_args(argv)
    return run_command("gcp", lambda: set_up(get_settings(), dry_run=args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
