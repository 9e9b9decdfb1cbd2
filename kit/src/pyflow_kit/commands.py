"""Every command of the kit, declared once: its options give its command line and its invoke task.

``python -m pyflow_kit.MODULE`` parses its arguments with `parser`, and `pyflow_kit.collection`
makes each invoke task from the same `Command`, so a flag, its help and its default cannot
differ between the two. Standard library only: invoke imports this with its own Python, before
the project's environment exists. A project declares its own commands the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["text", "number", "count", "flag", "list"]
"""What an option takes: text, a whole number (``count``: at least 1), nothing, or repeats."""

HOME = "home"
"""The option every command with state takes: Prefect's home, which invoke's config gives."""


@dataclass(frozen=True)
class Option:
    """One option of a command: its name, what it takes, and its help (which states its default)."""

    name: str
    help: str
    kind: Kind = "text"
    positional: bool = False
    required: bool = False
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    default: str | int | None = None
    """The command line's default, where it is not "unset" (the help says so too)."""

    @property
    def flag(self) -> str:
        """The option on the command line, such as ``--dry-run``."""
        return "--" + self.name.replace("_", "-")

    def __post_init__(self) -> None:
        """Refuse an optional positional: invoke takes none."""
        if self.positional and not self.required:
            raise ValueError(f"option {self.name}: a positional option must be required")


@dataclass(frozen=True)
class Command:
    """One command: the invoke task ``task`` runs ``python -m MODULE [WORDS] [OPTIONS]``.

    ``env`` is set for the command (such as production's ``PREFECT_FLOW_ENV``); ``task_defaults``
    are what the invoke task passes unless told otherwise (``invoke run`` keeps the server);
    ``foreground`` replaces invoke with the command, so that Ctrl-C reaches it alone.
    """

    task: str
    summary: str
    module: str
    words: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    task_defaults: dict[str, object] = field(default_factory=dict)
    foreground: bool = False

    @property
    def takes_home(self) -> bool:
        """Whether the command takes Prefect's home (``--home``), which invoke passes."""
        return any(option.name == HOME for option in self.options)


def _home() -> Option:
    """Prefect's home: the project's server, its logs and what was pushed from here."""
    return Option(
        HOME, "Prefect's state folder (default: .prefect)", metavar="DIR", default=".prefect"
    )


PORT = Option(
    "port",
    "port of this project's server; it is started there, or moved there if it runs on another "
    "(default: PYFLOW_SERVER_PORT, else the port it runs on, else 4200)",
    kind="count",
    metavar="N",
)
ENGINE = Option("engine", "docker or podman (default: PYFLOW_CONTAINER_ENGINE, else docker)")
REGISTRY = Option(
    "registry",
    "name the image REGISTRY/IMAGE instead of its Artifact Registry path, such as "
    "127.0.0.1:5000/test (default: the PYFLOW_GCP_ settings)",
)
VERSION = Option("version", "the version tag (default: the version in pyproject.toml)")
INSECURE = Option(
    "insecure",
    "push over plain HTTP without TLS checks, for a test registry on loopback; podman only "
    "(default: verify TLS)",
    kind="flag",
)
BUILD = (
    ENGINE,
    Option("base_image", "the Python base image (default: the Dockerfile's)"),
    Option(
        "secret",
        "a build secret ID=PATH, such as ca=/etc/ssl/certs/ca-certificates.crt for a proxy's CA; "
        "repeat for more (default: none)",
        kind="list",
    ),
    Option(
        "index_url",
        "package index for the build (default: pip's configured index, else pip's default)",
    ),
    Option(
        "isolation",
        "podman's --isolation, such as chroot where no container runtime works (default: "
        "podman's own)",
    ),
    _home(),
)
"""The options of every command that builds the image."""
DRY_RUN = "dry_run"
PRODUCTION = (("PREFECT_FLOW_ENV", "production"),)

RUN = Command(
    "run",
    "Run one of the project's flows once, here (the default flow unless --flow names another).",
    "pyflow_kit.cli",
    options=(
        Option("flow", "the flow to run (default: the project's default flow)", metavar="NAME"),
        Option(
            "param",
            "a parameter of the flow, NAME=VALUE, the value as JSON or else as text; repeat for "
            "more (default: the flow's defaults)",
            kind="list",
            metavar="NAME=VALUE",
        ),
        Option(
            "source",
            "a source, for a flow with a `sources` parameter (one item each): a file or URL to "
            "read, LOCATION[#key=value,...]; repeat for more (default: the flow's)",
            kind="list",
            metavar="LOCATION",
        ),
        Option(
            "strict",
            "for a flow with a `strict` parameter: all or nothing, if a source fails write "
            "nothing (default: the flow's)",
            kind="flag",
        ),
        Option(
            "output",
            "folder or fsspec URL to write to, for a flow with an `output` parameter (default: "
            "PYFLOW_OUTPUT, else data/output)",
            metavar="DIR_OR_URL",
        ),
        Option(
            "runner",
            "task runner (default: PYFLOW_TASK_RUNNER, else threads in development)",
            choices=("threads", "dask"),
        ),
        Option(
            "workers",
            "worker processes of a local Dask cluster (default: PYFLOW_DASK_WORKERS, else the CPUs)",
            kind="count",
            metavar="N",
        ),
        Option(
            "dask_address",
            "a running Dask scheduler, such as tcp://127.0.0.1:8786 (default: PYFLOW_DASK_ADDRESS)",
        ),
        Option(
            "keep_server",
            "run on this project's Prefect server, started in the background if it is not "
            "running, so the next runs start at once and the run's links keep working (default: "
            "`invoke run` does; `--no-keep-server` and `python -m pyflow` use this project's "
            "server if it runs, else a temporary one that stops with the run)",
            kind="flag",
        ),
        PORT,
    ),
    task_defaults={"keep_server": True},
)

