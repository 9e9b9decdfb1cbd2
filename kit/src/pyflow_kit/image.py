"""The production image: its names and tags, its build and push, and the record of each push.

``python -m pyflow_kit.image build`` builds the image tagged with the version and the git commit
(what `invoke build` runs); ``python -m pyflow_kit.image push`` pushes both tags, prints the digest
the registry stored and records it in the Prefect home's ``pushed-images.json``, where
`invoke deploy` finds it (what `invoke push` runs). Either engine works: docker or podman.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pyflow_kit import bootstrap, commands
from pyflow_kit.errors import ImageError, run_command
from pyflow_kit.settings import Settings, get_settings

ENGINES = ("docker", "podman")
PLACEHOLDER_PROJECT = "your-project-id"
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
"""A valid image tag (the OCI distribution spec's rule)."""
SECRET_ID = re.compile(r"[A-Za-z0-9_.-]+")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
PUSHED_FILE = "pushed-images.json"
"""Where pushes are recorded, in the project's Prefect home: tag to digest."""


@dataclass(frozen=True)
class Image:
    """The image of one version and commit: ``REPOSITORY:VERSION`` and ``REPOSITORY:COMMIT``."""

    repository: str
    version: str
    commit: str

    @property
    def tags(self) -> list[str]:
        """Both tags, the version's first."""
        return [f"{self.repository}:{self.version}", f"{self.repository}:{self.commit}"]

    def pinned(self, digest: str) -> str:
        """The version's tag pinned to a digest, ``REPOSITORY:VERSION@sha256:...``."""
        return f"{self.repository}:{self.version}@{digest}"


@dataclass(frozen=True)
class BuildOptions:
    """Flags of a build; empty ones leave the Dockerfile's or the engine's defaults."""

    base_image: str = ""
    secrets: list[str] = field(default_factory=list)
    index_url: str = ""
    isolation: str = ""
    cache_from: str = ""
    cache_to: str = ""


def git(root: Path | None, *args: str) -> str:
    """Run git in ``root`` (default: the project) and return its output.

    Raises:
        ImageError: If git fails (not a repository, no commit yet).
    """
    root = root or bootstrap.root()
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(
            f"`git {' '.join(args)}` failed in {root}: {result.stderr.strip()}: the image is "
            "named after the git commit, so build from a git repository with a commit"
        )
    return result.stdout


def changed_files(root: Path | None = None) -> list[str]:
    """Return the files that differ from HEAD: changed, staged or untracked (not ignored)."""
    return [line[3:] for line in git(root, "status", "--porcelain").splitlines()]


def git_commit(root: Path | None = None) -> str:
    """Return HEAD's short commit, with ``-dirty`` when files differ from it (untracked too)."""
    commit = git(root, "rev-parse", "--short=7", "HEAD").strip()
    return f"{commit}-dirty" if changed_files(root) else commit


def project_version(root: Path | None = None) -> str:
    """Return the project's version, from pyproject.toml."""
    data = tomllib.loads(
        ((root or bootstrap.root()) / "pyproject.toml").read_text(encoding="utf-8")
    )
    return str(data["project"]["version"])


def container_engine(flag: str, settings: Settings, required: bool = True) -> str:
    """Return the engine to use: the flag, else PYFLOW_CONTAINER_ENGINE.

    Raises:
        ImageError: If it is neither docker nor podman, or (when required) not installed.
    """
    engine = flag or settings.container_engine
    if engine not in ENGINES:
        raise ImageError(f"--engine={engine!r} is not an engine: use docker or podman")
    if required and shutil.which(engine) is None:
        raise ImageError(
            f"{engine} is not installed (or not on PATH): install it, or pass --engine"
        )
    return engine


def image_repository(settings: Settings, registry: str = "") -> str:
    """Return ``REGISTRY/IMAGE`` with ``registry``, else the Artifact Registry path.

    Raises:
        ImageError: If the Artifact Registry path still holds the template's placeholder project.
    """
    if registry:
        return f"{registry.rstrip('/')}/{settings.image_name}"
    repository = settings.image_repository
    if PLACEHOLDER_PROJECT in repository.split("/"):
        raise ImageError(
            f"the image repository {repository} still names the placeholder project: set "
            "PYFLOW_GCP_PROJECT in .env (see .env.example), or pass --registry"
        )
    return repository


def check_tag(tag: str, source: str) -> str:
    """Return ``tag`` if it is a valid image tag.

    Raises:
        ImageError: Naming where the tag came from, if it is not.
    """
    if not TAG.fullmatch(tag):
        raise ImageError(
            f"{source}, {tag!r}, is not a valid image tag: use letters, digits, '_', '.' "
            "and '-' only (not '+'), at most 128 characters, not starting with '.' or '-'"
        )
    return tag


def image_for(
    settings: Settings, registry: str = "", version: str = "", root: Path | None = None
) -> Image:
    """Return the image of this checkout: the registry's repository, the version, the commit.

    Raises:
        ImageError: If the repository is a placeholder or a tag is not valid.
    """
    return Image(
        image_repository(settings, registry),
        check_tag(version or project_version(root), "the version"),
        check_tag(git_commit(root), "the git commit"),
    )


def parse_secret(spec: str) -> tuple[str, Path]:
    """Turn ``--secret ID=PATH`` into its id and file.

    Raises:
        ImageError: If it is not ID=PATH or the file does not exist.
    """
    secret_id, sep, path = spec.partition("=")
    if not sep or not SECRET_ID.fullmatch(secret_id) or not path:
        raise ImageError(
            f"--secret {spec!r} is not ID=PATH, such as ca=/etc/ssl/certs/ca-certificates.crt"
        )
    if not Path(path).is_file():
        raise ImageError(f"--secret {spec!r}: the file {path} does not exist")
    return secret_id, Path(path)


def image_labels(image: Image) -> dict[str, str]:
    """Return the OCI labels that say which version and commit an image was built from."""
    return {
        "org.opencontainers.image.version": image.version,
        "org.opencontainers.image.revision": image.commit,
    }


def build_command(
    engine: str, image: Image, options: BuildOptions, context: Path | None = None
) -> list[str]:
    """Return the command that builds and tags the image with ``engine``.

    Raises:
        ImageError: If an option belongs to the other engine, or a secret file is missing.
    """
    command = [engine, "build"]
    if options.isolation:
        if engine != "podman":
            raise ImageError("--isolation is a podman option: docker has none")
        command += ["--isolation", options.isolation]
    if options.base_image:
        command += ["--build-arg", f"BASE_IMAGE={options.base_image}"]
    if options.index_url:
        command += ["--build-arg", f"PIP_INDEX_URL={options.index_url}"]
    for secret_id, path in map(parse_secret, options.secrets):
        command += ["--secret", f"id={secret_id},src={path}"]
    for key, value in image_labels(image).items():
        command += ["--label", f"{key}={value}"]
    for tag in image.tags:
        command += ["--tag", tag]
    if options.cache_from or options.cache_to:
        if engine != "docker":
            raise ImageError("--cache-from and --cache-to are docker buildx options")
        command[:2] = ["docker", "buildx", "build", "--load"]
        for kind, value in (("from", options.cache_from), ("to", options.cache_to)):
            if value:
                command += [f"--cache-{kind}", value]
    return [*command, str(context or bootstrap.root())]


def push_command(
    engine: str, tag: str, digest_file: Path | None = None, insecure: bool = False
) -> list[str]:
    """Return the command that pushes one tag; podman writes the pushed digest to ``digest_file``.

    Raises:
        ImageError: If ``insecure`` is asked of docker, which takes it from its daemon's settings.
    """
    if engine == "docker":
        if insecure:
            raise ImageError(
                "--insecure is a podman option: docker already pushes to 127.0.0.0/8 over plain "
                "HTTP, and reads other insecure registries from its daemon.json"
            )
        return ["docker", "push", tag]
    options = ["--tls-verify=false"] if insecure else []
    if digest_file:
        options += ["--digestfile", str(digest_file)]
    return ["podman", "push", *options, tag]


def pushed_digest(output: str) -> str:
    """Return the digest in `docker push` output (``TAG: digest: sha256:... size: N``).

    Raises:
        ImageError: If the output holds no digest.
    """
    found = DIGEST.findall(output)
    if not found:
        raise ImageError(
            "the push printed no digest: check the registry with `docker manifest inspect`"
        )
    return str(found[-1])


masked = bootstrap.masked


def shown(command: list[str]) -> str:
    """Return a command as a shell line to print, credentials masked."""
    return masked(shlex.join(command))


def run(
    command: list[str], what: str, capture: bool = False, env: dict[str, str] | None = None
) -> str:
    """Print and run a command, its output shown as it comes; return the output if captured.

    Raises:
        ImageError: If the command fails.
    """
    print(shown(command), flush=True)
    result = subprocess.run(
        command,
        stdout=subprocess.PIPE if capture else None,
        text=True,
        env={**os.environ, **env} if env else None,
    )
    if capture:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise ImageError(f"{what} failed ({command[0]} exit status {result.returncode}): see above")
    return result.stdout or ""


def image_size(engine: str, tag: str) -> int:
    """Return an image's size in bytes, as the engine reports it."""
    result = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True, text=True
    )
    return int(result.stdout.strip() or 0) if result.returncode == 0 else 0


