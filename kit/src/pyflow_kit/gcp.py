"""The one-time Google Cloud set-up for releases and previews: accounts, repositories, trust, IAM.

Run it as ``python -m pyflow_kit.gcp [--dry-run]`` (``invoke gcp-setup`` runs it). It reads the
project, region, repositories, GitHub repository and service accounts from the settings
(``.env``), then with ``gcloud`` creates what is missing and skips what exists, so it can be
re-run safely. Releases and previews get a service account and an Artifact Registry repository
each; Workload Identity lets only the GitHub repository's ``production`` environment act as the
release account, and only its ``preview`` environment as the preview account. A re-run removes
the trust an earlier set-up gave every workflow of the repository, right after it binds the
environments, so a later step that fails cannot leave that trust behind. At the end it prints
the GitHub variables the workflows read. ``--dry-run`` prints every command instead and runs none
(it needs no ``gcloud``).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

from pyflow_kit import commands
from pyflow_kit.errors import GcpError, run_command
from pyflow_kit.settings import PLACEHOLDERS, Settings, get_settings

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
WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"
ARTIFACT_WRITER = "roles/artifactregistry.writer"
ATTRIBUTE_MAPPING = (
    "google.subject=assertion.sub,attribute.repository=assertion.repository,"
    "attribute.repository_owner=assertion.repository_owner,attribute.ref=assertion.ref"
)
"""GitHub's OIDC claims as Google attributes; ``google.subject`` is the token's ``sub``, which
for a job in an environment is ``repo:OWNER/REPO:environment:NAME``."""
RELEASE_ENVIRONMENT = "production"
"""The GitHub environment of the release workflow's job: only it may act as the release account."""
PREVIEW_ENVIRONMENT = "preview"
"""The GitHub environment of the preview workflow's job: only it may act as the preview account."""
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
    preview_repository: str
    preview_account: str

    @property
    def email(self) -> str:
        """The release service account's e-mail address."""
        return f"{self.account}@{self.project}.iam.gserviceaccount.com"

    @property
    def preview_email(self) -> str:
        """The preview service account's e-mail address."""
        return f"{self.preview_account}@{self.project}.iam.gserviceaccount.com"

    def pool_name(self, project_number: str) -> str:
        """The Workload Identity pool's resource name, as IAM principals spell it."""
        return (
            f"iam.googleapis.com/projects/{project_number}/locations/global/"
            f"workloadIdentityPools/{WORKLOAD_IDENTITY_POOL}"
        )

    def environment_principal(self, project_number: str, environment: str) -> str:
        """The one Workload Identity principal of the GitHub repository's jobs in an environment.

        GitHub's OIDC token for a job that names an environment has the subject
        ``repo:OWNER/REPO:environment:NAME``, whatever branch, tag or event started it.
        """
        subject = f"repo:{self.github}:environment:{environment}"
        return f"principal://{self.pool_name(project_number)}/subject/{subject}"

    def repository_principal_set(self, project_number: str) -> str:
        """Every workflow of the GitHub repository: the trust an earlier set-up gave, now removed."""
        return f"principalSet://{self.pool_name(project_number)}/attribute.repository/{self.github}"


@dataclass(frozen=True)
class GcpStep:
    """One resource or grant of the set-up: the command that makes it, and the one that finds it.

    A step without ``describe`` (enabling APIs, adding an IAM binding) is safe to repeat, so
    it always runs; with one, it is skipped when ``describe`` succeeds. A step that ``revokes``
    a member removes a grant instead: its command runs only when ``describe`` prints that
    member on a line of its own.
    """

    what: str
    command: list[str]
    describe: list[str] | None = None
    revokes: str | None = None


