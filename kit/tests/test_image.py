"""The container image, built for real with podman and run with buildah: what production runs.

These tests build the image from the Dockerfile on a local base image, run the flow inside it
as production does (the default command, and ``prefect flow-run execute`` as the Kubernetes
worker starts it), inspect every layer for what must not be there, and push it to a real
registry on loopback. They need podman, buildah and skopeo (and debootstrap to make the base
image, docker-registry for the push): without them they are skipped, or fail when CI is set.

``TEST_BASE_IMAGE`` names a base image to use instead of the one made with debootstrap, such as
``python:3.11-slim-bookworm`` where it can be pulled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import PROJECT, copy_project
from pyflow_kit.local import free_port
from pyflow_kit.testing import GcsEmulator, require_tools

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.timeout(1800)]

IMAGE = "localhost/pyflow:test"
BASE_IMAGE = "localhost/pyflow-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APP_UID = "1000"
WORKDIR = "/opt/pyflow"
DEV_TOOLS = ["pytest", "ruff", "invoke", "poetry", "pre_commit", "pytest_mock"]
INSTALL_HINT = "apt-get install -y podman buildah skopeo debootstrap docker-registry"


def require(*tools: str) -> None:
    """Skip the test (fail it in CI) unless every tool is on PATH."""
    require_tools(*tools, hint=INSTALL_HINT)


def run(*command: str, timeout: float = 900, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, and fail the test with that output if it fails.

    ``buildah run`` goes through `smoke.run_container`, as the smoke run does: it starts the
    container again when buildah loses its start race.
    """
    from pyflow_kit import smoke

    if command[:2] == ("buildah", "run") and not kwargs:
        result = smoke.run_container(list(command), timeout=timeout)
    else:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
        )
    return result


def image_exists(name: str) -> bool:
    """Return whether podman's store holds an image of this name."""
    return subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0


def make_base_image(name: str, workdir: Path) -> None:
    """Build a minimal Debian bookworm with Python 3.11 with debootstrap and import it as ``name``."""
    rootfs = workdir / "rootfs"
    run(
        "debootstrap",
        "--variant=minbase",
        f"--include={BASE_PACKAGES}",
        "bookworm",
        str(rootfs),
        timeout=1200,
    )
    for junk in ("var/lib/apt/lists", "var/cache/apt/archives", "usr/share/doc", "usr/share/man"):
        for path in (rootfs / junk).glob("*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run(
        "podman",
        "import",
        "--quiet",
        "--change",
        "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV=LANG=C.UTF-8",
        "-",
        name,
        stdin=tar.stdout,
    )
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


def podman_build(
    tag: str, base_image: str, secrets: dict[str, Path], index_url: str, context: Path
) -> subprocess.CompletedProcess[str]:
    """Build a copy of the project with podman directly (for the cache test's edited copy)."""
    command = [
        "podman",
        "build",
        "--isolation",
        "chroot",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
    ]
    command += ["--build-arg", f"PIP_INDEX_URL={index_url}"]
    for secret_id, path in secrets.items():
        command += ["--secret", f"id={secret_id},src={path}"]
    return run(*command, "--tag", tag, str(context), timeout=1800)


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an invoke task of the project, as a user would from its folder."""
    return run(sys.executable, "-m", "invoke", *args, cwd=PROJECT, timeout=1800)


def invoke_build(
    base_image: str, secrets: dict[str, Path], version: str
) -> subprocess.CompletedProcess[str]:
    """Build the image with `invoke build --engine podman`, named localhost/pyflow:VERSION."""
    options = ["--engine", "podman", "--isolation", "chroot", "--base-image", base_image]
    options += ["--registry", "localhost", "--version", version]
    for secret_id, path in secrets.items():
        options += ["--secret", f"{secret_id}={path}"]
    return invoke("build", *options)


def index_url() -> str:
    """Return the index pip uses on this machine, as `invoke setup` points Poetry at it."""
    from pyflow_kit.bootstrap import pip_index_url

    return pip_index_url()


@contextmanager
def container(image: str) -> Iterator[str]:
    """Create a buildah working container from ``image``; remove it afterwards."""
    name = run("buildah", "from", "--pull-never", image).stdout.strip().splitlines()[-1]
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def run_in(
    name: str, *command: str, user: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command in a working container, as the image's USER unless ``user`` is given."""
    options = ["--isolation", "chroot"] + (["--user", user] if user else [])
    full = ["buildah", "run", *options, name, "--", *command]
    if check:
        return run(*full, timeout=600)
    from pyflow_kit import smoke

    return smoke.run_container(full, timeout=600)


