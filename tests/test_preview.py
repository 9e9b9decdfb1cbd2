"""Preview deployments of a pull request, on a real Prefect server; docker is faked (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from conftest import FakeDocker
from pyflow import image, preview
from pyflow.config import Settings, get_settings
from pyflow.errors import ReleaseError, SettingsError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Production settings a preview needs."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "gs://acme-warn/notices/")
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "acme")
    monkeypatch.setenv("PYFLOW_WORK_POOL", "test-preview-pool")
    monkeypatch.setenv("PYFLOW_SCHEDULE", "0 6 * * *")
    return get_settings()


def deployment_names() -> set[str]:
    """Return every deployment on the server, by flow and name."""
    with get_client(sync_client=True) as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments()}


def test_preview_registers_paused_deployments_then_removes_them(
    production: Settings, fake_docker: FakeDocker, tmp_path: Path
) -> None:
    """`--pr 7` pushes pr-7 and registers FLOW/pr-7, paused, writing under previews/pr-7."""
    before = deployment_names()
    registered = preview.deploy_preview(
        production, 7, "docker", image.BuildOptions(), tmp_path / "home"
    )
    assert [item.name for item in registered] == ["warn-notices/pr-7"]
    repository = "us-central1-docker.pkg.dev/acme/pyflow/pyflow"
    assert fake_docker.calls()[-1] == ["push", f"{repository}:pr-7"]
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name("warn-notices/pr-7")
    assert found.paused is True
    assert found.job_variables["image"] == f"{repository}:pr-7@{fake_docker.digest}"
    assert found.job_variables["env"]["PYFLOW_OUTPUT"] == "gs://acme-warn/notices/previews/pr-7"
    assert found.work_pool_name == "test-preview-pool"
    assert deployment_names() == before | {"warn-notices/pr-7"}

    assert preview.main(["--pr", "7", "--remove"]) == 0
    assert deployment_names() == before
    assert preview.main(["--pr", "7", "--remove"]) == 0, "removing twice is not an error"


@pytest.mark.parametrize("pr", [0, -3])
def test_preview_refuses_a_number_that_is_not_a_pull_request(pr: int) -> None:
    """Only a positive pull request number names a preview."""
    with pytest.raises(ReleaseError, match="is not a pull request number"):
        preview.preview_name(pr)


def test_preview_needs_the_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preview runs on production's pool and bucket, so their settings must be set."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    with pytest.raises(SettingsError, match="PYFLOW_OUTPUT is not set"):
        preview.preview_settings(get_settings(), 7)