LOCAL = "pyflow_kit.local"
SERVER = Command(
    "server",
    "Start this project's Prefect server (API and UI) in the background, or reuse it.",
    LOCAL,
    ("server",),
    (PORT, Option("stop", "stop it instead (default: start it)", kind="flag"), _home()),
)
DEV = Command(
    "dev",
    "Start the server, register the deployments, run a worker in the foreground (Ctrl-C stops all).",
    LOCAL,
    ("dev",),
    (PORT, _home()),
    foreground=True,
)
TRIGGER = Command(
    "trigger",
    "Start a run of a flow's deployment on the project's server; `invoke dev`'s worker runs it.",
    LOCAL,
    ("trigger",),
    (
        Option(
            "flow", "the flow's name, such as `invoke dev` lists", positional=True, required=True
        ),
        Option("wait", "follow the run to its end (default: start it and return)", kind="flag"),
        _home(),
    ),
)
STATUS = Command(
    "status",
    "Show what runs: the server, the work pool's workers, the deployments and the last runs.",
    LOCAL,
    ("status",),
    (_home(),),
)
LOGS = Command(
    "logs",
    "Show the local server's and worker's logs (from `invoke server` and `invoke dev`).",
    LOCAL,
    ("logs",),
    (
        Option("follow", "print new lines until Ctrl-C (default: print and return)", kind="flag"),
        Option("lines", "last lines of each log to show (default: 20)", kind="count"),
        _home(),
    ),
    foreground=True,
)
RESET = Command(
    "reset",
    "Stop this project's server; delete its state (.prefect) and what runs wrote in the output.",
    LOCAL,
    ("reset",),
    (_home(),),
)
NEW_FLOW = Command(
    "new-flow",
    "Scaffold a flow (its assembly, its tasks and their tests), found at once by every command.",
    "pyflow_kit.scaffold",
    ("new",),
    (
        Option(
            "name",
            "the flow's package and function name, such as daily_report",
            positional=True,
            required=True,
        ),
    ),
)
REMOVE_FLOW = Command(
    "remove-flow",
    "Take a flow out: its package, its tests, and its lines marked `# flow: NAME` elsewhere.",
    "pyflow_kit.scaffold",
    ("remove",),
    (Option("name", "the flow's package, such as daily_report", positional=True, required=True),),
)
CHECK = Command(
    "check",
    "Import every flow and validate it without running it: names, parameters, defaults.",
    "pyflow_kit.checks",
)
DEPLOY = Command(
    "deploy",
    "Register every flow's deployment with the Prefect API the environment points at.",
    "pyflow_kit.deploy",
    ("register",),
    (
        Option(
            "env",
            "environment to register, development or production (default: PREFECT_FLOW_ENV)",
            choices=("development", "production"),
        ),
        Option(
            "image",
            "production: the pushed image, REPO:TAG@sha256:DIGEST (default: the image `invoke "
            "push` pushed from here for this version and commit)",
        ),
        Option("version", "production: the version to record (default: pyproject.toml's)"),
        _home(),
    ),
)
POOL = Command(
    "pool",
    "Create or update the production Kubernetes work pool from the kit's base job template.",
    "pyflow_kit.deploy",
    ("pool",),
    (_home(),),
    env=PRODUCTION,
)
BUILD_IMAGE = Command(
    "build",
    "Build the production image, tagged with the version and the git commit; report its size.",
    "pyflow_kit.image",
    ("build",),
    (
        *BUILD,
        REGISTRY,
        VERSION,
        Option(
            "cache_from", "docker buildx --cache-from, such as type=local,src=DIR (default: none)"
        ),
        Option("cache_to", "docker buildx --cache-to, such as type=local,dest=DIR (default: none)"),
    ),
)
PUSH = Command(
    "push",
    "Push the image's version and commit tags; record and print the digest the registry stored.",
    "pyflow_kit.image",
    ("push",),
    (ENGINE, REGISTRY, VERSION, INSECURE, _home()),
)
RELEASE = Command(
    "release",
    "Release the tagged commit: check everything, then build, smoke-run, push and deploy.",
    "pyflow_kit.release",
    options=(
        Option(
            DRY_RUN,
            "run the checks and print every step of the release without building, pushing or "
            "registering anything (default: release)",
            kind="flag",
        ),
        *BUILD,
        Option(
            "registry",
            "release to REGISTRY/IMAGE instead of Artifact Registry, whose checks are skipped "
            "(default: Artifact Registry)",
        ),
        INSECURE,
    ),
    env=PRODUCTION,
)
SMOKE = Command(
    "smoke",
    "Smoke-run an image: its default flow, run as the Kubernetes worker runs it, on a throwaway server.",
    "pyflow_kit.smoke",
    options=(
        Option(
            "image",
            "the image to run, such as localhost/pyflow:1.2.3",
            positional=True,
            required=True,
        ),
        ENGINE,
        Option("isolation", "podman: buildah's --isolation, such as chroot (default: buildah's)"),
    ),
)
RELEASES = Command(
    "releases",
    "List the releases recorded on the Prefect server, newest first, the current one marked.",
    "pyflow_kit.history",
    ("list",),
    env=PRODUCTION,
)
ROLLBACK = Command(
    "rollback",
    "Register every deployment again on an earlier release's image, by its digest.",
    "pyflow_kit.history",
    ("rollback",),
    (
        Option("version", "the release to go back to (default: the one before the current)"),
        Option(DRY_RUN, "say what would change, change nothing (default: roll back)", kind="flag"),
    ),
    env=PRODUCTION,
)
PREVIEW = Command(
    "preview",
    "Deploy a pull request as paused FLOW/pr-N deployments on its own image, or remove them.",
    "pyflow_kit.preview",
    options=(
        Option("pr", "the pull request's number", kind="count", required=True),
        Option(
            "remove",
            "delete the pull request's deployments instead (default: build, push, register)",
            kind="flag",
        ),
        *BUILD,
        Option("registry", "push to REGISTRY/IMAGE instead of Artifact Registry (default: it)"),
        INSECURE,
    ),
    env=PRODUCTION,
)
GCP_SETUP = Command(
    "gcp-setup",
    "Set up Google Cloud once for releases: service accounts, Workload Identity, repositories, IAM.",
    "pyflow_kit.gcp",
    options=(
        Option(
            DRY_RUN,
            "print every gcloud command with your values and run none (default: run them)",
            kind="flag",
        ),
    ),
)
DOCS = Command(
    "docs",
    "Regenerate the README's configuration table from the project's settings.",
    "pyflow_kit.docs",
)

