"""Registering deployments against a real (temporary) Prefect server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from pyflow_kit import bootstrap, deploy, image
from pyflow_kit.errors import SettingsError
from pyflow_kit.project import flows
from pyflow_kit.settings import Settings, get_settings

FIRST = flows()[0]
"""The project's default flow (the fixture flow, hello)."""
FIRST_ENTRYPOINT = f"pyflow_kit.flows:{FIRST.name.replace('-', '_')}"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_source_entrypoint_is_relative_to_the_project() -> None:
    """Where a flow's code is: the path of its module inside the project, and its function."""
    assert deploy.source_entrypoint(FIRST) == f"pyflow/hello/flow.py:{FIRST.fn.__name__}"


def test_deployments_load_their_flow_through_the_kit_on_the_configured_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deployment's entrypoint gives its flow on the runner the settings choose.

    That is Dask in production, for any flow of the project, with nothing about runners in the
    flow's code.
    """
    from prefect.flows import load_flow_from_entrypoint
    from prefect_dask import DaskTaskRunner

    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "gs://bucket/out")
    loaded = load_flow_from_entrypoint(FIRST_ENTRYPOINT)
    assert loaded.name == FIRST.name
    assert isinstance(loaded.task_runner, DaskTaskRunner)
    monkeypatch.setenv("PREFECT_FLOW_ENV", "development")
    assert type(load_flow_from_entrypoint(FIRST_ENTRYPOINT).task_runner).__name__ == (
        "ThreadPoolTaskRunner"
    )


def test_deploy_local_registers_every_flow_to_the_process_pool() -> None:
    """Development deployments run the project's code in place on the process pool."""
    settings = get_settings(work_pool="test-process-pool")
    registered = deploy.deploy_local(settings)[0]
    assert [r.name for r in deploy.deploy_local(settings)] == [
        f"{f.name}/development" for f in flows()
    ]
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(f"{FIRST.name}/development")
        pool = client.read_work_pool("test-process-pool")
    assert pool.type == "process"
    assert str(found.id) == registered.id
    assert found.entrypoint == FIRST_ENTRYPOINT
    assert found.work_pool_name == "test-process-pool"
    assert found.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(bootstrap.root())}}
    ]
    assert set(found.parameter_openapi_schema["properties"]) == set(FIRST.parameters.properties)
    assert found.parameters == {}
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
        found = client.read_deployment_by_name(f"{FIRST.name}/development")
    [schedule] = found.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 6 * * *", "America/Chicago")
    deploy.deploy_local(get_settings(work_pool="test-process-pool"))
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name(f"{FIRST.name}/development").schedules == []


def test_ensure_work_pool_refuses_a_pool_of_another_type() -> None:
    """A pool name already used by another type of pool is refused with the fix."""
    with get_client(sync_client=True) as client:
        deploy.ensure_work_pool(client, "test-typed-pool", "process")
        with pytest.raises(
            deploy.DeployError, match="exists with type 'process', not 'kubernetes'"
        ):
            deploy.ensure_work_pool(client, "test-typed-pool", "kubernetes")


IMAGE = "us-central1-docker.pkg.dev/acme-data/pyflow/pyflow:1.2.3@sha256:" + "ab" * 32


def production_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Return complete production settings, as a filled .env would give."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "gs://acme-data/notices")
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "acme-data")
    monkeypatch.setenv("PYFLOW_WORK_POOL", "test-kubernetes-pool")
    monkeypatch.setenv("PYFLOW_CPU_LIMIT", "4")
    return get_settings()


def comparable(deployment: object) -> dict[str, object]:
    """Return a deployment's fields that a re-registration must not change."""
    data = deployment.model_dump(mode="json")
    return {
        k: v for k, v in data.items() if k not in {"created", "updated", "last_polled", "status"}
    }