def gcp_values(settings: Settings) -> GcpValues:
    """Return the set-up's names from the settings.

    Args:
        settings: pyflow's settings.

    Returns:
        The project, region, repositories, GitHub repository and service accounts to set up.

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
    if settings.preview_artifact_repository == settings.artifact_repository:
        problems.append(
            "PYFLOW_PREVIEW_ARTIFACT_REPOSITORY is PYFLOW_ARTIFACT_REPOSITORY "
            f"('{settings.artifact_repository}'): previews need a repository of their own"
        )
    if settings.preview_service_account == settings.release_service_account:
        problems.append(
            "PYFLOW_PREVIEW_SERVICE_ACCOUNT is PYFLOW_RELEASE_SERVICE_ACCOUNT "
            f"('{settings.release_service_account}'): previews need an account of their own"
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
        preview_repository=settings.preview_artifact_repository,
        preview_account=settings.preview_service_account,
    )


def project_number_command(project: str) -> list[str]:
    """Return the command that prints a project's number (Workload Identity names use it)."""
    return [GCLOUD, "projects", "describe", project, "--format=value(projectNumber)"]


def _account_step(values: GcpValues, account: str, email: str, purpose: str) -> GcpStep:
    """Return the step that creates one service account."""
    project = f"--project={values.project}"
    return GcpStep(
        f"service account {email}",
        [
            *(GCLOUD, "iam", "service-accounts", "create", account, project),
            f"--display-name=pyflow {purpose} (GitHub Actions)",
        ],
        [GCLOUD, "iam", "service-accounts", "describe", email, project],
    )


def _repository_step(values: GcpValues, repository: str, description: str) -> GcpStep:
    """Return the step that creates one Artifact Registry Docker repository."""
    where = [repository, f"--project={values.project}", f"--location={values.region}"]
    return GcpStep(
        f"Artifact Registry Docker repository {repository} in {values.region}",
        [
            *(GCLOUD, "artifacts", "repositories", "create", *where),
            "--repository-format=docker",
            f"--description={description}",
        ],
        [GCLOUD, "artifacts", "repositories", "describe", *where],
    )


def _trust_step(values: GcpValues, email: str, environment: str, number: str) -> GcpStep:
    """Return the step that lets one GitHub environment's jobs act as a service account."""
    return GcpStep(
        f"{values.github}'s {environment} environment may act as {email}",
        [
            *(GCLOUD, "iam", "service-accounts", "add-iam-policy-binding", email),
            f"--project={values.project}",
            f"--role={WORKLOAD_IDENTITY_USER}",
            f"--member={values.environment_principal(number, environment)}",
        ],
    )


def _writer_step(values: GcpValues, email: str, repository: str) -> GcpStep:
    """Return the step that lets a service account push to one repository."""
    return GcpStep(
        f"{email} may push to {repository} (and nothing else)",
        [
            *(GCLOUD, "artifacts", "repositories", "add-iam-policy-binding", repository),
            f"--project={values.project}",
            f"--location={values.region}",
            f"--role={ARTIFACT_WRITER}",
            f"--member=serviceAccount:{email}",
        ],
    )


def _revoke_repository_trust(values: GcpValues, number: str) -> GcpStep:
    """Return the step that removes the earlier set-up's trust of every workflow of the repository."""
    project = f"--project={values.project}"
    member = values.repository_principal_set(number)
    return GcpStep(
        f"the trust of every {values.github} workflow in {values.email}, from an earlier set-up",
        [
            *(GCLOUD, "iam", "service-accounts", "remove-iam-policy-binding", values.email),
            project,
            f"--role={WORKLOAD_IDENTITY_USER}",
            f"--member={member}",
        ],
        [
            *(GCLOUD, "iam", "service-accounts", "get-iam-policy", values.email, project),
            "--flatten=bindings[].members",
            f"--filter=bindings.role:{WORKLOAD_IDENTITY_USER}",
            "--format=value(bindings.members)",
        ],
        revokes=member,
    )


