"""Release checks that need the project's packages: settings, Artifact Registry and Prefect.

``invoke release`` runs these before it builds anything:

- ``python -m pyflow.release settings``: every production setting is set and real;
- ``python -m pyflow.release registry --version V --commit C``: the Artifact Registry repository
  exists and the version's tag is not there yet (or, when a release is re-run after a later step
  failed, points at the image of this very commit: then the image is not built again);
- ``python -m pyflow.release prefect``: the Prefect API answers and accepts the API key.

Each prints one line of JSON on success, or one message naming the problem and the fix on
standard error, with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pyflow.config import Settings, get_settings
from pyflow.errors import NoCredentialsError, PyflowError, ReleaseError

if TYPE_CHECKING:
    from google.cloud.artifactregistry_v1 import ArtifactRegistryClient, Repository, Tag

TIMEOUT = 30.0
"""Seconds to wait for one Artifact Registry request."""


@dataclass(frozen=True)
class ImageLocation:
    """Where the image lives: ``REGION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE``."""

    project: str
    region: str
    repository: str
    image: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLocation:
        """Return the location the settings name."""
        return cls(
            settings.gcp_project,
            settings.gcp_region,
            settings.artifact_repository,
            settings.image_name,
        )

    @property
    def url(self) -> str:
        """The image's URL, without a tag."""
        return f"{self.region}-docker.pkg.dev/{self.project}/{self.repository}/{self.image}"

    @property
    def repository_name(self) -> str:
        """The repository's resource name, ``projects/P/locations/L/repositories/R``."""
        return f"projects/{self.project}/locations/{self.region}/repositories/{self.repository}"

    def tag_name(self, tag: str) -> str:
        """A tag's resource name; the image is the package, its slashes escaped."""
        return f"{self.repository_name}/packages/{quote(self.image, safe='')}/tags/{tag}"


@dataclass(frozen=True)
class ImagePlan:
    """What the release does with the image: build and push it, or reuse the one pushed."""

    action: str
    digest: str | None = None


def make_client() -> ArtifactRegistryClient:
    """Create an Artifact Registry client with the default Google credentials.

    Raises:
        ReleaseError: If there are no credentials.
    """
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud.artifactregistry_v1 import ArtifactRegistryClient

    try:
        return ArtifactRegistryClient()
    except DefaultCredentialsError:
        raise NoCredentialsError(
            "no Google credentials were found: run `gcloud auth application-default login` "
            "(in GitHub Actions, the google-github-actions/auth step provides them)"
        ) from None


def _denied(location: ImageLocation, what: str) -> ReleaseError:
    """Return the error for a request the credentials may not make."""
    return ReleaseError(
        f"the Google credentials may not {what} in Artifact Registry repository "
        f"'{location.repository}' (project {location.project}, region {location.region}): grant "
        "them roles/artifactregistry.writer on that repository (`invoke gcp-setup` does it for "
        "the release service account)"
    )


def check_repository(client: ArtifactRegistryClient, location: ImageLocation) -> Repository:
    """Return the image's repository after checking it exists and holds Docker images.

    Raises:
        ReleaseError: If it is missing, cannot be read, or is not a Docker repository.
    """
    from google.api_core.exceptions import NotFound, PermissionDenied
    from google.cloud.artifactregistry_v1 import Repository

    try:
        repository = client.get_repository(name=location.repository_name, timeout=TIMEOUT)
    except NotFound:
        raise ReleaseError(
            f"Artifact Registry repository '{location.repository}' does not exist in project "
            f"'{location.project}', region '{location.region}': create it with `invoke "
            "gcp-setup`, or fix PYFLOW_ARTIFACT_REPOSITORY, PYFLOW_GCP_PROJECT or PYFLOW_GCP_REGION"
        ) from None
    except PermissionDenied:
        raise _denied(location, "read the repository") from None
    if repository.format_ != Repository.Format.DOCKER:
        raise ReleaseError(
            f"Artifact Registry repository '{location.repository}' holds "
            f"{repository.format_.name} packages, not Docker images: set "
            "PYFLOW_ARTIFACT_REPOSITORY to a Docker repository"
        )
    return repository