def test_deploy_production_registers_the_image_with_its_job_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Production deployments run the pushed image on the Kubernetes pool, with no pull step."""
    settings = production_settings(monkeypatch)
    registered = deploy.deploy_production(settings, IMAGE, version="1.2.3")[0]
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(f"{FIRST.name}/production")
        pool = client.read_work_pool("test-kubernetes-pool")
    assert registered.name == f"{FIRST.name}/production"
    assert pool.type == "kubernetes"
    assert pool.base_job_template == deploy.load_job_template()
    assert found.entrypoint == FIRST_ENTRYPOINT
    assert not found.pull_steps
    assert found.path in (None, ".")
    assert found.version == "1.2.3"
    assert found.job_variables == {
        "image": IMAGE,
        "namespace": "prefect",
        "service_account_name": "pyflow",
        "automount_service_account_token": False,
        "cpu_request": "500m",
        "cpu_limit": "4",
        "memory_request": "1Gi",
        "memory_limit": "4Gi",
        "env": {
            "PREFECT_FLOW_ENV": "production",
            "PYFLOW_OUTPUT": "gs://acme-data/notices",
            "PYFLOW_TASK_RUNNER": "dask",
            "PYFLOW_DASK_IMAGE": IMAGE,
            "PYFLOW_CPU_LIMIT": "4",
        },
    }
    assert set(found.parameter_openapi_schema["properties"]) == set(FIRST.parameters.properties)


def test_deploy_production_twice_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering the same release again leaves the deployment and the pool as they were."""
    settings = production_settings(monkeypatch)
    deploy.deploy_production(settings, IMAGE, version="1.2.3")
    with get_client(sync_client=True) as client:
        before = comparable(client.read_deployment_by_name(f"{FIRST.name}/production"))
        pool_before = client.read_work_pool("test-kubernetes-pool").base_job_template
    deploy.deploy_production(settings, IMAGE, version="1.2.3")
    with get_client(sync_client=True) as client:
        assert comparable(client.read_deployment_by_name(f"{FIRST.name}/production")) == before
        assert client.read_work_pool("test-kubernetes-pool").base_job_template == pool_before


def test_deploy_production_refuses_placeholder_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production settings still holding placeholders stop the deployment, all listed at once."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "data/output")
    with pytest.raises(SettingsError) as raised:
        deploy.deploy_production(get_settings(), IMAGE)
    assert str(raised.value).startswith(
        "PYFLOW_GCP_PROJECT is still the placeholder 'your-project-id'; PYFLOW_OUTPUT='data/output' "
        "is a local folder: production pods need a bucket such as gs://BUCKET/outputs"
    )


def test_deploy_main_in_production_deploys_the_image_pushed_from_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --image, `python -m pyflow_kit.deploy` deploys the push recorded for this checkout."""
    settings = production_settings(monkeypatch)
    pushed = image.image_for(settings)
    image.record_push(tmp_path, pushed.tags[0], "sha256:" + "cd" * 32)
    assert deploy.main(["register", "--home", str(tmp_path)]) == 0
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name("hello/production")
    assert found.job_variables["image"] == pushed.pinned("sha256:" + "cd" * 32)
    assert found.version == pushed.version
    assert "registered hello/production" in capsys.readouterr().out


def test_deploy_main_in_production_refuses_an_image_without_a_digest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--image by tag alone is refused, saying why and where the digest is, and registers nothing."""
    production_settings(monkeypatch)
    with get_client(sync_client=True) as client:
        before = {d.id for d in client.read_deployments()}
    tag_only = IMAGE.partition("@")[0]
    assert deploy.main(["register", "--home", str(tmp_path), "--image", tag_only]) == 1
    assert f"--image {tag_only} names no digest" in capsys.readouterr().err
    with get_client(sync_client=True) as client:
        assert {d.id for d in client.read_deployments()} == before
    assert deploy.main(["register", "--home", str(tmp_path), "--image", IMAGE]) == 0