def image_config(image: str) -> dict:
    """Return what podman knows of an image: its ID, Config (Cmd, User, Env...) and History."""
    return json.loads(run("podman", "image", "inspect", image).stdout)[0]


@pytest.fixture(scope="session")
def container_tools() -> None:
    """Require podman, buildah and skopeo (skip, or fail in CI, without them)."""
    require("podman", "buildah", "skopeo")


@pytest.fixture(scope="session")
def base_image(container_tools: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base image: TEST_BASE_IMAGE, else a debootstrap bookworm made once and kept."""
    name = os.environ.get("TEST_BASE_IMAGE") or BASE_IMAGE
    if not image_exists(name):
        if name != BASE_IMAGE:
            run("podman", "pull", name, timeout=900)
        else:
            require("debootstrap")
            make_base_image(name, tmp_path_factory.mktemp("base"))
    return name


@pytest.fixture(scope="session")
def ca_secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This machine's CA bundle plus a unique canary line: a secret whose copies can be found."""
    bundle = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or HOST_CA_BUNDLE)
    path = tmp_path_factory.mktemp("secret") / "ca.pem"
    canary = f"# pyflow-canary-{uuid.uuid4().hex}\n".encode()
    path.write_bytes((bundle.read_bytes() if bundle.is_file() else b"") + b"\n" + canary)
    return path


@pytest.fixture(scope="session")
def build_log(base_image: str, ca_secret: Path) -> str:
    """What `invoke build` printed when it built the image from the working tree."""
    result = invoke_build(base_image, {"ca": ca_secret}, "test")
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def built_image(build_log: str) -> str:
    """The project's image, built by `invoke build` (cached layers make rebuilds quick)."""
    return IMAGE


