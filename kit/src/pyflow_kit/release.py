"""The release: check everything, then build, push and register the production deployments.

``python -m pyflow_kit.release`` (what `invoke release` runs, in CI on a published GitHub release)
checks, in order, before it builds anything:

- every production setting is set and real;
- the git working tree is clean, untracked files included (they would ship in the image);
- HEAD is tagged with a semantic version equal to pyproject.toml's;
- the tagged commit is on the release branch (``PYFLOW_RELEASE_BRANCH``, the repository's
  default branch in CI) as the remote ``origin`` has it: nothing unmerged is released;
- the Artifact Registry repository exists and the version's tag is not there yet (or, when a
  release is re-run after a later step failed, points at the image of this very commit: then
  the image is not built again);
- the Prefect API answers and accepts the API key;
- the work pool's base job template (read from the API) uses every job variable pyflow sets,
  which the Kubernetes worker would otherwise drop without a word.

Then it builds the image (`pyflow_kit.image`), runs the first flow in it as the Kubernetes worker
would, against a throwaway Prefect server (`pyflow_kit.smoke`), and only if that run completes
pushes it and registers every flow's deployment on the pushed digest (`pyflow_kit.deploy`). ``--dry-run`` checks and prints the plan, and changes
nothing. Each problem is one message naming it and the fix, with exit status 1.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from packaging.version import InvalidVersion, Version

from pyflow_kit import alerts, bootstrap, commands, history, image, project, smoke
from pyflow_kit.errors import NoCredentialsError, PyflowError, ReleaseError, run_command
from pyflow_kit.settings import Settings, get_settings

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
            "PREFECT_API_URL is not set: set it (and PREFECT_API_KEY for Prefect Cloud) in .env, "
            "or as a variable (and a secret) of the repository's production environment on GitHub"
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
                "Cloud (profile, API keys) and set it as the PREFECT_API_KEY secret of the "
                "repository's production environment"
            ) from None
        raise ReleaseError(
            f"the Prefect API at {api_url} answered HTTP {status}: check PREFECT_API_URL (for "
            "Prefect Cloud, https://api.prefect.cloud/api/accounts/ACCOUNT/workspaces/WORKSPACE)"
        ) from None
    return {"api_url": api_url, "ui_url": PREFECT_UI_URL.value() or api_url.removesuffix("/api")}


def release_version(tag: str) -> Version:
    """Return the version a release tag names: ``1.2.3``, ``v1.2.3``, ``1.2.3-rc.1``.

    Raises:
        ReleaseError: If the tag is not MAJOR.MINOR.PATCH, with an optional pre-release.
    """
    try:
        version = Version(tag.removeprefix("v"))
    except InvalidVersion:
        version = None
    if (
        version is None
        or len(version.release) != 3
        or version.epoch
        or version.local
        or version.is_postrelease
        or version.is_devrelease
    ):
        raise ReleaseError(
            f"the tag '{tag}' is not a semantic version: tag the release 1.2.3 or v1.2.3, or "
            "1.2.3-rc.1 for a pre-release (GitHub: Releases, Draft a new release, Choose a tag)"
        )
    return version


def check_clean(root: Path) -> None:
    """Refuse a working tree that differs from HEAD, untracked files included.

    Raises:
        ReleaseError: Naming the files that differ.
    """
    changed = image.changed_files(root)
    if changed:
        listed = ", ".join(changed[:5]) + (
            f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise ReleaseError(
            f"the working tree differs from the tagged commit ({listed}): commit, stash or "
            "remove them (untracked files would ship in the image); a release builds exactly "
            "what its tag points at"
        )


def head_tag(root: Path) -> str | None:
    """Return the tag that points at HEAD, if any."""
    try:
        return image.git(root, "describe", "--exact-match", "--tags", "HEAD").strip()
    except PyflowError:
        return None


def plan_version(root: Path, dry_run: bool) -> str:
    """Return the version to release: HEAD's tag, which must match pyproject.toml's.

    A dry run of an untagged HEAD plans pyproject.toml's version.

    Raises:
        ReleaseError: If HEAD has no tag (outside a dry run), a malformed one, or another version.
    """
    written = image.project_version(root)
    tag = head_tag(root)
    if tag is None:
        if not dry_run:
            raise ReleaseError(
                "HEAD has no tag: tag the release (1.2.3 or v1.2.3) and publish it on GitHub"
            )
        print(f"dry run: HEAD has no tag, so this plans version {written} from pyproject.toml")
        return written
    version = release_version(tag)
    try:
        same = Version(written) == version
    except InvalidVersion:
        same = False
    if not same:
        raise ReleaseError(
            f"the tag says {version} but pyproject.toml says {written}: set the version with "
            f"`poetry version {version}`, commit, and tag that commit"
        )
    return str(version)


def _git_status(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a git command whose exit status is its answer, and return how it ended."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def check_on_branch(root: Path, branch: str, tag: str | None) -> None:
    """Refuse to release a commit that is not on the release branch, as ``origin`` has it.

    A tag can point at any commit, on any branch: this stops a release, by mistake, of what
    was not merged into ``branch``. It runs in the tagged commit's own code, so it is no guard
    against a malicious tag: the tag ruleset and the production environment's reviewers are.

    Args:
        root: The project's git repository, checked out at the release.
        branch: The release branch, such as ``main``.
        tag: HEAD's tag, to name in the message (None when HEAD has none).

    Raises:
        ReleaseError: If ``origin/BRANCH`` is unknown here, or does not contain HEAD.
    """
    remote = f"origin/{branch}"
    known = _git_status(
        root, "rev-parse", "--verify", "--quiet", f"refs/remotes/{remote}^{{commit}}"
    )
    if known.returncode != 0:
        raise ReleaseError(
            f"{remote} is not known in {root}, so nothing shows that the release is on {branch} "
            f"(PYFLOW_RELEASE_BRANCH): fetch it (`git fetch origin {branch}`; the release "
            "workflow checks out with fetch-depth: 0), or set PYFLOW_RELEASE_BRANCH to the "
            "repository's default branch"
        )
    contained = _git_status(root, "merge-base", "--is-ancestor", "HEAD", f"refs/remotes/{remote}")
    if contained.returncode == 0:
        return
    shallow = image.git(root, "rev-parse", "--is-shallow-repository").strip() == "true"
    if contained.returncode != 1 or shallow:
        said = contained.stderr.strip() or "its history is cut short (a shallow clone)"
        raise ReleaseError(
            f"cannot tell whether HEAD is on {remote} in {root}: {said}: fetch the full "
            "history (`git fetch --unshallow origin`; the release workflow checks out with "
            "fetch-depth: 0) and release again"
        )
    commit = image.git(root, "rev-parse", "--short=7", "HEAD").strip()
    what = f"the tag '{tag}' points at commit {commit}" if tag else f"HEAD ({commit})"
    raise ReleaseError(
        f"{what}, which is not on {branch} ({remote}): a release ships only what was merged "
        f"into {branch}: merge the change into {branch}, then delete this tag and publish the "
        f"release again on a commit of {branch}"
    )


def registry_plan(location: ImageLocation, version: str, commit: str, dry_run: bool) -> ImagePlan:
    """Return what to do with the image; a dry run without Google credentials plans a build."""
    try:
        client = make_client()
    except NoCredentialsError as error:
        if not dry_run:
            raise
        print(f"dry run: registry check skipped: {error}")
        return ImagePlan("build")
    return plan_image(client, location, version, commit)


@dataclass(frozen=True)
class Options:
    """The release's flags."""

    engine: str = ""
    dry_run: bool = False
    build: image.BuildOptions = field(default_factory=image.BuildOptions)
    home: Path = Path(".prefect")
    root: Path = field(default_factory=bootstrap.root)
    registry: str = ""
    insecure: bool = False