def test_deploy_main_in_production_refuses_an_image_never_pushed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --image or a recorded push, it says how to push one, and registers nothing."""
    production_settings(monkeypatch)
    with get_client(sync_client=True) as client:
        before = {d.id for d in client.read_deployments()}
    assert deploy.main(["register", "--home", str(tmp_path)]) == 1
    assert "has not been pushed from here: run `invoke build` and `invoke push`" in (
        capsys.readouterr().err
    )
    with get_client(sync_client=True) as client:
        assert {d.id for d in client.read_deployments()} == before


def test_deploy_main_explains_an_unreachable_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PREFECT_API_URL nothing answers on gives one message with the fix, not a traceback."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        assert deploy.main(["register"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyflow deploy: the Prefect API at {url} cannot be reached")
    assert "fix PREFECT_API_URL" in err


@flow(name="test-counting")
def counting(count: int = 1, label: str = "x") -> int:
    """Count, for the deployment tests.

    Args:
        count: How many.
        label: A name.
    """
    return count


def test_register_passes_each_flows_deployment_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYFLOW_DEPLOYMENT_PARAMETERS gives a flow's deployment its parameters; others take none."""
    monkeypatch.setenv("PYFLOW_DEPLOYMENT_PARAMETERS", '{"test-counting": {"count": 3}}')
    monkeypatch.setenv("PYFLOW_WORK_POOL", "test-process-pool")
    with get_client(sync_client=True) as client:
        deploy.ensure_work_pool(client, "test-process-pool", "process")
    deploy.register(get_settings(), flows=(counting, FIRST), image="example.org/pyflow:1")
    with get_client(sync_client=True) as client:
        counted = client.read_deployment_by_name("test-counting/development")
        first = client.read_deployment_by_name(f"{FIRST.name}/development")
    assert counted.parameters == {"count": 3}
    assert first.parameters == {}


@pytest.mark.parametrize(
    ("value", "message", "fix"),
    [
        (
            '{"no-such-flow": {"count": 3}}',
            "PYFLOW_DEPLOYMENT_PARAMETERS names flow 'no-such-flow', which is not a flow of the project",
            "fix the name, or remove its entry from .env",
        ),
        (
            '{"test-counting": {"count": "many"}}',
            "PYFLOW_DEPLOYMENT_PARAMETERS gives flow 'test-counting' parameters it does not take",
            "Fix its entry in .env",
        ),
    ],
)
def test_register_refuses_parameters_that_do_not_fit(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str, fix: str
) -> None:
    """An unknown flow name, or a parameter the flow refuses, stops the registration with the fix."""
    monkeypatch.setenv("PYFLOW_DEPLOYMENT_PARAMETERS", value)
    with pytest.raises(SettingsError) as raised:
        deploy.register(get_settings(), flows=(counting,), image="example.org/pyflow:1")
    assert str(raised.value).startswith(message)
    assert fix in str(raised.value)


def test_register_keeps_a_deployment_paused_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering again (a release, a rollback) does not resume a deployment paused by hand."""
    settings = production_settings(monkeypatch)
    [registered] = deploy.deploy_production(settings, IMAGE, version="1.2.3")
    with get_client(sync_client=True) as client:
        client.pause_deployment(registered.id)
    deploy.deploy_production(settings, IMAGE, version="1.2.4")
    with get_client(sync_client=True) as client:
        found = client.read_deployment(registered.id)
    assert found.paused is True
    assert found.version == "1.2.4"


def test_load_job_template_is_the_kits_unless_the_project_has_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kit's base job template serves every project; a project's deploy/ file replaces it."""
    monkeypatch.setattr(bootstrap, "root", lambda: tmp_path)
    kits = deploy.load_job_template()
    assert deploy.job_template_path() == deploy.KIT_JOB_TEMPLATE
    assert "{{ image }}" in str(kits["job_configuration"])
    own = tmp_path / deploy.JOB_TEMPLATE
    own.parent.mkdir()
    own.write_text('{"job_configuration": {"name": "{{ name }}"}, "variables": {}}')
    assert deploy.job_template_path() == own
    assert deploy.load_job_template() == {
        "job_configuration": {"name": "{{ name }}"},
        "variables": {},
    }