def build(engine: str, image: Image, options: BuildOptions, context: Path | None = None) -> None:
    """Build and tag the image, then report its size and the build time.

    Raises:
        ImageError: If an option is invalid or the build fails.
    """
    command = build_command(engine, image, options, context)
    started = time.monotonic()
    run(command, f"building {image.tags[0]}", env={"DOCKER_BUILDKIT": "1"})
    seconds = time.monotonic() - started
    size = image_size(engine, image.tags[0])
    print(f"Built {' and '.join(image.tags)}: {size / 1e6:,.0f} MB in {seconds:.0f} s")


def read_pushed(home: Path) -> dict[str, str]:
    """Return the pushes recorded in a Prefect home: tag to digest."""
    record = home / PUSHED_FILE
    pushed: dict[str, str] = json.loads(record.read_text()) if record.is_file() else {}
    return pushed


def record_push(home: Path, tag: str, digest: str) -> None:
    """Record that ``tag`` was pushed as ``digest`` (written whole, so never half-written)."""
    record = home / PUSHED_FILE
    home.mkdir(parents=True, exist_ok=True)
    temporary = record.with_suffix(".tmp")
    temporary.write_text(json.dumps({**read_pushed(home), tag: digest}, indent=2))
    temporary.replace(record)


def pushed_image(home: Path, image: Image) -> str:
    """Return the image pushed from here for this version and commit, by tag and digest.

    Raises:
        ImageError: If it was not pushed from here.
    """
    digest = read_pushed(home).get(image.tags[0])
    if not digest:
        raise ImageError(
            f"{image.tags[0]} has not been pushed from here: run `invoke build` and "
            "`invoke push`, or pass --image REPO:TAG@sha256:DIGEST"
        )
    return image.pinned(digest)


