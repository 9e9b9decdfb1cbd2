"""Registering deployments: one code path for the local process pool and for production.

``python -m pyflow_kit.deploy`` registers every flow of the project with the Prefect API
the environment points at (what `invoke deploy` runs).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from pyflow_kit import alerts, bootstrap, commands, project
from pyflow_kit.errors import DeployError, PyflowError, SettingsError
from pyflow_kit.flows import entrypoint
from pyflow_kit.server import running_server
from pyflow_kit.settings import (
    ENVIRONMENT_DEFAULTS,
    ENVIRONMENT_VARIABLE,
    Settings,
    get_settings,
    variable_name,
)

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

logger = logging.getLogger(__name__)

"""The project folder: flows run from here in development, and from the image's WORKDIR in production."""

JOB_TEMPLATE = Path("deploy") / "kubernetes-job-template.json"
"""Where a project may keep a Kubernetes base job template of its own, in place of the kit's."""

KIT_JOB_TEMPLATE = Path(__file__).with_name("kubernetes-job-template.json")
"""The kit's Kubernetes base job template: the Job each flow run becomes."""

FLOW_RUN_SETTINGS = (
    "output", "task_runner", "dask_image", "dask_address", "dask_workers", "dask_threads",
    "keep_runs", "run_lease_seconds", "namespace", "service_account", "cpu_request", "cpu_limit",
    "memory_request", "memory_limit",
)  # fmt: skip
"""Settings a flow run reads: production deployments pass them to the pod."""

PARAMETERS_VARIABLE = variable_name("deployment_parameters")


@dataclass(frozen=True)
class Registered:
    """One registered deployment."""

    name: str
    id: str
    work_pool: str


def source_entrypoint(flow: Flow[Any, Any]) -> str:
    """Return where a flow's code is, ``path/to/module.py:function``, relative to the project."""
    source = Path(inspect.getsourcefile(flow.fn) or "").resolve()
    return f"{source.relative_to(bootstrap.root()).as_posix()}:{flow.fn.__name__}"


def deployment_name(settings: Settings) -> str:
    """Return the name of every flow's deployment: the environment's name."""
    return settings.env


def flow_run_env(settings: Settings) -> dict[str, str]:
    """Return the settings a production flow run needs, as the pod's environment variables."""
    env: dict[str, str] = {ENVIRONMENT_VARIABLE: settings.env}
    for name in FLOW_RUN_SETTINGS:
        value = getattr(settings, name)
        chosen = name in settings.model_fields_set or name in ENVIRONMENT_DEFAULTS[settings.env]
        if chosen and value is not None:
            env[variable_name(name)] = str(value)
    return env


def job_variables(settings: Settings) -> dict[str, object]:
    """Return the Kubernetes work pool's job variables for the production deployments.

    The pod gets a service-account token only if its flow run creates its own Dask cluster
    through the Kubernetes API (``dask-kubernetes``); no other runner calls that API.
    """
    return {
        "namespace": settings.namespace,
        "service_account_name": settings.service_account,
        "automount_service_account_token": settings.task_runner == "dask-kubernetes",
        "cpu_request": settings.cpu_request,
        "cpu_limit": settings.cpu_limit,
        "memory_request": settings.memory_request,
        "memory_limit": settings.memory_limit,
        "env": flow_run_env(settings),
    }


def deployment_parameters(
    settings: Settings, flows: tuple[Flow[Any, Any], ...]
) -> dict[str, dict[str, Any]]:
    """Return the parameters of each flow's deployment, by flow name, checked against the flows.

    Raises:
        SettingsError: If ``PYFLOW_DEPLOYMENT_PARAMETERS`` names a flow that is not there, or
            gives a flow parameters it does not take, with the fix.
    """
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError

    by_name = {flow.name: flow for flow in flows}
    for name, parameters in settings.deployment_parameters.items():
        flow = by_name.get(name)
        if flow is None:
            raise SettingsError(
                f"{PARAMETERS_VARIABLE} names flow '{name}', which is not a flow of the project "
                f"(there are: {', '.join(by_name)}): fix the name, or remove its entry from .env"
            )
        flows_logger = logging.getLogger("prefect.flows")
        flows_logger.disabled = True  # it logs the same error at ERROR level before raising it
        try:
            flow.validate_parameters(parameters)
        except (ParameterTypeError, SignatureMismatchError) as error:
            raise SettingsError(
                f"{PARAMETERS_VARIABLE} gives flow '{name}' parameters it does not take: {error}. "
                "Fix its entry in .env (the flow's docstring lists its parameters)"
            ) from None
        finally:
            flows_logger.disabled = False
    return settings.deployment_parameters


