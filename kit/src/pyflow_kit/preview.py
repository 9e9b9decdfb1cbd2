"""Preview deployments: a pull request's code, deployed apart from production, and removed after.

``python -m pyflow_kit.preview --pr N`` (what `invoke preview` and the preview workflow run) builds
the image tagged ``pr-N`` and the commit, pushes it, and registers every flow as ``FLOW/pr-N``
on that image by digest, with its schedule paused and its outputs under
``OUTPUT/previews/pr-N``: a run started by hand shows what the change does, and nothing runs on
its own. A preview runs the pull request's code, so it goes to a Prefect workspace or server of
its own, never production's: it refuses an unset Prefect API, or one that holds production
deployments (the preview workflow also gives it its own service account, image repository and
bucket). ``--remove`` deletes those deployments when the pull request closes (the image stays
in the registry, as every pushed image does).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyflow_kit import commands, image
from pyflow_kit.deploy import Registered
from pyflow_kit.errors import ReleaseError, run_command
from pyflow_kit.settings import Settings, get_settings


def preview_name(pr: int) -> str:
    """Return the name of a pull request's deployments and image tag: ``pr-N``.

    Raises:
        ReleaseError: If the number is not a pull request's (a positive integer).
    """
    if pr < 1:
        raise ReleaseError(f"--pr {pr} is not a pull request number: pass the number, such as 7")
    return f"pr-{pr}"


def preview_settings(settings: Settings, pr: int) -> Settings:
    """Return the preview's settings, with the outputs under ``previews/pr-N``.

    Raises:
        SettingsError: If a setting a production-like deployment needs is missing.
    """
    settings.require_release()
    output = f"{settings.require_output().rstrip('/')}/previews/{preview_name(pr)}"
    return settings.model_copy(update={"output": output})


PRODUCTION_DEPLOYMENT = "production"
"""The name of every production deployment (`pyflow_kit.deploy.deployment_name` in production)."""


def check_preview_api() -> None:
    """Refuse an unset Prefect API, or one holding production deployments: never a preview's.

    Raises:
        ReleaseError: If PREFECT_API_URL is unset, or naming the production deployments found;
            either with the settings to fix.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterId,
    )
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ReleaseError(
            "PREFECT_API_URL is not set: a preview registers in a Prefect workspace or server of "
            "its own: set PREFECT_API_URL and PREFECT_API_KEY to the preview's (in GitHub, the "
            "preview environment's PREVIEW_PREFECT_API_URL and PREVIEW_PREFECT_API_KEY)"
        )
    production = DeploymentFilter(name=DeploymentFilterName(any_=[PRODUCTION_DEPLOYMENT]))
    with get_client(sync_client=True) as client:
        found = client.read_deployments(deployment_filter=production, limit=3)
        if not found:
            return
        ids = FlowFilter(id=FlowFilterId(any_=[item.flow_id for item in found]))
        flows = {flow.id: flow.name for flow in client.read_flows(flow_filter=ids)}
    names = ", ".join(f"{flows.get(item.flow_id, '?')}/{item.name}" for item in found)
    raise ReleaseError(
        f"the Prefect API at {PREFECT_API_URL.value()} holds production deployments ({names}): "
        "a preview runs a pull request's code, so it goes to a Prefect workspace or server of "
        "its own: set PREFECT_API_URL and PREFECT_API_KEY to the preview's (in GitHub, the "
        "preview environment's PREVIEW_PREFECT_API_URL and PREVIEW_PREFECT_API_KEY)"
    )


def deploy_preview(
    settings: Settings, pr: int, engine: str, options: image.BuildOptions, home: Path,
    registry: str = "", insecure: bool = False,
) -> list[Registered]:  # fmt: skip
    """Build and push the pull request's image, then register its paused deployments.

    Raises:
        PyflowError: If a setting, the build, the push or the registration fails.
    """
    from pyflow_kit.deploy import (
        check_job_variables,
        ensure_kubernetes_pool,
        job_variables,
        register,
        released_settings,
    )

    name = preview_name(pr)
    previewed = preview_settings(settings, pr)
    check_preview_api()
    check_job_variables(previewed)
    built = image.image_for(previewed, registry, name)
    image.build(engine, built, options)
    digest = image.push(engine, built, home, insecure)
    ensure_kubernetes_pool(previewed, update=False)
    previewed = released_settings(previewed, built.pinned(digest))
    registered = register(
        previewed,
        image=built.pinned(digest),
        job_variables=job_variables(previewed),
        version=f"{name} ({built.commit})",
        name=name,
        paused=True,
    )
    for item in registered:
        print(
            f"registered {item.name} (paused) on work pool '{item.work_pool}': {built.pinned(digest)}"
        )
    return registered


def remove_preview(pr: int) -> list[str]:
    """Delete the pull request's deployments; return the names of those that existed."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from pyflow_kit.project import flows

    removed = []
    with get_client(sync_client=True) as client:
        for flow in flows():
            full_name = f"{flow.name}/{preview_name(pr)}"
            try:
                deployment = client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                continue
            client.delete_deployment(deployment.id)
            removed.append(full_name)
            print(f"removed {full_name}")
    if not removed:
        print(f"no deployment of {preview_name(pr)} was left to remove")
    return removed


def main(argv: list[str] | None = None) -> int:
    """Deploy or remove a pull request's preview; print one message naming any problem."""
    args = commands.parser("pyflow_kit.preview").parse_args(argv)

    def act() -> None:
        if args.remove:
            preview_name(args.pr)
            check_preview_api()
            remove_preview(args.pr)
            return
        settings = get_settings()
        engine = image.container_engine(args.engine or "", settings)
        build = image.build_options(args)
        home, registry = Path(args.home), args.registry or ""
        deploy_preview(settings, args.pr, engine, build, home, registry, bool(args.insecure))

    return run_command("preview", act)


if __name__ == "__main__":
    sys.exit(main())
