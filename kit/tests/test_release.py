"""The release: its checks and steps on a real git repository and a real Prefect server.

Google's Artifact Registry client and the docker CLI (no Docker engine runs here) are replaced
at their boundaries; the release's own git, version, settings and deploy steps run for real.
"""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

import httpx
import pytest
from google.api_core.exceptions import NotFound, PermissionDenied
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import artifactregistry_v1
from google.cloud.artifactregistry_v1 import ArtifactRegistryClient, Repository, Tag
from packaging.version import Version
from prefect.exceptions import PrefectHTTPStatusError
from pytest_mock import MockerFixture

from conftest import FakeDocker, git
from pyflow_kit import history, release, smoke
from pyflow_kit.errors import PyflowError
from pyflow_kit.release import ImageLocation, ReleaseError
from pyflow_kit.settings import Settings, get_settings

LOCATION = ImageLocation(project="acme", region="us-central1", repository="pyflow", image="pyflow")
REPOSITORY = "projects/acme/locations/us-central1/repositories/pyflow"
DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def tag(name: str, digest: str) -> Tag:
    """Return a tag of the pyflow image pointing at a digest."""
    return Tag(
        name=f"{REPOSITORY}/packages/pyflow/tags/{name}",
        version=f"{REPOSITORY}/packages/pyflow/versions/{digest}",
    )


@pytest.fixture
def client(mocker: MockerFixture) -> MagicMock:
    """A client whose requests are recorded; the repository exists, no tag does."""
    fake = mocker.create_autospec(ArtifactRegistryClient, instance=True)
    fake.get_repository.return_value = Repository(name=REPOSITORY, format_=Repository.Format.DOCKER)
    fake.get_tag.side_effect = NotFound("tag not found")
    return fake


def test_plan_image_asks_for_the_repository_and_the_version_tag(client: MagicMock) -> None:
    """A new version: it reads the repository by name, then the version's tag, and builds."""
    assert release.plan_image(client, LOCATION, "1.2.3", "abc1234") == release.ImagePlan("build")
    client.get_repository.assert_called_once_with(name=REPOSITORY, timeout=30.0)
    client.get_tag.assert_called_once_with(
        name=f"{REPOSITORY}/packages/pyflow/tags/1.2.3", timeout=30.0
    )


def test_plan_image_refuses_a_version_tag_of_another_commit(client: MagicMock) -> None:
    """An existing version tag from another build stops the release, naming image and digest."""
    client.get_tag.side_effect = [tag("1.2.3", DIGEST), NotFound("no commit tag")]
    with pytest.raises(ReleaseError) as raised:
        release.plan_image(client, LOCATION, "1.2.3", "abc1234")
    assert str(raised.value) == (
        f"us-central1-docker.pkg.dev/acme/pyflow/pyflow:1.2.3 already exists ({DIGEST}) and was "
        "not built from commit abc1234: release tags are never overwritten; publish a new version"
    )
    assert client.get_tag.call_args_list[1].kwargs["name"].endswith("/tags/abc1234")


def test_plan_image_reuses_the_image_a_failed_release_pushed(client: MagicMock) -> None:
    """Version and commit tags on the same digest: the image is this release's, reuse it."""
    client.get_tag.side_effect = [tag("1.2.3", DIGEST), tag("abc1234", DIGEST)]
    assert release.plan_image(client, LOCATION, "1.2.3", "abc1234") == release.ImagePlan(
        "reuse", DIGEST
    )


def test_plan_image_refuses_when_the_commit_tag_points_elsewhere(client: MagicMock) -> None:
    """A commit tag on another digest is not proof: the release stops."""
    client.get_tag.side_effect = [tag("1.2.3", DIGEST), tag("abc1234", OTHER)]
    with pytest.raises(ReleaseError, match="already exists"):
        release.plan_image(client, LOCATION, "1.2.3", "abc1234")


def test_plan_image_names_a_missing_repository_and_the_fix(client: MagicMock) -> None:
    """A missing repository says which, where, and to run `invoke gcp-setup`; no tag is read."""
    client.get_repository.side_effect = NotFound("no such repository")
    with pytest.raises(ReleaseError, match="'pyflow' does not exist in project 'acme'") as raised:
        release.plan_image(client, LOCATION, "1.2.3", "abc1234")
    assert "invoke gcp-setup" in str(raised.value)
    client.get_tag.assert_not_called()