def ensure_work_pool(
    client: SyncPrefectClient,
    name: str,
    pool_type: str,
    base_job_template: dict[str, Any] | None = None,
    update: bool = True,
) -> bool:
    """Create a work pool, or (``update``) update its base job template; return if it was created.

    Raises:
        DeployError: If a pool of that name exists with another type.
    """
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(
            WorkPoolCreate(name=name, type=pool_type, base_job_template=base_job_template or {})
        )
        return True
    if pool.type != pool_type:
        raise DeployError(
            f"work pool '{name}' exists with type '{pool.type}', not '{pool_type}': "
            "set PYFLOW_WORK_POOL to another name, or delete the pool"
        )
    if update and base_job_template is not None and pool.base_job_template != base_job_template:
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=base_job_template))
    return False


def register(
    settings: Settings,
    flows: tuple[Flow[Any, Any], ...] | None = None,
    image: str | None = None,
    job_variables: dict[str, Any] | None = None,
    version: str | None = None,
    name: str | None = None,
    paused: bool | None = None,
) -> list[Registered]:
    """Register a deployment of every flow with the current Prefect API.

    Without an image, the deployment runs the project's code in place (a process pool in
    development, so code edits are picked up without registering again). With an image, it runs
    the code baked into the image, whose working directory holds the entrypoint's path.

    Args:
        settings: The settings; their environment names the deployments and their work pool.
        flows: The flows to register; default: every flow of the project.
        image: The image a container work pool runs; none for code in place.
        job_variables: Work pool job variables, such as CPU and memory requests.
        version: A version to record on the deployments, such as the release's.
        name: The deployments' name; default: the environment's (`deployment_name`).
        paused: Register the deployments paused, or not; default: as each one already is
            (a deployment paused by hand stays paused), and not paused if it is new.

    Returns:
        What was registered.

    Raises:
        SettingsError: If ``PYFLOW_DEPLOYMENT_PARAMETERS`` does not fit the flows.
    """
    from pyflow_kit.project import flows as project_flows

    every = project_flows()
    if flows is None:
        flows = every
    parameters = deployment_parameters(settings, (*every, *flows))
    schedule = (
        CronSchedule(cron=settings.schedule, timezone=settings.schedule_timezone)
        if settings.schedule
        else None
    )
    registered = []
    for flow in flows:
        source = (
            flow
            if image
            else cast(
                "Flow[Any, Any]", Flow.from_source(str(bootstrap.root()), source_entrypoint(flow))
            )
        )
        deployment = cast(
            "RunnerDeployment",
            source.to_deployment(
                name=name or deployment_name(settings),
                work_pool_name=settings.pool,
                job_variables=job_variables or {},
                parameters=parameters.get(flow.name, {}),
                schedules=[schedule] if schedule else [],
                description=flow.description,
                tags=["pyflow", settings.env],
                version=version,
                paused=paused
                if paused is not None
                else is_paused(flow.name, name or deployment_name(settings)),
            ),
        )
        deployment.entrypoint = entrypoint(flow)  # the kit applies the configured runner
        deployment_id = deployment.apply(image=image)
        registered.append(
            Registered(f"{flow.name}/{deployment.name}", str(deployment_id), settings.pool)
        )
    return registered


def is_paused(flow_name: str, name: str) -> bool:
    """Return whether a deployment exists and is paused (a new one is not)."""
    try:
        with get_client(sync_client=True) as client:
            return bool(client.read_deployment_by_name(f"{flow_name}/{name}").paused)
    except ObjectNotFound:
        return False


def deploy_local(settings: Settings) -> list[Registered]:
    """Create or update the process work pool, then register every flow to it."""
    with get_client(sync_client=True) as client:
        ensure_work_pool(client, settings.pool, "process")
    return register(settings)


def job_template_path() -> Path:
    """Return the project's Kubernetes base job template (``deploy/``), else the kit's."""
    own = bootstrap.root() / JOB_TEMPLATE
    return own if own.is_file() else KIT_JOB_TEMPLATE


def load_job_template(path: Path | None = None) -> dict[str, Any]:
    """Read the Kubernetes base job template: the project's own, else the kit's."""
    path = path or job_template_path()
    template: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return template


def ensure_kubernetes_pool(settings: Settings, update: bool = True) -> bool:
    """Create the Kubernetes work pool; ``update`` brings an existing one's template up to date."""
    with get_client(sync_client=True) as client:
        return ensure_work_pool(client, settings.pool, "kubernetes", load_job_template(), update)


TEMPLATE_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
"""A job variable's place in a base job template: ``{{ name }}``."""


def referenced_variables(base_job_template: dict[str, Any]) -> set[str]:
    """Return the job variables a base job template's job configuration uses."""
    text = json.dumps(base_job_template.get("job_configuration", {}))
    return set(TEMPLATE_PLACEHOLDER.findall(text))