def find_tag(client: ArtifactRegistryClient, location: ImageLocation, tag: str) -> Tag | None:
    """Return the image's tag if it exists, else None.

    Raises:
        ReleaseError: If the credentials may not read tags.
    """
    from google.api_core.exceptions import NotFound, PermissionDenied

    try:
        return client.get_tag(name=location.tag_name(tag), timeout=TIMEOUT)
    except NotFound:
        return None
    except PermissionDenied:
        raise _denied(location, "read image tags") from None


def tag_digest(tag: Tag) -> str:
    """Return the digest a tag points at (``sha256:...``), from its version's name."""
    return tag.version.rsplit("/versions/", 1)[-1]


def plan_image(
    client: ArtifactRegistryClient, location: ImageLocation, version: str, commit: str
) -> ImagePlan:
    """Decide whether to build the release's image, or reuse the one a failed release pushed.

    Raises:
        ReleaseError: If the repository cannot take the image, or the version's tag already
            points at an image of another commit (release tags are never overwritten).
    """
    check_repository(client, location)
    existing = find_tag(client, location, version)
    if existing is None:
        return ImagePlan("build")
    same_commit = find_tag(client, location, commit)
    if same_commit is not None and tag_digest(same_commit) == tag_digest(existing):
        return ImagePlan("reuse", tag_digest(existing))
    raise ReleaseError(
        f"{location.url}:{version} already exists ({tag_digest(existing)}) and was not built "
        f"from commit {commit}: release tags are never overwritten; publish a new version"
    )


def check_prefect() -> dict[str, str]:
    """Check that the Prefect API answers and accepts the configured key; return its URLs.

    Raises:
        ReleaseError: If PREFECT_API_URL is unset, the API does not answer, or refuses the key.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL, PREFECT_UI_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise ReleaseError(
            "PREFECT_API_URL is not set: set it (and PREFECT_API_KEY for Prefect Cloud) in .env "
            "or as GitHub repository variables and secrets"
        )
    try:
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
            if problem is not None:
                raise ReleaseError(f"the Prefect API at {api_url} does not answer: {problem}")
            client.read_work_pools(limit=1)
    except PrefectHTTPStatusError as error:
        status = error.response.status_code
        if status in (401, 403):
            key = (
                "PREFECT_API_KEY is not set"
                if not PREFECT_API_KEY.value()
                else "PREFECT_API_KEY was refused"
            )
            raise ReleaseError(
                f"{key} by the Prefect API at {api_url} (HTTP {status}): create a key in Prefect "
                "Cloud (profile, API keys) and set it as the PREFECT_API_KEY secret"
            ) from None
        raise ReleaseError(
            f"the Prefect API at {api_url} answered HTTP {status}: check PREFECT_API_URL (for "
            "Prefect Cloud, https://api.prefect.cloud/api/accounts/ACCOUNT/workspaces/WORKSPACE)"
        ) from None
    return {"api_url": api_url, "ui_url": PREFECT_UI_URL.value() or api_url.removesuffix("/api")}


def main(argv: list[str] | None = None) -> int:
    """Run one release check; print its result as JSON, or its problem."""
    parser = argparse.ArgumentParser(prog="python -m pyflow.release", description=__doc__)
    parser.add_argument("check", choices=["settings", "registry", "prefect"])
    parser.add_argument("--version", help="the release version (registry check)")
    parser.add_argument("--commit", help="the release's short commit (registry check)")
    parser.add_argument(
        "--dry-run", action="store_true", help="registry check: without Google credentials, skip it"
    )
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        result: dict[str, Any]
        if args.check == "settings":
            settings.require_release()
            result = {
                "image": ImageLocation.from_settings(settings).url,
                "work_pool": settings.work_pool,
            }
        elif args.check == "registry":
            location = ImageLocation.from_settings(settings)
            try:
                client = make_client()
            except NoCredentialsError as error:
                if not args.dry_run:
                    raise
                print(f"pyflow release: dry run, registry check skipped: {error}", file=sys.stderr)
                client = None
            result = (
                asdict(plan_image(client, location, args.version, args.commit))
                if client
                else {"action": "build", "digest": None, "skipped": "no Google credentials"}
            )
        else:
            result = check_prefect()
    except PyflowError as error:
        print(f"pyflow release: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