@pytest.mark.parametrize("method", ["get_repository", "get_tag"])
def test_plan_image_explains_a_permission_denied(client: MagicMock, method: str) -> None:
    """A denied request names the repository and the role the credentials need."""
    getattr(client, method).side_effect = PermissionDenied("denied")
    with pytest.raises(ReleaseError, match=r"roles/artifactregistry\.writer on that repository"):
        release.plan_image(client, LOCATION, "1.2.3", "abc1234")


def test_check_repository_refuses_a_repository_of_another_format(client: MagicMock) -> None:
    """A Python (or any non-Docker) repository cannot hold the image."""
    client.get_repository.return_value = Repository(
        name=REPOSITORY, format_=Repository.Format.PYTHON
    )
    with pytest.raises(ReleaseError, match="holds PYTHON packages, not Docker images"):
        release.check_repository(client, LOCATION)


def test_find_tag_escapes_an_image_name_with_slashes(client: MagicMock) -> None:
    """An image named team/pyflow is the package team%2Fpyflow."""
    location = ImageLocation("acme", "us-central1", "pyflow", "team/pyflow")
    assert release.find_tag(client, location, "1.2.3") is None
    client.get_tag.assert_called_once_with(
        name=f"{REPOSITORY}/packages/team%2Fpyflow/tags/1.2.3", timeout=30.0
    )


def test_location_names_match_the_clients_own_paths() -> None:
    """Resource names are the ones the Google client's path helpers build."""
    assert LOCATION.repository_name == ArtifactRegistryClient.repository_path(
        "acme", "us-central1", "pyflow"
    )
    assert LOCATION.tag_name("1.2.3") == ArtifactRegistryClient.tag_path(
        "acme", "us-central1", "pyflow", "pyflow", "1.2.3"
    )
    assert LOCATION.url == "us-central1-docker.pkg.dev/acme/pyflow/pyflow"


def test_make_client_explains_missing_credentials(mocker: MockerFixture) -> None:
    """Without default credentials, the message says how to get them."""
    mocker.patch.object(
        artifactregistry_v1, "ArtifactRegistryClient", side_effect=DefaultCredentialsError("none")
    )
    with pytest.raises(ReleaseError, match="gcloud auth application-default login"):
        release.make_client()


def http_error(status: int) -> PrefectHTTPStatusError:
    """Return the error Prefect's client raises for an HTTP status."""
    request = httpx.Request("POST", "https://api.prefect.test/api/work_pools/filter")
    response = httpx.Response(status, request=request)
    return PrefectHTTPStatusError.from_httpx_error(
        httpx.HTTPStatusError("x", request=request, response=response)
    )


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "PREFECT_API_KEY was refused"),
        (403, "PREFECT_API_KEY was refused"),
        (500, "answered HTTP 500"),
    ],
)
def test_check_prefect_explains_a_refused_key(
    mocker: MockerFixture, status: int, message: str
) -> None:
    """A 401 or 403 says the key was refused and where to make one; it never prints the key."""
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    fake = MagicMock()
    fake.__enter__.return_value.api_healthcheck.return_value = None
    fake.__enter__.return_value.read_work_pools.side_effect = http_error(status)
    mocker.patch("prefect.client.orchestration.get_client", return_value=fake)
    with (
        temporary_settings(
            updates={
                PREFECT_API_URL: "https://api.prefect.test/api",
                PREFECT_API_KEY: "pnu_secret123",
            }
        ),
        pytest.raises(ReleaseError) as raised,
    ):
        release.check_prefect()
    assert message in str(raised.value)
    assert "pnu_secret123" not in str(raised.value)
    fake.__enter__.return_value.read_work_pools.assert_called_once_with(limit=1)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_check_prefect_passes_on_a_real_server() -> None:
    """Against a real (temporary) server, the check passes and returns its URLs."""
    from prefect.settings import PREFECT_API_URL

    urls = release.check_prefect()
    assert urls["api_url"] == PREFECT_API_URL.value()


