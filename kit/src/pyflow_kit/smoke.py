"""The smoke run: the built image runs a flow as the Kubernetes worker would, before any push.

A throwaway Prefect server starts on loopback; the project's default flow is registered there
with the image, as production registers it; a flow run is created; and the image runs the
worker's own command (``prefect flow-run execute``) with the deployment's environment, as the
Job's container would, and locked down as its pod is: the image read-only but for empty
``/tmp`` and home folders, as the image's user, with no capabilities and no way to gain
privileges. Only a run that ends Completed lets the release push. The outputs go to a folder
inside the container, not to production's bucket.

``python -m pyflow_kit.smoke IMAGE`` runs it alone, on an image built before (`invoke build`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pyflow_kit import commands, deploy, image, runners
from pyflow_kit.errors import ReleaseError, run_command
from pyflow_kit.settings import Settings, get_settings

SMOKE_POOL = "pyflow-smoke"
"""The work pool of the throwaway server's deployment (a Kubernetes pool, as in production)."""

SMOKE_OUTPUT = "/tmp/pyflow-smoke"  # noqa: S108 (a folder inside the throwaway container)
"""Where the smoke run writes its outputs, inside the container."""

TIMEOUT = 900
"""Seconds the run in the container may take."""

OUTPUT_LINES = 15
"""How many of the container's last output lines a failed smoke run shows."""

START_RACE = "sealing memfd"
"""What buildah prints when its start of a container loses a race in the kernel (``Close_Fd
sealing memfd copy: Device or resource busy``): nothing has run, and a new attempt starts."""

START_ATTEMPTS = 3
"""Attempts at a container start that loses that race."""

START_DELAY = 1.0
"""Seconds between those attempts."""

USER = f"{runners.IMAGE_USER}:{runners.IMAGE_USER}"
"""The user and group the container runs as: the pods' (``runAsUser``), the image's own."""

WRITABLE = sorted(runners.WRITABLE_FOLDERS.values())
"""The only folders the container may write, each empty and in memory: the pods' emptyDirs."""

RUNTIME_FOLDERS = {"dev", "proc", "sys"}
"""Folders of an image's root that the container runtime mounts its own file systems on."""

BUILDAH_MOUNTPOINTS = ("etc/hostname", "etc/hosts", "etc/resolv.conf", "run/.containerenv")
"""Files ``buildah run`` binds into a container: they must exist before their folder is read-only."""


def worker_command(template: dict[str, Any]) -> list[str]:
    """Return the command the Kubernetes worker gives the container: the template's, or Prefect's."""
    default = template["variables"]["properties"].get("command", {}).get("default")
    return (default or "prefect flow-run execute").split()


def image_folders(root: Path) -> list[str]:
    """Return the folders at the top of an image's root that ``buildah run`` must bind read-only.

    Symbolic links (``bin -> usr/bin``) are left out, since their targets are bound; so are the
    runtime's own file systems and the writable folders that are whole top-level folders
    (``/tmp``). A writable folder deeper down (``/home/pyflow``) is mounted over its bound parent.
    """
    writable = {Path(folder).name for folder in WRITABLE if Path(folder).parent == Path("/")}
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and not entry.is_symlink()
        if entry.name not in RUNTIME_FOLDERS | writable
    )


def container_command(
    engine: str,
    tag: str,
    env: dict[str, str],
    command: list[str],
    isolation: str = "",
    root: Path | None = None,
) -> tuple[list[str], list[str]]:
    """Return the commands that run ``command`` in the image with ``env``, then clean up.

    Docker runs the image directly. Podman's images are run with buildah, which also works where
    `podman run` cannot (no container runtime limits): ``buildah from``, then ``buildah run``.
    Both share the host's network, so the container reaches the server on loopback. Both lock
    the container down as the pods are (the kit's kubernetes-job-template.json): a read-only image
    but for empty ``WRITABLE`` folders in memory, the user ``USER``, no capabilities, no
    privilege gained through setuid files. buildah has no ``--read-only`` and no
    ``no-new-privileges``: each folder of the image's root (``root``, where ``buildah mount``
    put it) is bound read-only onto itself, and ``setpriv --no-new-privs`` starts buildah, whose
    container inherits the flag.
    """
    variables = [f"--env={name}={value}" for name, value in env.items()]
    locked = [f"--user={USER}", "--cap-drop=ALL"]
    if engine == "docker":
        locked += ["--read-only", *(f"--tmpfs={folder}" for folder in WRITABLE)]
        locked += ["--security-opt=no-new-privileges"]
        run = ["docker", "run", "--rm", "--name={container}", "--network=host", *locked]
        return [*run, *variables, tag, *command], ["docker", "rm", "--force", "{container}"]
    if root is None:
        raise ValueError("buildah needs the image's root, mounted by `buildah mount`")
    locked += [f"--mount=type=tmpfs,destination={folder}" for folder in WRITABLE]
    locked += [
        f"--mount=type=bind,source={root / name},destination=/{name},ro"
        for name in image_folders(root)
    ]
    options = [f"--isolation={isolation}"] if isolation else []
    run = ["setpriv", "--no-new-privs", "buildah", "run", *options, "--network=host", *locked]
    return [*run, *variables, "{container}", "--", *command], ["buildah", "rm", "{container}"]