def push(engine: str, image: Image, home: Path, insecure: bool = False) -> str:
    """Push the commit tag, then the version tag; record, print and return the digest stored.

    The version tag goes last, so that a version tag in the registry always means a complete
    push (`invoke release` relies on it when it is run again).

    Raises:
        ImageError: If a push fails or reports no digest.
    """
    digest = ""
    with tempfile.TemporaryDirectory(prefix="pyflow-push-") as folder:
        for tag in reversed(image.tags):
            digest_file = Path(folder) / "digest" if engine == "podman" else None
            output = run(push_command(engine, tag, digest_file, insecure), f"pushing {tag}", True)
            digest = (
                digest_file.read_text(encoding="utf-8").strip()
                if digest_file
                else pushed_digest(output)
            )
            print(f"Pushed {tag} as {tag.rpartition(':')[0]}@{digest}")
            record_push(home, tag, digest)
    return digest


def build_options(args: argparse.Namespace) -> BuildOptions:
    """Return the build options of a parsed command line (`pyflow_kit.commands.BUILD`)."""
    from pyflow_kit.bootstrap import pip_index_url

    return BuildOptions(
        args.base_image or "",
        args.secret,
        args.index_url or pip_index_url(),
        args.isolation or "",
        getattr(args, "cache_from", None) or "",
        getattr(args, "cache_to", None) or "",
    )


def main(argv: list[str] | None = None) -> int:
    """Build or push the image; print one message naming the problem and the fix if it cannot."""
    args = commands.parser("pyflow_kit.image").parse_args(argv)

    def act() -> None:
        settings = get_settings()
        engine = container_engine(args.engine or "", settings)
        image = image_for(settings, args.registry or "", args.version or "")
        if args.command == "build":
            build(engine, image, build_options(args))
        else:
            push(engine, image, Path(args.home), bool(args.insecure))

    return run_command("image", act)


if __name__ == "__main__":
    sys.exit(main())