# --- the release itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "version"),
    [("1.2.3", "1.2.3"), ("v1.2.3", "1.2.3"), ("v1.2.3-rc.1", "1.2.3rc1"), ("1.2.3b2", "1.2.3b2")],
)
def test_release_version_reads_semantic_version_tags(tag: str, version: str) -> None:
    """Release tags, with or without a v, and pre-releases, read as versions."""
    assert str(release.release_version(tag)) == version


@pytest.mark.parametrize(
    "tag", ["1.2", "version-1.2.3", "v1.2.3.4", "latest", "1.2.3+local", "1.2.3.post1", "1!1.2.3"]
)
def test_release_version_refuses_other_tags(tag: str) -> None:
    """Anything but MAJOR.MINOR.PATCH with an optional pre-release is refused, with the fix."""
    with pytest.raises(ReleaseError, match=r"tag the release 1\.2\.3 or v1\.2\.3"):
        release.release_version(tag)


@pytest.mark.parametrize(
    ("written", "tag", "same"),
    [
        ("1.3.0rc1", "v1.3.0-rc.1", True),
        ("1.3.0", "v1.3.0-rc.1", False),
        ("1.10.0", "1.9.0", False),
    ],
)
def test_plan_version_compares_versions_not_text(
    git_project: Path, written: str, tag: str, same: bool
) -> None:
    """A pre-release tag matches pyproject's version however each spells it, and only then."""
    (git_project / "pyproject.toml").write_text(f'[project]\nversion = "{written}"\n')
    git(git_project, "commit", "-qam", "version")
    git(git_project, "tag", tag)
    if same:
        assert release.plan_version(git_project, dry_run=False) == str(Version(written))
    else:
        with pytest.raises(ReleaseError, match=f"pyproject.toml says {written}: set the version"):
            release.plan_version(git_project, dry_run=False)


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Production settings that pass the release's settings check."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "gs://acme-data/out")
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "acme")
    monkeypatch.setenv("PYFLOW_WORK_POOL", "test-release-pool")
    monkeypatch.setenv("PYFLOW_TASK_RUNNER", "threads")  # the smoke runs start no Dask cluster
    return get_settings()


def options(root: Path, tmp_path: Path, dry_run: bool = False) -> release.Options:
    """Return the release's options for a project, pushing with docker."""
    return release.Options("docker", dry_run, home=tmp_path / "home", root=root)


@pytest.fixture
def merged_project(git_project: Path, tmp_path: Path) -> Path:
    """The git project with a real remote, ``origin``, whose ``main`` holds its commits."""
    remote = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(git_project, "remote", "add", "origin", str(remote))
    git(git_project, "push", "-q", "-u", "origin", "main")
    return git_project


def checkout_tag(remote: Path, tag: str, folder: Path) -> Path:
    """Clone a remote with its full history and check out a tag, as the release workflow does."""
    git(folder.parent, "clone", "-q", str(remote), str(folder))
    git(folder, "checkout", "-q", tag)
    return folder


@pytest.mark.parametrize(
    ("change", "named"),
    [("untracked", "pyflow/new.py"), ("tracked", "pyflow/flow.py"), ("staged", "pyflow/staged.py")],
)
def test_release_refuses_a_tree_that_differs_from_the_tag(
    git_project: Path,
    production: Settings,
    fake_docker: FakeDocker,
    tmp_path: Path,
    change: str,
    named: str,
) -> None:
    """Changed, staged and untracked files (they would ship in the image) stop the release."""
    git(git_project, "tag", "1.2.3")
    (git_project / named).write_text("CHANGED = True\n")
    if change == "staged":
        git(git_project, "add", named)
    with pytest.raises(ReleaseError, match=f"differs from the tagged commit \\({named}\\)"):
        release.release(production, options(git_project, tmp_path))
    assert fake_docker.calls() == []


def test_release_refuses_an_untagged_head(
    git_project: Path, production: Settings, fake_docker: FakeDocker, tmp_path: Path
) -> None:
    """A release builds a tag; without one it stops and says how to tag."""
    with pytest.raises(ReleaseError, match="HEAD has no tag"):
        release.release(production, options(git_project, tmp_path))
    assert fake_docker.calls() == []


