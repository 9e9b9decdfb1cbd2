"""Registering deployments against a real (temporary) Prefect server."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from pyflow import deploy
from pyflow.config import get_settings
from pyflow.flow import warn_notices

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_entrypoint_is_relative_to_the_project() -> None:
    """A flow's entrypoint is the path of its module inside the project, and its function."""
    assert deploy.entrypoint(warn_notices) == "pyflow/flow.py:warn_notices"


def test_deploy_local_registers_every_flow_to_the_process_pool() -> None:
    """Development deployments run the project's code in place on the process pool."""
    settings = get_settings(work_pool="test-process-pool")
    [registered] = deploy.deploy_local(settings)
    assert registered.name == "warn-notices/development"
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name("warn-notices/development")
        pool = client.read_work_pool("test-process-pool")
    assert pool.type == "process"
    assert str(found.id) == registered.id
    assert found.entrypoint == "pyflow/flow.py:warn_notices"
    assert found.work_pool_name == "test-process-pool"
    assert found.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(deploy.PROJECT_DIR)}}
    ]
    assert set(found.parameter_openapi_schema["properties"]) == {"sources", "output"}
    assert found.schedules == []


def test_deploy_local_is_idempotent_and_applies_a_schedule() -> None:
    """Registering again updates the same deployment; a schedule from config is attached."""
    first = deploy.deploy_local(get_settings(work_pool="test-process-pool"))
    second = deploy.deploy_local(
        get_settings(
            work_pool="test-process-pool", schedule="0 6 * * *", schedule_timezone="America/Chicago"
        )
    )
    assert first[0].id == second[0].id
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name("warn-notices/development")
    [schedule] = found.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 6 * * *", "America/Chicago")
    deploy.deploy_local(get_settings(work_pool="test-process-pool"))
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("warn-notices/development").schedules == []


def test_ensure_work_pool_refuses_a_pool_of_another_type() -> None:
    """A pool name already used by another type of pool is refused with the fix."""
    with get_client(sync_client=True) as client:
        deploy.ensure_work_pool(client, "test-typed-pool", "process")
        with pytest.raises(
            deploy.DeployError, match="exists with type 'process', not 'kubernetes'"
        ):
            deploy.ensure_work_pool(client, "test-typed-pool", "kubernetes")