def gcp_plan(values: GcpValues, project_number: str) -> list[GcpStep]:
    """Return the set-up's steps in order: each `describe` is skipped-if-exists for its command.

    Args:
        values: The names to set up.
        project_number: The project's number (or a placeholder, for a dry run).

    Returns:
        The steps, each a resource or grant with the commands that find and make it.
    """
    project = f"--project={values.project}"
    pool = [WORKLOAD_IDENTITY_POOL, project, "--location=global"]
    provider = [
        WORKLOAD_IDENTITY_PROVIDER,
        project,
        "--location=global",
        f"--workload-identity-pool={WORKLOAD_IDENTITY_POOL}",
    ]
    return [
        GcpStep("the APIs it needs", [GCLOUD, "services", "enable", *GCP_APIS, project]),
        _account_step(values, values.account, values.email, "releases"),
        _account_step(values, values.preview_account, values.preview_email, "previews"),
        _repository_step(values, values.repository, "pyflow images, one tag per release"),
        _repository_step(
            values, values.preview_repository, "pyflow preview images, one tag per pull request"
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
        _trust_step(values, values.email, RELEASE_ENVIRONMENT, project_number),
        _trust_step(values, values.preview_email, PREVIEW_ENVIRONMENT, project_number),
        # As soon as the environments' trust replaces it, so no later failure can keep it.
        _revoke_repository_trust(values, project_number),
        _writer_step(values, values.email, values.repository),
        _writer_step(values, values.preview_email, values.preview_repository),
    ]


GITHUB_PLACES = {
    "repository": "the repository (Settings, Secrets and variables, Actions), for both jobs",
    RELEASE_ENVIRONMENT: f"the {RELEASE_ENVIRONMENT} environment (Settings, Environments)",
    PREVIEW_ENVIRONMENT: f"the {PREVIEW_ENVIRONMENT} environment (Settings, Environments)",
}
"""Where GitHub keeps each group of the workflows' variables, by key."""
GITHUB_OTHER_VARIABLES = {
    "repository": {"PYFLOW_IMAGE_NAME": "as in .env"},
    RELEASE_ENVIRONMENT: {
        "PYFLOW_OUTPUT": "the production bucket and folder, gs://BUCKET/PATH, as in .env",
        "PREFECT_API_URL": "production's Prefect workspace or server, as in .env",
    },
    PREVIEW_ENVIRONMENT: {
        "PREVIEW_OUTPUT": "a bucket and folder apart from production's, gs://BUCKET/PATH",
        "PREVIEW_PREFECT_API_URL": "a Prefect workspace or server apart from production's",
        "PREVIEW_NAMESPACE": "the Kubernetes namespace of the previews' worker and flow runs",
    },
}
"""The variables each place also holds, which the set-up cannot know: what to set them to."""
GITHUB_SECRETS = {
    RELEASE_ENVIRONMENT: {
        "PREFECT_API_KEY": "a Prefect Cloud API key of a service account (none without auth)"
    },
    PREVIEW_ENVIRONMENT: {
        "PREVIEW_PREFECT_API_KEY": "an API key of the previews' workspace (none without auth)"
    },
}
"""The secrets each environment holds (the repository holds none): what to set them to."""


def github_variables(values: GcpValues, project_number: str) -> dict[str, dict[str, str]]:
    """Return the GitHub variables the workflows read, by place (`GITHUB_PLACES`), then name."""
    return {
        "repository": {
            "GCP_WORKLOAD_IDENTITY_PROVIDER": (
                f"projects/{project_number}/locations/global/workloadIdentityPools/"
                f"{WORKLOAD_IDENTITY_POOL}/providers/{WORKLOAD_IDENTITY_PROVIDER}"
            ),
            "PYFLOW_GCP_PROJECT": values.project,
            "PYFLOW_GCP_REGION": values.region,
        },
        RELEASE_ENVIRONMENT: {
            "GCP_SERVICE_ACCOUNT": values.email,
            "PYFLOW_ARTIFACT_REPOSITORY": values.repository,
        },
        PREVIEW_ENVIRONMENT: {
            "PREVIEW_GCP_SERVICE_ACCOUNT": values.preview_email,
            "PREVIEW_ARTIFACT_REPOSITORY": values.preview_repository,
        },
    }


def _quoted(arg: str) -> str:
    """Quote one argument for a POSIX shell, in double quotes when that reads better."""
    if "'" in arg and not any(char in arg for char in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def shown(command: list[str]) -> str:
    """Return a command as a shell would read it, for printing."""
    return " ".join(_quoted(arg) for arg in command)


def shown_step(step: GcpStep) -> str:
    """Return a step as one shell line that does what `apply` does with it."""
    command = shown(step.command)
    if step.describe is None:
        return command
    if step.revokes is not None:
        return f"{shown(step.describe)} | grep -qxF {_quoted(step.revokes)} && {command}"
    return f"{shown(step.describe)} || {command}"


def dry_run_lines(values: GcpValues) -> list[str]:
    """Return every command of the set-up, with ``PROJECT_NUMBER`` for the project's number."""
    steps = gcp_plan(values, PROJECT_NUMBER_PLACEHOLDER)
    return [shown(project_number_command(values.project)), *map(shown_step, steps)]


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


def _needed(step: GcpStep) -> bool:
    """Return whether a step's command must run: what it makes is missing, or what it removes is there.

    Raises:
        GcpError: If the policy a removal reads cannot be read.
    """
    if step.describe is None:
        return True
    found = _gcloud(step.describe)
    if step.revokes is None:
        if found.returncode == 0:
            _say(f"exists, skipped: {step.what}")
            return False
        return True
    if found.returncode != 0:
        raise GcpError(
            f"reading the IAM policy for {step.what} failed (gcloud exit status "
            f"{found.returncode}): {_last_lines(found.stderr)}. Fix the cause and run the set-up "
            "again: it is safe to re-run, and skips what already exists"
        )
    if step.revokes in {line.strip() for line in found.stdout.splitlines()}:
        return True
    _say(f"absent, skipped: {step.what}")
    return False


def apply(steps: list[GcpStep]) -> None:
    """Run the steps in order: skip each resource that exists or grant that is gone, do the others.

    Raises:
        GcpError: At the first command that fails, naming the step and gcloud's error; the
            steps after it are not run.
    """
    for step in steps:
        if not _needed(step):
            continue
        doing = "removing" if step.revokes else "creating"
        _say(f"{doing}: {step.what}: {shown(step.command)}")
        result = _gcloud(step.command)
        if result.returncode != 0:
            raise GcpError(
                f"{doing} {step.what} failed (gcloud exit status {result.returncode}): "
                f"{_last_lines(result.stderr)}. Fix the cause and run the set-up again: it is "
                "safe to re-run, and skips what already exists"
            )
        _say(f"done: {step.what}")


def print_github_variables(values: GcpValues, number: str) -> None:
    """Print the GitHub variables and secrets the workflows read, and where each one is set."""
    _say("\nSet these in GitHub, each in its place; the repository itself holds no secret.")
    for place, variables in github_variables(values, number).items():
        _say(f"In {GITHUB_PLACES[place]}:")
        for name, value in variables.items():
            _say(f"  variable {name}={value}")
        for name, hint in GITHUB_OTHER_VARIABLES[place].items():
            _say(f"  variable {name}: {hint}")
        for name, hint in GITHUB_SECRETS.get(place, {}).items():
            _say(f"  secret {name}: {hint}")


def set_up(settings: Settings, dry_run: bool = False) -> None:
    """Set up Google Cloud once for releases and previews, or with ``dry_run`` print the commands.

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


def main(argv: list[str] | None = None) -> int:
    """Run the set-up from the command line; print a problem as one line, with exit status 1."""
    args = commands.parser("pyflow_kit.gcp").parse_args(argv)
    return run_command("gcp", lambda: set_up(get_settings(), dry_run=bool(args.dry_run)))


if __name__ == "__main__":
    sys.exit(main())