def test_release_refuses_a_tag_on_a_commit_not_merged_into_main(
    merged_project: Path,
    production: Settings,
    fake_docker: FakeDocker,
    client: MagicMock,
    mocker: MockerFixture,
    tmp_path: Path,
) -> None:
    """A tag on a pushed branch's commit is refused, naming tag, commit and fix; once merged, it passes."""
    git(merged_project, "checkout", "-q", "-b", "feature")
    (merged_project / "pyflow" / "flow.py").write_text("VALUE = 2\n")
    git(merged_project, "commit", "-qam", "not reviewed")
    git(merged_project, "tag", "1.2.3")
    git(merged_project, "push", "-q", "origin", "feature", "1.2.3")
    runner = checkout_tag(tmp_path / "origin.git", "1.2.3", tmp_path / "runner")
    commit = git(runner, "rev-parse", "--short=7", "HEAD").strip()
    mocker.patch.object(release, "make_client", return_value=client)
    with pytest.raises(ReleaseError) as raised:
        release.release(production, options(runner, tmp_path))
    assert str(raised.value) == (
        f"the tag '1.2.3' points at commit {commit}, which is not on main (origin/main): a "
        "release ships only what was merged into main: merge the change into main, then delete "
        "this tag and publish the release again on a commit of main"
    )
    assert fake_docker.calls() == []
    client.get_repository.assert_not_called()

    git(merged_project, "push", "-q", "origin", "feature:main")
    git(runner, "fetch", "-q", "origin")
    release.check_on_branch(runner, "main", "1.2.3")


@pytest.mark.parametrize(("branch", "passes"), [("trunk", True), ("main", False)])
def test_release_checks_the_branch_pyflow_release_branch_names(
    git_project: Path,
    fake_docker: FakeDocker,
    client: MagicMock,
    mocker: MockerFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    branch: str,
    passes: bool,
) -> None:
    """A repository whose default branch is trunk releases from origin/trunk when told so."""
    remote = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(git_project, "remote", "add", "origin", str(remote))
    git(git_project, "push", "-q", "origin", "main:trunk")
    git(git_project, "fetch", "-q", "origin")
    git(git_project, "tag", "1.2.3")
    for name, value in {
        "PREFECT_FLOW_ENV": "production",
        "PYFLOW_OUTPUT": "gs://acme-data/out",
        "PYFLOW_GCP_PROJECT": "acme",
        "PYFLOW_RELEASE_BRANCH": branch,
    }.items():
        monkeypatch.setenv(name, value)
    client.get_repository.side_effect = NotFound("no such repository")
    mocker.patch.object(release, "make_client", return_value=client)
    with pytest.raises(ReleaseError) as raised:
        release.release(get_settings(), options(git_project, tmp_path))
    if passes:  # past the branch check, the next one (the registry's) stops it
        assert "Artifact Registry repository 'pyflow' does not exist" in str(raised.value)
    else:
        assert str(raised.value).startswith(
            "origin/main is not known in " + str(git_project) + ", so nothing shows that the "
            "release is on main (PYFLOW_RELEASE_BRANCH): fetch it (`git fetch origin main`;"
        )
        client.get_repository.assert_not_called()


def test_check_on_branch_asks_for_the_full_history_of_a_shallow_clone(
    merged_project: Path, tmp_path: Path
) -> None:
    """In a shallow clone, an older tag cannot be traced to main: it says to fetch the history."""
    git(merged_project, "tag", "1.2.2")
    (merged_project / "pyflow" / "flow.py").write_text("VALUE = 3\n")
    git(merged_project, "commit", "-qam", "later")
    git(merged_project, "push", "-q", "origin", "main", "1.2.2")
    shallow = tmp_path / "shallow"
    remote = (tmp_path / "origin.git").as_uri()
    git(
        tmp_path,
        "clone",
        "-q",
        "--depth=1",
        "--no-single-branch",
        "--branch=1.2.2",
        remote,
        str(shallow),
    )
    with pytest.raises(ReleaseError, match="cannot tell whether HEAD is on origin/main") as raised:
        release.check_on_branch(shallow, "main", "1.2.2")
    assert "`git fetch --unshallow origin`" in str(raised.value)
    git(shallow, "fetch", "-q", "--unshallow", "origin")
    release.check_on_branch(shallow, "main", "1.2.2")


