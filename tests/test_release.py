"""Release checks, with Google's client and the Prefect API mocked at their boundaries."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

import httpx
import pytest
from google.api_core.exceptions import NotFound, PermissionDenied
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import artifactregistry_v1
from google.cloud.artifactregistry_v1 import ArtifactRegistryClient, Repository, Tag
from prefect.exceptions import PrefectHTTPStatusError
from pytest_mock import MockerFixture

from pyflow import release
from pyflow.release import ImageLocation, ReleaseError

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


def test_main_registry_prints_the_plan(
    mocker: MockerFixture,
    client: MagicMock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m pyflow.release registry` asks about the configured image and prints JSON."""
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "acme")
    mocker.patch.object(release, "make_client", return_value=client)
    assert release.main(["registry", "--version", "1.2.3", "--commit", "abc1234"]) == 0
    assert json.loads(capsys.readouterr().out) == {"action": "build", "digest": None}
    client.get_repository.assert_called_once_with(name=REPOSITORY, timeout=30.0)


def test_main_settings_lists_every_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m pyflow.release settings` exits 1 listing every missing or placeholder setting."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "gs://acme-warn/out")
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "your-project-id")
    monkeypatch.setenv("PYFLOW_IMAGE_NAME", "")
    assert release.main(["settings"]) == 1
    assert capsys.readouterr().err.startswith(
        "pyflow release: PYFLOW_GCP_PROJECT is still the placeholder 'your-project-id'"
    )


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


def test_main_registry_dry_run_skips_without_credentials(
    mocker: MockerFixture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run without Google credentials notes the skipped check; a real release stops."""
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "acme")
    mocker.patch.object(
        artifactregistry_v1, "ArtifactRegistryClient", side_effect=DefaultCredentialsError("none")
    )
    assert release.main(["registry", "--version", "1.2.3", "--commit", "abc1234", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] == "no Google credentials"
    assert "dry run, registry check skipped" in captured.err
    assert release.main(["registry", "--version", "1.2.3", "--commit", "abc1234"]) == 1
    assert "gcloud auth application-default login" in capsys.readouterr().err