COMMANDS = (
    RUN, SERVER, DEV, TRIGGER, STATUS, LOGS, RESET, NEW_FLOW, REMOVE_FLOW, CHECK, DEPLOY, POOL, BUILD_IMAGE,
    PUSH, RELEASE, SMOKE, RELEASES, ROLLBACK, PREVIEW, GCP_SETUP, DOCS,
)  # fmt: skip
"""Every command of the kit that runs in the project's environment, as `invoke --list` shows it."""


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add options to an argparse command line, as `Option` declares them."""
    for option in options:
        names = [option.name] if option.positional else [option.flag]
        settings: dict[str, object] = {"help": option.help}
        if option.metavar and not option.positional:
            settings["metavar"] = option.metavar
        if option.choices:
            settings["choices"] = option.choices
        if option.default is not None:
            settings["default"] = option.default
        if option.kind == "flag":
            settings.update(action="store_true", default=None)
        elif option.kind == "list":
            settings.update(action="append", default=[])
        elif option.kind in ("number", "count"):
            settings["type"] = _count if option.kind == "count" else int
        if option.positional and not option.required:
            settings["nargs"] = "?"
        if not option.positional:
            settings["dest"] = option.name
            if option.required:
                settings["required"] = True
        parser.add_argument(*names, **settings)  # type: ignore[arg-type]


def _count(text: str) -> int:
    """Parse a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return int(text)


def parser(module: str, commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """Return the command line of ``python -m MODULE``: its commands' options, as declared.

    A module with one command takes its options; a module with several (``pyflow_kit.local``)
    takes each command's word first, then that command's options.
    """
    own = [command for command in commands if command.module == module]
    top = argparse.ArgumentParser(prog=f"python -m {module}", description=_description(own))
    if not any(command.words for command in own):
        for command in own:
            add_options(top, command.options)
        return top
    subparsers = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in own:
        sub = subparsers.add_parser(
            command.words[0], help=command.summary, description=command.summary
        )
        add_options(sub, command.options)
    return top


def _description(commands: Sequence[Command]) -> str:
    """Describe a module's commands, one line each."""
    return " ".join(command.summary for command in commands)