def test_release_main_stops_with_one_message_on_placeholder_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m pyflow_kit.release` with the template's placeholders lists them and exits 1."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "gs://acme-data/out")
    assert release.main(["--engine", "docker"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyflow release: stopped, nothing more was done: PYFLOW_GCP_PROJECT")
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_release_builds_pushes_and_registers_on_the_pushed_digest(
    merged_project: Path,
    production: Settings,
    fake_docker: FakeDocker,
    client: MagicMock,
    mocker: MockerFixture,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A tagged, clean release builds, smoke-runs, pushes the commit then the version, registers."""
    from prefect.client.orchestration import get_client

    git(merged_project, "tag", "v1.2.3")
    mocker.patch.object(release, "make_client", return_value=client)
    pinned = release.release(production, options(merged_project, tmp_path))
    repository = "us-central1-docker.pkg.dev/acme/pyflow/pyflow"
    commit = git(merged_project, "rev-parse", "--short=7", "HEAD").strip()
    assert pinned == f"{repository}:1.2.3@{fake_docker.digest}"
    calls = fake_docker.calls()
    assert [call[0] for call in calls] == ["build", "image", "run", "rm", "push", "push"]
    run = calls[2]
    assert run[:2] == ["run", "--rm"]
    assert run[2].startswith("--name=pyflow-smoke-") and run[3] == "--network=host"
    assert calls[3] == ["rm", "--force", run[2].removeprefix("--name=")], "no container is left"
    assert run[-4:] == [f"{repository}:1.2.3", "prefect", "flow-run", "execute"]
    assert "--env=PYFLOW_OUTPUT=/tmp/pyflow-smoke" in run
    assert fake_docker.calls()[4:] == [
        ["push", f"{repository}:{commit}"],
        ["push", f"{repository}:1.2.3"],
    ]
    client.get_tag.assert_any_call(name=f"{REPOSITORY}/packages/pyflow/tags/1.2.3", timeout=30.0)
    with get_client(sync_client=True) as prefect:
        deployment = prefect.read_deployment_by_name("hello/production")
    assert deployment.job_variables["image"] == pinned
    assert deployment.version == "1.2.3"
    assert deployment.work_pool_name == "test-release-pool"
    assert "Released 1.2.3:" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_release_run_again_reuses_the_image_an_earlier_attempt_pushed(
    merged_project: Path,
    production: Settings,
    fake_docker: FakeDocker,
    client: MagicMock,
    mocker: MockerFixture,
    tmp_path: Path,
) -> None:
    """When the version's tag already holds this commit's image, nothing is built or pushed."""
    git(merged_project, "tag", "1.2.3")
    commit = git(merged_project, "rev-parse", "--short=7", "HEAD").strip()
    client.get_tag.side_effect = lambda name, timeout: tag(name.rpartition("/")[2], DIGEST)
    mocker.patch.object(release, "make_client", return_value=client)
    pinned = release.release(production, options(merged_project, tmp_path))
    assert pinned.endswith(f":1.2.3@{DIGEST}")
    assert fake_docker.calls() == []
    client.get_tag.assert_any_call(name=f"{REPOSITORY}/packages/pyflow/tags/{commit}", timeout=30.0)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_release_dry_run_checks_and_prints_the_plan_without_acting(
    git_project: Path,
    production: Settings,
    fake_docker: FakeDocker,
    mocker: MockerFixture,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A dry run of an untagged HEAD without Google credentials plans pyproject's version."""
    from prefect.client.orchestration import get_client

    mocker.patch.object(
        artifactregistry_v1, "ArtifactRegistryClient", side_effect=DefaultCredentialsError("none")
    )
    with get_client(sync_client=True) as prefect:
        before = {d.name for d in prefect.read_deployments()}
    release.release(production, options(git_project, tmp_path, dry_run=True))
    out = capsys.readouterr().out
    assert "plans version 1.2.3 from pyproject.toml" in out
    assert "registry check skipped" in out
    assert "dry run: a release would stop here: origin/main is not known in" in out
    assert "docker build " in out and "docker push " in out
    assert "Planned 1.2.3:" in out
    assert fake_docker.calls() == []
    with get_client(sync_client=True) as prefect:
        assert {d.name for d in prefect.read_deployments()} == before


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_release_stops_before_pushing_an_image_that_cannot_run_the_flow(
    merged_project: Path,
    production: Settings,
    fake_docker: FakeDocker,
    client: MagicMock,
    mocker: MockerFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A smoke run that cannot load the flow stops the release: nothing pushed or registered."""
    from prefect.client.orchestration import get_client

    empty = tmp_path / "image-without-code"
    empty.mkdir()
    monkeypatch.setenv("FAKE_DOCKER_WORKDIR", str(empty))
    git(merged_project, "tag", "1.2.3")
    mocker.patch.object(release, "make_client", return_value=client)
    with get_client(sync_client=True) as prefect:
        before = {d.name for d in prefect.read_deployments()}
    with pytest.raises(ReleaseError) as raised:
        release.release(production, options(merged_project, tmp_path))
    message = str(raised.value)
    assert message.startswith("the smoke run of hello in us-central1-docker.pkg.dev/")
    assert "nothing was pushed" in message
    assert "is not inside a pyflow project" in message, "the run says why it could not load"
    assert [call[0] for call in fake_docker.calls()] == ["build", "image", "run", "rm"]
    with get_client(sync_client=True) as prefect:
        assert {d.name for d in prefect.read_deployments()} == before


# --- the record of releases, and rollback ---------------------------------------------------


def entry(version: str, action: str = "release") -> history.Release:
    """Return a recorded release of a version, its digest made from the version."""
    digest = "sha256:" + version.replace(".", "").ljust(64, "0")
    return history.Release(version, "abc1234", f"r/pyflow:{version}@{digest}", action=action)


def test_rollback_target_is_the_release_before_the_current_one() -> None:
    """Without a version, the target is the latest release older than the current version."""
    entries = [entry("1.0.0"), entry("1.1.0"), entry("1.2.0")]
    assert history.rollback_target(entries, None).version == "1.1.0"
    after_rollback = [*entries, entry("1.1.0", "rollback from 1.2.0")]
    assert history.rollback_target(after_rollback, None).version == "1.0.0"
    assert history.rollback_target(after_rollback, "1.2.0").version == "1.2.0"


@pytest.mark.parametrize(
    ("entries", "version", "message"),
    [
        ([], None, "no release is recorded"),
        ([entry("1.0.0")], None, "nothing was released before 1.0.0"),
        ([entry("1.0.0"), entry("1.1.0")], "0.9.0", "choose one of 1.0.0, 1.1.0"),
    ],
)
def test_rollback_target_names_what_is_missing(
    entries: list[history.Release], version: str | None, message: str
) -> None:
    """No record, no earlier release, or an unknown version: each says what to do."""
    with pytest.raises(ReleaseError, match=message):
        history.rollback_target(entries, version)


def test_history_main_needs_the_prefect_api(capsys: pytest.CaptureFixture[str]) -> None:
    """Without PREFECT_API_URL, listing says where the record lives, and exits 1."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert history.main(["list"]) == 1
    assert capsys.readouterr().err.startswith("pyflow list: PREFECT_API_URL is not set")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_rollback_registers_the_previous_releases_digest_and_records_it(
    merged_project: Path,
    production: Settings,
    fake_docker: FakeDocker,
    client: MagicMock,
    mocker: MockerFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Release 1.0.0, then 1.1.0, then roll back: the deployment runs 1.0.0's digest again."""
    from prefect.client.orchestration import get_client

    mocker.patch.object(release, "make_client", return_value=client)
    digests = {}
    for version in ("1.0.0", "1.1.0"):
        (merged_project / "pyproject.toml").write_text(f'[project]\nversion = "{version}"\n')
        git(merged_project, "commit", "-qam", version)
        git(merged_project, "push", "-q", "origin", "main")
        git(merged_project, "tag", version)
        digests[version] = "sha256:" + version.replace(".", "").ljust(64, "a")
        monkeypatch.setenv("FAKE_DOCKER_DIGEST", digests[version])
        release.release(production, options(merged_project, tmp_path))
    capsys.readouterr()
    history.rollback(production, dry_run=True)
    assert "rollback to: 1.0.0" in capsys.readouterr().out
    assert [e.version for e in history.releases()[-2:]] == ["1.0.0", "1.1.0"]
    back = history.rollback(production)
    repository = "us-central1-docker.pkg.dev/acme/pyflow/pyflow"
    assert back.image == f"{repository}:1.0.0@{digests['1.0.0']}"
    with get_client(sync_client=True) as prefect:
        deployment = prefect.read_deployment_by_name("hello/production")
    assert deployment.job_variables["image"] == back.image
    assert deployment.version == "1.0.0"
    recorded = history.releases()[-3:]
    assert [(e.version, e.action) for e in recorded] == [
        ("1.0.0", "release"),
        ("1.1.0", "release"),
        ("1.0.0", "rollback from 1.1.0"),
    ]
    assert recorded[0].deployments == ["hello/production"]
    capsys.readouterr()
    assert history.main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].startswith("* 1.0.0") and "rollback from 1.1.0" in listed[1]
    assert "1.1.0" in listed[2] and digests["1.1.0"] in listed[2]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_release_stops_when_the_pools_template_would_drop_a_job_variable(
    merged_project: Path,
    production: Settings,
    fake_docker: FakeDocker,
    client: MagicMock,
    mocker: MockerFixture,
    tmp_path: Path,
) -> None:
    """A pool whose template lacks memory_limit stops the release before building, naming it."""
    from prefect.client.orchestration import get_client

    from pyflow_kit import deploy

    template = deploy.load_job_template()
    limits = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    del limits["containers"][0]["resources"]["limits"]["memory"]
    with get_client(sync_client=True) as prefect:
        deploy.ensure_work_pool(prefect, "test-drifted-pool", "kubernetes", template)
    settings = production.model_copy(update={"work_pool": "test-drifted-pool"})
    git(merged_project, "tag", "1.2.3")
    mocker.patch.object(release, "make_client", return_value=client)
    with pytest.raises(PyflowError) as raised:
        release.release(settings, options(merged_project, tmp_path))
    assert str(raised.value).startswith(
        "the base job template of work pool 'test-drifted-pool' does not use the job variables "
        "memory_limit: its worker would drop them silently. Run `invoke pool`"
    )
    assert fake_docker.calls() == []
    with get_client(sync_client=True) as prefect:
        kept = prefect.read_work_pool("test-drifted-pool").base_job_template
    assert kept == template, "the release does not overwrite a pool's template"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_history_reads_every_record_past_the_servers_page_size() -> None:
    """More records than one page of the API are all read, oldest first."""
    versions = [f"9.0.{n}" for n in range(history.PAGE + 5)]
    for version in versions:
        history.record(entry(version))
    assert [e.version for e in history.releases()][-len(versions) :] == versions


def fake_runtime(path: Path, tries: Path, races: int, status: int = 0) -> list[str]:
    """A container command that loses buildah's start race ``races`` times, then exits ``status``."""
    path.write_text(
        "#!/bin/sh\n"
        f"echo try >> {tries}\n"
        f'if [ "$(wc -l < {tries})" -le {races} ]; then\n'
        '  echo "Close_Fd sealing memfd copy: Device or resource busy" >&2; exit 1\n'
        "fi\n"
        f'echo "started"; exit {status}\n'
    )
    path.chmod(0o755)
    return [str(path)]


def test_run_container_starts_again_while_buildah_loses_its_start_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that buildah loses to its memfd race is tried again, up to START_ATTEMPTS times."""
    monkeypatch.setattr(smoke, "START_DELAY", 0.01)
    once = tmp_path / "once"
    result = smoke.run_container(fake_runtime(tmp_path / "a", once, races=1), timeout=30)
    assert (result.returncode, result.stdout, once.read_text().count("try")) == (0, "started\n", 2)
    always = tmp_path / "always"
    result = smoke.run_container(fake_runtime(tmp_path / "b", always, races=9), timeout=30)
    assert result.returncode == 1 and "sealing memfd" in result.stderr
    assert always.read_text().count("try") == smoke.START_ATTEMPTS


def test_run_container_leaves_any_other_failure_to_its_caller(tmp_path: Path) -> None:
    """A command that starts and fails is run once: its failure is the command's own."""
    tries = tmp_path / "tries"
    result = smoke.run_container(fake_runtime(tmp_path / "c", tries, 0, status=3), timeout=30)
    assert (result.returncode, tries.read_text().count("try")) == (3, 1)