@pytest.fixture(scope="session")
def image_layers(built_image: str, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every layer of the built image as a tar file, copied out of podman's store by skopeo."""
    folder = tmp_path_factory.mktemp("layers")
    run("skopeo", "copy", "--quiet", f"containers-storage:{built_image}", f"dir:{folder}")
    manifest = json.loads((folder / "manifest.json").read_text())
    return [folder / layer["digest"].split(":", 1)[1] for layer in manifest["layers"]]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A real Docker registry (Debian's docker-registry) on a free loopback port."""
    require("docker-registry")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (tmp_path / "registry.log").open("w")
    server = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"docker-registry did not start: {(tmp_path / 'registry.log').read_text()}"
                    )
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_dockerignore_keeps_local_files_out_of_the_context(base_image: str, tmp_path: Path) -> None:
    """Only pyproject.toml, poetry.lock, prefect.toml, pyflow/ and the kit reach the build.

    Never .env, caches, tests (the kit's included) or the rest of the project.
    """
    shutil.copy(PROJECT / ".dockerignore", tmp_path / ".dockerignore")
    kept = [
        "pyproject.toml",
        "poetry.lock",
        "prefect.toml",
        "pyflow/__init__.py",
        "pyflow/hello/flow.py",
        "kit/pyproject.toml",
        "kit/README.md",
        "kit/src/pyflow_kit/__init__.py",
    ]
    left_out = [
        ".env",
        ".env.production",
        "pyflow/.env",
        ".git/HEAD",
        ".venv/bin/python",
        ".prefect/prefect.db",
        ".pytest_cache/README.md",
        ".ruff_cache/CACHEDIR.TAG",
        "pyflow/__pycache__/flow.cpython-311.pyc",
        "tests/test_x.py",
        "kit/tests/test_x.py",
        "kit/CHANGELOG.md",
        "data/output/out.csv",
        "tasks.py",
        "README.md",
    ]
    for name in kept + left_out:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("canary\n")
    (tmp_path / "Containerfile.context").write_text(f"FROM {base_image}\nCOPY . /context/\n")
    tag = "localhost/pyflow-context:test"
    run(
        "podman",
        "build",
        "--isolation",
        "chroot",
        "--quiet",
        "--file",
        str(tmp_path / "Containerfile.context"),
        "--tag",
        tag,
        str(tmp_path),
    )
    try:
        with container(tag) as name:
            listing = run_in(name, "find", "/context", "-type", "f").stdout.split()
    finally:
        subprocess.run(["podman", "rmi", tag], capture_output=True, check=False)
    assert sorted(path.removeprefix("/context/") for path in listing) == sorted(kept)


def test_image_default_command_runs_the_projects_default_flow(built_image: str) -> None:
    """The image's CMD, `python -m pyflow`, runs the default flow and publishes, as the app user."""
    config = image_config(built_image)["Config"]
    assert config["Cmd"] == ["python", "-m", "pyflow"]
    assert not config.get("Entrypoint")
    assert config["WorkingDir"] == WORKDIR
    with container(built_image) as name:
        result = run_in(name, *config["Cmd"])
        output = f"{WORKDIR}/data/output"
        pointer = json.loads(run_in(name, "cat", f"{output}/latest.json").stdout)
        greetings = run_in(name, "cat", f"{output}/greetings.csv").stdout
        owners = run_in(
            name, "stat", "-c", "%u", *(f"{output}/{file}" for file in pointer["files"])
        ).stdout.split()
    assert "greeted 1 name(s)" in result.stdout
    assert greetings == "greeting\nHello, world!\n"
    assert pointer["rows_out"] == 1
    assert owners == [APP_UID] * 2


def test_image_runs_as_a_non_root_user_that_cannot_change_the_code(built_image: str) -> None:
    """The image's user is UID 1000 (numeric, for runAsNonRoot) and the code is read-only to it."""
    assert image_config(built_image)["Config"].get("User") == f"{APP_UID}:{APP_UID}"
    with container(built_image) as name:
        assert run_in(name, "id", "-u").stdout.strip() == APP_UID
        denied = run_in(name, "touch", f"{WORKDIR}/pyflow/flow.py", check=False)
        home = run_in(
            name,
            "sh",
            "-c",
            'mkdir -p "$PREFECT_HOME" && touch "$PREFECT_HOME/probe" && echo "$PREFECT_HOME"',
        ).stdout
    assert denied.returncode != 0
    assert "Permission denied" in denied.stderr
    assert home.strip() == "/home/pyflow/.prefect"


def test_image_imports_pyflow_and_prefect_from_any_directory(built_image: str) -> None:
    """`prefect` is on PATH; the project's package and the kit import from /, the flows found."""
    version = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
    probe = (
        "import importlib.metadata as m, shutil, pyflow, pyflow_kit.project as p; "
        "print(m.version('pyflow'), pyflow.__file__, shutil.which('prefect'), "
        "*(f.name for f in p.flows()))"
    )
    with container(built_image) as name:
        found = run_in(name, "sh", "-c", f'cd / && python -c "{probe}"').stdout.split()
        prefect = run_in(name, "prefect", "flow-run", "execute", "--help")
    assert found == [version, f"{WORKDIR}/pyflow/__init__.py", "/opt/venv/bin/prefect", "hello"]
    assert "Execute a flow run" in prefect.stdout


def test_image_venv_holds_no_dev_tools(built_image: str) -> None:
    """Only the main dependencies are installed: no pytest, ruff, invoke, Poetry or pre-commit."""
    probe = (
        "import importlib.util as u, json, sys; "
        "print(json.dumps({n: u.find_spec(n) is not None for n in sys.argv[1:]}))"
    )
    with container(built_image) as name:
        found = json.loads(run_in(name, "python", "-c", probe, "prefect", *DEV_TOOLS).stdout)
        scripts = run_in(name, "ls", "/opt/venv/bin").stdout.split()
    assert found == {"prefect": True} | dict.fromkeys(DEV_TOOLS, False)
    assert not {"pytest", "ruff", "invoke", "inv", "poetry", "pre-commit"} & set(scripts)


def test_image_holds_no_env_file_or_local_folders(built_image: str) -> None:
    """No .env anywhere in the image, and nothing but the code and settings in WORKDIR."""
    with container(built_image) as name:
        env_files = run_in(name, "find", "/", "-xdev", "-name", ".env*", user="0").stdout.split()
        workdir = run_in(name, "ls", "-A", WORKDIR).stdout.split()
    assert env_files == []
    assert sorted(workdir) == ["data", "kit", "prefect.toml", "pyflow", "pyproject.toml"]


def test_image_layers_hold_no_copy_of_the_build_secret(
    image_layers: list[Path], ca_secret: Path
) -> None:
    """No layer of the image holds the CA bundle given as a build secret, whole or in part."""
    secret = ca_secret.read_bytes()
    digest = hashlib.sha256(secret).hexdigest()
    canary = secret.strip().splitlines()[-1]
    found = []
    scanned = 0
    for layer in image_layers:
        with tarfile.open(layer, "r:*") as tar:
            for member in tar:
                if "run/secrets" in member.name:
                    found.append(f"{layer.name}:{member.name}")
                if not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                scanned += 1
                if canary in data or hashlib.sha256(data).hexdigest() == digest:
                    found.append(f"{layer.name}:{member.name}")
    assert scanned > 1000
    assert found == []


def test_image_config_keeps_no_build_settings(built_image: str) -> None:
    """The index URL and the secret's mount stay in the build stage: not in ENV, labels or history."""
    config = image_config(built_image)
    history = json.dumps(config.get("History", []))
    settings = json.dumps(config["Config"])
    url = index_url()
    for text in (history, settings):
        assert url not in text
        assert "PIP_INDEX_URL" not in text
        assert "/run/secrets" not in text
        assert "POETRY" not in text
    assert "PREFECT_HOME=/home/pyflow/.prefect" in config["Config"]["Env"]
    assert "PYTHONUNBUFFERED=1" in config["Config"]["Env"]


WORKER_RUN = r"""
import json, os, subprocess, sys, time
port = sys.argv[1]
os.environ.update(
    PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_UI_ENABLED="false",
)
import httpx
server = subprocess.Popen(
    ["prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
try:
    for _ in range(240):
        try:
            if httpx.get(os.environ["PREFECT_API_URL"] + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        raise SystemExit("the Prefect server did not start")
    subprocess.run(
        ["prefect", "--no-prompt", "work-pool", "create", "image-test", "--type", "kubernetes", "--overwrite"],
        check=True, stdout=subprocess.DEVNULL,
    )
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    os.environ.update(
        PREFECT_FLOW_ENV="production", PYFLOW_WORK_POOL="image-test", PYFLOW_GCP_PROJECT="acme",
        PYFLOW_OUTPUT="/tmp/worker-run", PYFLOW_TASK_RUNNER="threads",
    )
    from pyflow_kit.deploy import register
    from pyflow_kit.settings import get_settings
    [registered] = register(get_settings(), image="registry.invalid/pyflow:test", name="image-test")
    deployment_id = registered.id
    flow_run = run_deployment(deployment_id, timeout=0)
    executed = subprocess.run(
        ["prefect", "flow-run", "execute"], env=dict(os.environ, PREFECT__FLOW_RUN_ID=str(flow_run.id)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
        state = client.read_flow_run(flow_run.id).state
    print(json.dumps({
        "returncode": executed.returncode,
        "state": state.type.value,
        "entrypoint": deployment.entrypoint,
        "path": deployment.path,
        "pull_steps": deployment.pull_steps,
        "summary": json.load(open("/tmp/worker-run/summary.json")),
    }))
finally:
    server.terminate()
    server.wait()
"""


def test_image_executes_a_deployment_run_as_the_kubernetes_worker_does(built_image: str) -> None:
    """A deployment the kit registers on an image runs via `prefect flow-run execute`, found by the kit."""
    with container(built_image) as name:
        result = run_in(name, "python", "-c", WORKER_RUN, str(free_port()))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["entrypoint"] == "pyflow_kit.flows:hello"
    assert report["path"] == "."
    assert not report["pull_steps"]
    assert (report["returncode"], report["state"]) == (0, "COMPLETED")
    assert report["summary"]["rows_out"] > 0


WHAT_IT_MAY_DO = r"""
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
writable = []
for folder, subfolders, _ in os.walk("/"):
    if folder == "/":
        subfolders[:] = [name for name in subfolders if name not in {"dev", "proc", "sys"}]
    if os.access(folder, os.W_OK):
        writable.append(folder)
        subfolders.clear()
print(json.dumps({
    "user": f"{os.getuid()}:{os.getgid()}",
    "writable": sorted(writable),
    "capabilities": int(status["CapEff"], 16),
    "no_new_privileges": int(status["NoNewPrivs"]),
}))
"""
"""Report what a process in the container may do: its user, the top folders it may write (a
read-only mount refuses even where permissions allow), its capabilities, and no_new_privs."""


def test_smoke_run_locks_the_container_down_as_the_job_template_locks_the_pod(
    built_image: str,
) -> None:
    """The smoke run's container writes only the pod's empty folders, as its user, unprivileged.

    Run as the image is, without the smoke run's lockdown, the same user could write more:
    the output folder in WORKDIR, /var/tmp, /run/lock.
    """
    from pyflow_kit import deploy, smoke

    template = json.loads(deploy.KIT_JOB_TEMPLATE.read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    [spec] = pod["containers"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    probe = ["python", "-c", WHAT_IT_MAY_DO]
    result = smoke.run_in_image("podman", built_image, {}, probe, isolation="chroot")
    assert result.returncode == 0, result.stderr[-4000:]
    locked = json.loads(result.stdout.strip().splitlines()[-1])
    assert spec["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert locked == {
        "user": user,
        "writable": sorted(mount["mountPath"] for mount in spec["volumeMounts"]),
        "capabilities": 0,
        "no_new_privileges": 1,
    }
    with container(built_image) as name:
        unlocked = json.loads(run_in(name, *probe).stdout.strip().splitlines()[-1])
    assert {f"{WORKDIR}/data", "/var/tmp", "/run/lock"} <= set(unlocked["writable"])


def test_image_rebuilds_code_and_tool_settings_without_reinstalling_dependencies(
    built_image: str, base_image: str, ca_secret: Path, tmp_path: Path
) -> None:
    """Edits to pyflow/, to the kit's code and to a tool table: the dependencies stay cached."""
    context = tmp_path / "context"
    for folder in ("pyflow", "kit/src"):
        shutil.copytree(
            PROJECT / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in (
        "Dockerfile", ".dockerignore", "pyproject.toml", "poetry.lock", "prefect.toml",
        "kit/pyproject.toml", "kit/README.md",
    ):  # fmt: skip
        shutil.copy(PROJECT / name, context / name)
    change = uuid.uuid4().hex
    for edited in (
        context / "pyflow" / "hello" / "flow.py",
        context / "kit/src/pyflow_kit/flows.py",
    ):
        edited.write_text(f"{edited.read_text()}\n# changed by {change}\n")
    pyproject = context / "pyproject.toml"
    pyproject.write_text(f'{pyproject.read_text()}\n[tool.image-test]\nchange = "{change}"\n')
    tag = "localhost/pyflow:rebuild-test"
    log = podman_build(tag, base_image, {"ca": ca_secret}, index_url(), context).stdout
    subprocess.run(["podman", "rmi", tag], capture_output=True, check=False)
    steps = log.split("STEP ")[1:]
    install = [step for step in steps if "poetry install" in step.splitlines()[0]]
    code = [step for step in steps if step.splitlines()[0].endswith("COPY pyflow/ ./pyflow/")]
    assert len(install) == 1 and "Using cache" in install[0]
    assert len(code) == 1 and "Using cache" not in code[0]


def test_invoke_build_tags_the_version_and_commit_and_reports_the_size(
    build_log: str, built_image: str
) -> None:
    """`invoke build` echoes its podman command, tags version and commit, and prints size and time."""
    commit = run("git", "rev-parse", "--short=7", "HEAD", cwd=PROJECT).stdout.strip()
    dirty = run("git", "status", "--porcelain", cwd=PROJECT).stdout.strip()
    commit_tag = f"localhost/pyflow:{commit}-dirty" if dirty else f"localhost/pyflow:{commit}"
    assert "podman build --isolation chroot --build-arg BASE_IMAGE=" in build_log
    assert re.search(
        rf"Built {re.escape(IMAGE)} and {re.escape(commit_tag)}: [\d,]+ MB in \d+ s", build_log
    )
    assert image_config(commit_tag)["Id"] == image_config(built_image)["Id"]
    labels = image_config(built_image)["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == "test"
    assert labels["org.opencontainers.image.revision"] == commit_tag.rpartition(":")[2]


def test_image_push_to_a_registry_and_pull_by_digest_gives_the_same_image(
    built_image: str, registry: str, tmp_path: Path
) -> None:
    """`invoke push` to a real registry on loopback prints a digest that pulls back the same image."""
    commit_tag = next(
        tag for tag in image_config(built_image)["RepoTags"] if not tag.endswith(":test")
    )
    for source in (built_image, commit_tag):
        run("podman", "tag", source, f"{registry}/pyflow:{source.rpartition(':')[2]}")
    pushed = invoke(
        "push", "--engine", "podman", "--registry", registry, "--version", "test", "--insecure"
    )
    destination = f"{registry}/pyflow:test"
    found = re.search(
        rf"Pushed {re.escape(destination)} as {re.escape(registry)}/pyflow@(sha256:[0-9a-f]{{64}})",
        pushed.stdout,
    )
    assert found, pushed.stdout
    digest = found[1]
    remote = json.loads(
        run("skopeo", "inspect", "--tls-verify=false", f"docker://{destination}").stdout
    )
    assert remote["Digest"] == digest
    pulled = tmp_path / "pulled"
    run(
        "skopeo",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{registry}/pyflow@{digest}",
        f"dir:{pulled}",
    )
    manifest = (pulled / "manifest.json").read_bytes()
    assert f"sha256:{hashlib.sha256(manifest).hexdigest()}" == digest
    config_digest = json.loads(manifest)["config"]["digest"]
    assert config_digest == f"sha256:{image_config(built_image)['Id']}"


def test_image_runs_the_production_deployment_as_the_kubernetes_worker_would(
    built_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gcs_emulator: GcsEmulator
) -> None:
    """The production deployment's run, executed in the image as the worker would, publishes to GCS.

    Cloud Storage is the emulator on loopback: the run in the container writes its files and the
    pointer there, as it would to a bucket.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pyflow_kit import deploy, local
    from pyflow_kit.publish import Store
    from pyflow_kit.settings import get_settings

    home, output = tmp_path / ".prefect", f"{gcs_emulator.bucket()}/greetings"
    server, _ = local.start_server(home, free_port())
    try:
        for name, value in {
            "PREFECT_FLOW_ENV": "production",
            "PYFLOW_OUTPUT": output,
            "PYFLOW_GCP_PROJECT": "acme-data",
            "PYFLOW_WORK_POOL": "image-test-kubernetes",
        }.items():
            monkeypatch.setenv(name, value)
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            [registered] = deploy.deploy_production(get_settings(), built_image, version="test")
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment(registered.id)
                template = client.read_work_pool("image-test-kubernetes").base_job_template
                run_ = client.create_flow_run_from_deployment(deployment.id)
        command = (
            template["variables"]["properties"].get("command", {}).get("default")
            or "prefect flow-run execute"
        )
        env = {
            **deployment.job_variables["env"],
            "PREFECT__FLOW_RUN_ID": str(run_.id),
            "PREFECT_API_URL": server.api_url,
            **gcs_emulator.env,
        }
        options = [f"--env={name}={value}" for name, value in env.items()]
        with container(built_image) as name:
            executed = run(
                "buildah", "run", "--isolation", "chroot",
                *options, name, "--", *command.split(), timeout=900,
            )  # fmt: skip
        with (
            temporary_settings(updates={PREFECT_API_URL: server.api_url}),
            get_client(sync_client=True) as client,
        ):
            state = client.read_flow_run(run_.id).state
    finally:
        local.stop_server(home)
    assert deployment.job_variables["image"] == built_image
    assert deployment.entrypoint == "pyflow_kit.flows:hello"
    assert state is not None and state.type.value == "COMPLETED", executed.stdout + executed.stderr
    store = Store.of(output)
    pointer, _ = store.read_pointer()
    assert pointer is not None
    greetings = store.fs.cat_file(store.path(pointer["files"]["greetings.csv"]["path"]))
    assert greetings == b"greeting\nHello, world!\n"
    assert store.fs.cat_file(store.path("greetings.csv")) == greetings


@pytest.mark.usefixtures("prefect_server")
def test_release_smoke_run_rollback_and_preview_with_podman_and_a_real_registry(
    base_image: str,
    ca_secret: Path,
    registry: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Release, a broken release stopped by its smoke run, release again, roll back, preview.

    A good release pushes and registers; a commit whose flow cannot load stops before its push;
    rolling back registers the first release's digest, which a real run (the image pulled from
    the registry by digest) completes; a preview is refused on production's server, and on a
    server of its own comes and goes leaving only its image.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pyflow_kit import history, local, preview, release
    from pyflow_kit.image import BuildOptions
    from pyflow_kit.settings import get_settings

    for name, value in {
        "PREFECT_FLOW_ENV": "production",
        "PYFLOW_OUTPUT": "gs://acme-data/out",
        "PYFLOW_GCP_PROJECT": "acme",
        "PYFLOW_WORK_POOL": "release-smoke-test",
        "PYFLOW_TASK_RUNNER": "threads",
    }.items():
        monkeypatch.setenv(name, value)
    project = copy_project(tmp_path / "project")
    run("git", "init", "-q", "--bare", "-b", "main", str(tmp_path / "origin.git"))
    run("git", "remote", "add", "origin", str(tmp_path / "origin.git"), cwd=project)
    pyproject, flow = project / "pyproject.toml", project / "pyflow" / "hello" / "flow.py"
    good_flow = flow.read_text()
    build = BuildOptions(base_image, [f"ca={ca_secret}"], index_url(), "chroot")
    options = release.Options("podman", False, build, tmp_path / "home", project, registry, True)

    def tagged(version: str, flow_text: str) -> None:
        text = re.sub(
            r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text(), count=1
        )
        pyproject.write_text(text)
        flow.write_text(flow_text)
        run("git", "commit", "-qam", f"version {version}", "--allow-empty", cwd=project)
        run("git", "tag", version, cwd=project)
        run("git", "push", "-q", "origin", "main", cwd=project)  # released from main

    tagged("1.0.0", good_flow)
    first = release.release(get_settings(), options)
    assert "smoke run: hello" in capsys.readouterr().out

    tagged("1.0.1", good_flow + '\nraise RuntimeError("broken on purpose")\n')
    with pytest.raises(release.ReleaseError) as raised:
        release.release(get_settings(), options)
    assert "broken on purpose" in str(raised.value)
    assert "nothing was pushed" in str(raised.value)
    assert not registry_has(registry, "1.0.1")

    tagged("1.1.0", good_flow + "\n# 1.1.0\n")
    second = release.release(get_settings(), options)
    assert registry_has(registry, "1.0.0") and registry_has(registry, "1.1.0")
    assert first.rpartition("@")[2] != second.rpartition("@")[2]

    back = history.rollback(get_settings())
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("hello/production")
        flow_run = client.create_flow_run_from_deployment(deployment.id)
    assert deployment.job_variables["image"] == first == back.image
    env = {
        **deployment.job_variables["env"],
        "PREFECT__FLOW_RUN_ID": str(flow_run.id),
        "PREFECT_API_URL": api_url(),
        "PYFLOW_OUTPUT": "/tmp/rollback-run",
    }
    pulled = (
        run(
            "buildah",
            "from",
            "--tls-verify=false",
            f"docker://{registry}/pyflow@{first.rpartition('@')[2]}",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    try:
        options_ = [f"--env={name}={value}" for name, value in env.items()]
        executed = run(
            "buildah", "run", "--isolation", "chroot", "--network=host", *options_, pulled, "--",
            "prefect", "flow-run", "execute", timeout=900,
        )  # fmt: skip
    finally:
        subprocess.run(["buildah", "rm", pulled], capture_output=True, check=False)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.is_completed(), executed.stdout + executed.stderr
    versions = [(entry.version, entry.action) for entry in history.releases()[-3:]]
    assert versions == [
        ("1.0.0", "release"),
        ("1.1.0", "release"),
        ("1.0.0", "rollback from 1.1.0"),
    ]

    with pytest.raises(release.ReleaseError, match="holds production deployments"):
        preview.deploy_preview(get_settings(), 7, "podman", build, tmp_path / "home", registry)
    assert not registry_has(registry, "pr-7"), "refused before anything is built or pushed"
    previews_home = tmp_path / "previews-prefect"
    previews, _ = local.start_server(previews_home, free_port())  # the previews' own server
    try:
        with temporary_settings(updates={PREFECT_API_URL: previews.api_url}):
            preview.deploy_preview(
                get_settings(), 7, "podman", build, tmp_path / "home", registry, True
            )
            with get_client(sync_client=True) as client:
                assert client.read_deployment_by_name("hello/pr-7").paused is True
            preview.remove_preview(7)
            with get_client(sync_client=True) as client:
                assert client.read_deployments() == []
    finally:
        local.stop_server(previews_home)
    assert registry_has(registry, "pr-7"), "the preview's image stays, as every pushed image"


def registry_has(registry: str, tag: str) -> bool:
    """Return whether the registry holds the project's image with a tag."""
    found = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{registry}/pyflow:{tag}"],
        capture_output=True,
        check=False,
    )
    return found.returncode == 0


def api_url() -> str:
    """Return the Prefect API this test session runs against."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())