def check_job_variables(settings: Settings) -> None:
    """Check that the pool's template (the repository's, if the pool is new) uses every variable.

    The Kubernetes worker silently drops job variables its pool's template does not reference
    (PrefectHQ/prefect#17588): a memory limit set here would never reach the pod.

    Raises:
        DeployError: Naming each variable the template would drop, and the fix.
    """
    try:
        with get_client(sync_client=True) as client:
            template = client.read_work_pool(settings.pool).base_job_template
    except ObjectNotFound:
        template = load_job_template()
    dropped = sorted({"image", *job_variables(settings)} - referenced_variables(template))
    if dropped:
        raise DeployError(
            f"the base job template of work pool '{settings.pool}' does not use the job "
            f"variables {', '.join(dropped)}: its worker would drop them silently. Run `invoke "
            "pool` to install the kit's base job template (or the project's "
            "deploy/kubernetes-job-template.json), or add them to the template"
        )


def deploy_production(
    settings: Settings,
    image: str,
    version: str | None = None,
    flows: tuple[Flow[Any, Any], ...] | None = None,
) -> list[Registered]:
    """Register every flow (or ``flows``) to the Kubernetes work pool, running in ``image``.

    Args:
        settings: Production settings; they must pass `Settings.require_release`.
        image: The pushed image, by tag and digest (``REPO:TAG@sha256:...``).
        version: The release version, recorded on the deployments.
        flows: The flows to register; default: every flow of the project.

    Returns:
        What was registered.
    """
    settings.require_release()
    check_job_variables(settings)
    ensure_kubernetes_pool(settings, update=False)
    released = released_settings(settings, image)
    return register(
        released, flows, image=image, job_variables=job_variables(released), version=version
    )


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
"""The end of an image reference pinned to its content: ``@sha256:`` and 64 hex digits."""


def require_digest(image: str) -> None:
    """Check that a production image is named by digest, which no push can move.

    Raises:
        DeployError: If it is named by tag alone, with how to find its digest.
    """
    if not DIGEST.search(image):
        raise DeployError(
            f"--image {image} names no digest: production deployments run an image by digest, "
            "REPO:TAG@sha256:DIGEST, so that a tag pushed again never changes what runs. Give "
            "the digest `invoke push` printed, or leave --image out to deploy the image pushed "
            "from here"
        )


def released_settings(settings: Settings, image: str) -> Settings:
    """Return the settings of a release's flow runs: their Dask clusters run its image too."""
    return settings.model_copy(update={"dask_image": image})


def main(argv: list[str] | None = None) -> int:
    """Register the deployments (``register``), or the work pool (``pool``), with the Prefect API.

    Development registers to this project's process pool, on PREFECT_API_URL or else this
    project's local server; production registers to the Kubernetes pool, on PREFECT_API_URL,
    with the image given.
    """
    args = commands.parser("pyflow_kit.deploy").parse_args(argv)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if getattr(args, "env", None):
        os.environ["PREFECT_FLOW_ENV"] = args.env
    home, pool_only = Path(args.home), args.command == "pool"

    api_url = None
    said: list[str] = []
    try:
        settings = get_settings()
        api_url = PREFECT_API_URL.value()
        if not api_url and settings.env == "development":
            local = running_server(home.resolve())
            api_url = local.api_url if local else None
        if not api_url:
            raise DeployError(
                "there is no Prefect server to register with: PREFECT_API_URL is not set and "
                "this project's server is not running. Start it with `invoke server` (or "
                "`invoke dev`), or set PREFECT_API_URL in .env"
            )
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            if settings.env == "development":
                if pool_only:
                    with get_client(sync_client=True) as client:
                        ensure_work_pool(client, settings.pool, "process")
                    registered = []
                else:
                    registered = deploy_local(settings)
            elif pool_only:
                settings.require_release()
                ensure_kubernetes_pool(settings)
                registered = []
            else:
                from pyflow_kit import image

                pushed = image.image_for(settings)
                chosen = args.image or image.pushed_image(home, pushed)
                require_digest(chosen)
                registered = deploy_production(settings, chosen, args.version or pushed.version)
            if registered:
                said = alerts.apply(settings, project.found_alerts())
    except PrefectHTTPStatusError as error:
        status = error.response.status_code
        print(
            f"pyflow deploy: the Prefect API at {api_url} answered HTTP {status}: check "
            "PREFECT_API_URL, and PREFECT_API_KEY for Prefect Cloud, in .env",
            file=sys.stderr,
        )
        return 1
    except httpx.HTTPError as error:
        print(
            f"pyflow deploy: the Prefect API at {api_url} cannot be reached ({error}): start the "
            "server (`invoke server`), or fix PREFECT_API_URL in .env",
            file=sys.stderr,
        )
        return 1
    except PyflowError as error:
        print(f"pyflow deploy: {error}", file=sys.stderr)
        return 1
    if pool_only:
        print(f"pyflow deploy: work pool '{settings.pool}' is up to date at {api_url}")
    for item in registered:
        print(f"pyflow deploy: registered {item.name} on work pool '{item.work_pool}' at {api_url}")
    for line in said:
        print(f"pyflow deploy: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
