"""Preview deployments of a pull request, on a real Prefect server; docker is faked (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from conftest import FakeDocker
from pyflow_kit import deploy, image, preview
from pyflow_kit.errors import ReleaseError, SettingsError
from pyflow_kit.settings import Settings, get_settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Production settings a preview needs."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "gs://acme-data/notices/")
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "acme")
    monkeypatch.setenv("PYFLOW_WORK_POOL", "test-preview-pool")
    monkeypatch.setenv("PYFLOW_SCHEDULE", "0 6 * * *")
    return get_settings()


@pytest.fixture
def preview_server() -> None:
    """The session's Prefect server as a preview's own: without production deployments."""
    with get_client(sync_client=True) as client:
        for found in client.read_deployments():
            if found.name == "production":
                client.delete_deployment(found.id)


def deployment_names() -> set[str]:
    """Return every deployment on the server, by flow and name."""
    with get_client(sync_client=True) as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments()}


@pytest.mark.usefixtures("preview_server")
def test_preview_registers_paused_deployments_then_removes_them(
    production: Settings, fake_docker: FakeDocker, tmp_path: Path
) -> None:
    """`--pr 7` pushes pr-7 and registers FLOW/pr-7, paused, writing under previews/pr-7."""
    before = deployment_names()
    registered = preview.deploy_preview(
        production, 7, "docker", image.BuildOptions(), tmp_path / "home"
    )
    assert [item.name for item in registered] == ["hello/pr-7"]
    repository = "us-central1-docker.pkg.dev/acme/pyflow/pyflow"
    assert fake_docker.calls()[-1] == ["push", f"{repository}:pr-7"]
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name("hello/pr-7")
    assert found.paused is True
    assert found.job_variables["image"] == f"{repository}:pr-7@{fake_docker.digest}"
    assert found.job_variables["env"]["PYFLOW_OUTPUT"] == "gs://acme-data/notices/previews/pr-7"
    assert found.work_pool_name == "test-preview-pool"
    assert deployment_names() == before | {"hello/pr-7"}

    assert preview.main(["--pr", "7", "--remove"]) == 0
    assert deployment_names() == before
    assert preview.main(["--pr", "7", "--remove"]) == 0, "removing twice is not an error"


@pytest.mark.parametrize("pr", [0, -3])
def test_preview_refuses_a_number_that_is_not_a_pull_request(pr: int) -> None:
    """Only a positive pull request number names a preview."""
    with pytest.raises(ReleaseError, match="is not a pull request number"):
        preview.preview_name(pr)


def test_preview_needs_the_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preview is deployed as production is (its own pool and bucket): those settings must be set."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    with pytest.raises(SettingsError, match="PYFLOW_OUTPUT is not set"):
        preview.preview_settings(get_settings(), 7)


@pytest.mark.usefixtures("preview_server")
def test_preview_refuses_a_prefect_api_that_holds_production_deployments(
    production: Settings,
    fake_docker: FakeDocker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Pointed at production's workspace, a preview builds, pushes and registers nothing."""
    from prefect.settings import PREFECT_API_URL

    pinned = "us-central1-docker.pkg.dev/acme/pyflow/pyflow:1.2.3@sha256:" + "ab" * 32
    deploy.deploy_production(production, pinned, "1.2.3")
    before = deployment_names()
    assert "hello/production" in before
    with pytest.raises(ReleaseError) as raised:
        preview.deploy_preview(production, 7, "docker", image.BuildOptions(), tmp_path / "home")
    assert str(raised.value) == (
        f"the Prefect API at {PREFECT_API_URL.value()} holds production deployments "
        "(hello/production): a preview runs a pull request's code, so it goes to a "
        "Prefect workspace or server of its own: set PREFECT_API_URL and PREFECT_API_KEY to the "
        "preview's (in GitHub, the preview environment's PREVIEW_PREFECT_API_URL and "
        "PREVIEW_PREFECT_API_KEY)"
    )
    assert fake_docker.calls() == []
    assert preview.main(["--pr", "7", "--remove"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyflow preview: the Prefect API at ") and err.count("\n") == 1
    assert deployment_names() == before


def test_preview_refuses_an_unset_prefect_api(
    production: Settings, fake_docker: FakeDocker, tmp_path: Path
) -> None:
    """Without PREFECT_API_URL (a preview environment left unfilled) nothing is built or registered."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: ""}),
        pytest.raises(ReleaseError, match=r"^PREFECT_API_URL is not set: a preview registers in"),
    ):
        preview.deploy_preview(production, 7, "docker", image.BuildOptions(), tmp_path / "home")
    assert fake_docker.calls() == []