def release(settings: Settings, options: Options) -> str:
    """Check everything, then build, push and register; return the deployed image.

    Raises:
        PyflowError: At the first check or step that fails, naming it and the fix.
    """
    from pyflow_kit.deploy import check_job_variables, deploy_production

    dry_run = options.dry_run
    print("check: every production setting is set")
    settings.require_release()
    print("check: the git working tree is clean")
    check_clean(options.root)
    print("check: HEAD is tagged with the version in pyproject.toml")
    version = plan_version(options.root, dry_run)
    print(f"check: the tagged commit is on {settings.release_branch} (origin)")
    try:
        check_on_branch(options.root, settings.release_branch, head_tag(options.root))
    except ReleaseError as error:
        if not dry_run:
            raise
        print(f"dry run: a release would stop here: {error}")
    engine = image.container_engine(options.engine, settings, required=not dry_run)
    release_image = image.image_for(settings, options.registry, version, options.root)
    if options.registry:
        print(f"check: skipped, the image goes to {options.registry}, not Artifact Registry")
        plan = ImagePlan("build")
    else:
        print(f"check: Artifact Registry can take {release_image.tags[0]}")
        location = ImageLocation.from_settings(settings)
        plan = registry_plan(location, version, release_image.commit, dry_run)
    print("check: the Prefect API answers and accepts the key")
    prefect = check_prefect()
    print(f"check: work pool '{settings.pool}' uses every job variable pyflow sets")
    check_job_variables(settings)
    if plan.action == "reuse" and plan.digest:
        digest = plan.digest
        print(
            f"{release_image.tags[0]} was pushed by an earlier attempt ({digest}): not built again"
        )
    elif dry_run:
        digest = "sha256:<pushed digest>"
        print("dry run: the release would now build, smoke-run and push the image:")
        print(image.shown(image.build_command(engine, release_image, options.build, options.root)))
        print(f"python -m pyflow_kit.smoke {release_image.tags[0]} --engine {engine}")
        for tag in reversed(release_image.tags):
            print(image.shown(image.push_command(engine, tag, insecure=options.insecure)))
    else:
        image.build(engine, release_image, options.build, options.root)
        smoke.smoke_run(engine, release_image.tags[0], settings, options.build.isolation)
        digest = image.push(engine, release_image, options.home, options.insecure)
    pinned = release_image.pinned(digest)
    if dry_run:
        print(f"dry run: would register every flow on work pool '{settings.pool}' with {pinned}")
    else:
        registered = deploy_production(settings, pinned, version)
        for item in registered:
            print(f"registered {item.name} on work pool '{item.work_pool}'")
        for line in alerts.apply(settings, project.found_alerts()):
            print(line)
        names = [item.name for item in registered]
        history.record(history.Release(version, release_image.commit, pinned, names))
    print(
        f"\n{'Planned' if dry_run else 'Released'} {version}:\n"
        f"  image:       {release_image.repository}:{version} ({digest})\n"
        f"  deployments: registered on work pool '{settings.pool}'\n"
        f"  Prefect UI:  {prefect['ui_url']}"
    )
    return pinned


def main(argv: list[str] | None = None) -> int:
    """Release the tagged commit; print one message naming the problem and the fix if it cannot."""
    args = commands.parser("pyflow_kit.release").parse_args(argv)
    build = image.build_options(args)
    options = Options(
        args.engine or "",
        bool(args.dry_run),
        build,
        Path(args.home),
        bootstrap.root(),
        args.registry or "",
        bool(args.insecure),
    )
    return run_command(
        "release", lambda: release(get_settings(), options), "stopped, nothing more was done: "
    )


if __name__ == "__main__":
    sys.exit(main())