def mount_root(container: str) -> Path:
    """Mount a buildah container's root; return where, with buildah's mountpoints in it.

    The files buildah binds into the container at each run are created (empty) where the image
    lacks them: once their folders are bound read-only, buildah could not create them.

    Raises:
        ReleaseError: If buildah cannot mount it (rootless, outside `buildah unshare`).
    """
    mounted = subprocess.run(["buildah", "mount", container], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise ReleaseError(
            "the smoke run of a podman image runs it read-only, as its pods do, which needs "
            f"`buildah mount`, and that failed: {mounted.stderr.strip()}. Run it as root or "
            "inside `buildah unshare` (`buildah unshare python -m pyflow_kit.smoke IMAGE`), or "
            "release with --engine docker"
        )
    root = Path(mounted.stdout.strip().splitlines()[-1])
    for name in BUILDAH_MOUNTPOINTS:
        path = root / name
        if path.parent.is_dir() and not path.parent.is_symlink() and not os.path.lexists(path):
            path.touch()
    return root


def run_container(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a container's command; start it again while buildah loses its start race (`START_RACE`)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0 or START_RACE not in result.stderr or attempt == START_ATTEMPTS:
            break
        time.sleep(START_DELAY)
    return result


def run_in_image(
    engine: str, tag: str, env: dict[str, str], command: list[str], isolation: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a command in the image as the Job's locked-down container would; return its result.

    Raises:
        ReleaseError: If the image cannot be started at all.
    """
    container = f"pyflow-smoke-{uuid.uuid4().hex[:8]}"
    if engine == "podman":
        missing = [tool for tool in ("buildah", "setpriv") if shutil.which(tool) is None]
        if missing:
            raise ReleaseError(
                f"the smoke run of a podman image needs {' and '.join(missing)}, not installed: "
                "install them (Debian: apt-get install buildah util-linux), or release with "
                "--engine docker"
            )
        created = subprocess.run(
            ["buildah", "from", "--pull-never", tag], capture_output=True, text=True
        )
        if created.returncode != 0:
            raise ReleaseError(f"the image {tag} cannot be started: {created.stderr.strip()}")
        container = created.stdout.strip().splitlines()[-1]
    remove = ["buildah", "rm", "{container}"] if engine == "podman" else []
    try:
        root = mount_root(container) if engine == "podman" else None
        run, remove = container_command(engine, tag, env, command, isolation, root)
        return run_container(
            [part.replace("{container}", container) for part in run], timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise ReleaseError(
            f"the smoke run in {tag} did not end within {TIMEOUT} s: nothing was pushed; run the "
            "flow locally (`invoke run`) to see where it hangs"
        ) from None
    finally:
        if remove:
            subprocess.run(
                [part.replace("{container}", container) for part in remove], capture_output=True
            )


def smoke_run(engine: str, tag: str, settings: Settings, isolation: str = "") -> str:
    """Run the project's default flow in the image on a throwaway server; return the run's state.

    Raises:
        ReleaseError: If the run does not complete, with its state message and the container's
            last lines of output.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pyflow_kit.local import free_port, interrupt_on_stop_signals, start_server, stop_server
    from pyflow_kit.project import flows

    flow = flows()[0]
    with interrupt_on_stop_signals(), tempfile.TemporaryDirectory(prefix="pyflow-smoke-") as folder:
        home = Path(folder)
        server, _ = start_server(home, free_port())
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                template = deploy.load_job_template()
                with get_client(sync_client=True) as client:
                    deploy.ensure_work_pool(client, SMOKE_POOL, "kubernetes", template)
                smoke_settings = settings.model_copy(  # the flow's own defaults: no parameters
                    update={"work_pool": SMOKE_POOL, "deployment_parameters": {}}
                )
                [registered] = deploy.register(
                    smoke_settings,
                    flows=(flow,),
                    image=tag,
                    job_variables=deploy.job_variables(smoke_settings),
                )
                with get_client(sync_client=True) as client:
                    deployment = client.read_deployment(registered.id)
                    flow_run = client.create_flow_run_from_deployment(deployment.id)
                production_only = {"PYFLOW_DASK_ADDRESS", "PYFLOW_OUTPUT"}
                env = {
                    **{
                        name: value
                        for name, value in deployment.job_variables.get("env", {}).items()
                        if name not in production_only
                    },
                    "PREFECT__FLOW_RUN_ID": str(flow_run.id),
                    "PREFECT_API_URL": server.api_url,
                    "PYFLOW_OUTPUT": SMOKE_OUTPUT,
                }
                if env.get("PYFLOW_TASK_RUNNER") == "dask-kubernetes":
                    env["PYFLOW_TASK_RUNNER"] = "dask"  # no Kubernetes here: a local cluster
                print(f"smoke run: {flow.name} in {tag}, as the Kubernetes worker would run it")
                result = run_in_image(engine, tag, env, worker_command(template), isolation)
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(flow_run.id).state
        finally:
            stop_server(home)
    if state is None or not state.is_completed():
        shown = state.name if state else "never started"
        message = f": {state.message}" if state and state.message else ""
        output = (result.stdout + result.stderr).strip().splitlines()[-OUTPUT_LINES:]
        raise ReleaseError(
            f"the smoke run of {flow.name} in {tag} ended {shown}{message} (container exit "
            f"{result.returncode}); nothing was pushed. Its last lines:\n  "
            + "\n  ".join(output)
            + "\nFix the image (try `invoke build` then `python -m pyflow_kit.smoke IMAGE`)"
        )
    return str(state.name)


def main(argv: list[str] | None = None) -> int:
    """Smoke-run an image; print one message naming the problem and the fix if it fails."""
    args = commands.parser("pyflow_kit.smoke").parse_args(argv)

    def act() -> None:
        settings = get_settings()
        engine = image.container_engine(args.engine or "", settings)
        print(f"smoke run: {smoke_run(engine, args.image, settings, args.isolation or '')}")

    return run_command("smoke", act)


if __name__ == "__main__":
    sys.exit(main())
