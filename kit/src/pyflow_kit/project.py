"""The project a command works on: its folder, its settings, and its flows, found, not listed.

A project is the folder of the nearest ``pyproject.toml`` with a ``[tool.pyflow]`` table, from
the working folder up (or the folder ``PYFLOW_PROJECT`` names)::

    [tool.pyflow]
    package = "pyflow"                   # the package that holds the flows
    settings = "pyflow.config:Settings"  # the project's settings (default: the kit's own)
    default-flow = "daily-report"        # what runs without --flow (default: the first by name)
    example-flow = "warn"                # the template's example (`remove-flow` tells copier)

    [tool.pyflow.defaults]               # the project's own defaults of the kit's settings
    gcp-project = "acme-data"            # (each below the environment and .env)
    [tool.pyflow.defaults.production]    # and those of one environment
    work-pool = "acme-gke"

Each flow lives in a subpackage of its own: ``PACKAGE/NAME/flow.py`` assembles it (a function
decorated with ``@flow``) from the tasks of ``PACKAGE/NAME/tasks.py``. Every such flow is found,
so a new one (`invoke new-flow NAME`) needs no list to be added to. A ``flow.py`` may also
define ``check_parameters(parameters)``, which `python -m pyflow` runs before it starts Prefect:
it raises a `PyflowError` to refuse input the run would fail on anyway.
"""

from __future__ import annotations

import functools
import importlib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflow_kit.bootstrap import PROJECT_MARK, find_project_root
from pyflow_kit.errors import SettingsError

if TYPE_CHECKING:
    from prefect import Flow

PROJECT_VARIABLE = "PYFLOW_PROJECT"
"""Names the project's folder where the working folder is not inside it."""

FLOW_MODULE = "flow"
"""The module of a flow's subpackage that assembles the flow."""

CHECK = "check_parameters"
"""The optional function of a flow module that checks a run's parameters before it starts."""
ALERTS = "ALERTS"
"""What a flow module calls its alerts (`pyflow_kit.alerts.Alert`), which `invoke deploy` applies."""

Check = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Project:
    """A project's folder and its ``[tool.pyflow]`` table."""

    root: Path
    package: str
    settings: str
    default_flow: str | None
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def package_dir(self) -> Path:
        """The folder of the package that holds the flows."""
        return self.root.joinpath(*self.package.split("."))


def find_root(start: Path | None = None) -> Path | None:
    """Return the folder of the nearest pyproject.toml with ``[tool.pyflow]``, or None."""
    root = find_project_root(start)
    pyproject = root / "pyproject.toml"
    marked = pyproject.is_file() and PROJECT_MARK in pyproject.read_text(encoding="utf-8")
    return root if marked else None


@functools.cache
def _project_at(root: Path) -> Project:
    """Read a project's ``[tool.pyflow]`` table."""
    with (root / "pyproject.toml").open("rb") as handle:
        table = tomllib.load(handle).get("tool", {}).get("pyflow", {})
    package = str(table.get("package", "pyflow"))
    return Project(
        root=root,
        package=package,
        settings=str(table.get("settings", "pyflow_kit.settings:Settings")),
        default_flow=table.get("default-flow"),
        defaults=table.get("defaults", {}),
    )


def current() -> Project:
    """Return the project this process works on.

    Raises:
        SettingsError: If there is none here, with how to point at one.
    """
    root = find_root()
    if root is None:
        raise SettingsError(
            f"{Path.cwd()} is not inside a pyflow project (a folder whose pyproject.toml has a "
            f"[tool.pyflow] table): run this from the project's folder, or set {PROJECT_VARIABLE} "
            "to it"
        )
    return _project_at(root)


def import_path(path: str) -> Any:
    """Import ``module:attribute``, as ``[tool.pyflow]`` names things.

    Raises:
        SettingsError: If it cannot be imported, naming it and the fix.
    """
    module, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise SettingsError(
            f"'{path}' in [tool.pyflow] cannot be imported ({error}): fix the name in "
            "pyproject.toml"
        ) from None


@dataclass(frozen=True)
class FoundFlow:
    """A flow the project holds, the module that assembles it, and its check if it has one."""

    flow: Flow[Any, Any]
    module: str
    check: Check | None

    @property
    def attribute(self) -> str:
        """The flow's name as a Python name, by which `pyflow_kit.flows` hands it out."""
        return self.flow.name.replace("-", "_")


def flow_modules(project: Project | None = None) -> list[str]:
    """Return the module of every flow subpackage (``PACKAGE.NAME.flow``), by name."""
    project = project or current()
    return [
        f"{project.package}.{folder.name}.{FLOW_MODULE}"
        for folder in sorted(project.package_dir.iterdir())
        if (folder / f"{FLOW_MODULE}.py").is_file() and folder.name.isidentifier()
    ]


def found_flows() -> list[FoundFlow]:
    """Return every flow of the project: the default flow first, then the others by name.

    Raises:
        SettingsError: If two flows share a name, or the default flow is not one of them.
    """
    from prefect import Flow

    project = current()
    found: list[FoundFlow] = []
    for name in flow_modules(project):
        module = importlib.import_module(name)
        check = getattr(module, CHECK, None)
        found += [
            FoundFlow(value, name, check)
            for value in vars(module).values()
            if isinstance(value, Flow) and getattr(value.fn, "__module__", None) == name
        ]
    names = [item.flow.name for item in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SettingsError(
            f"flow name {', '.join(twice)} is used twice in {project.package}: give each flow a "
            "name of its own (@flow(name=...))"
        )
    found.sort(key=lambda item: (item.flow.name != project.default_flow, item.flow.name))
    if project.default_flow and found and found[0].flow.name != project.default_flow:
        raise SettingsError(
            f"[tool.pyflow] default-flow = '{project.default_flow}' is not a flow of "
            f"{project.package} (there are: {', '.join(sorted(names))}): fix it in pyproject.toml"
        )
    return found


def found_alerts() -> list[Any]:
    """Return the alerts every flow module declares (its ``ALERTS``), in the flows' order.

    Raises:
        SettingsError: If two alerts share a name.
    """
    alerts = [
        alert
        for name in dict.fromkeys(item.module for item in found_flows())
        for alert in getattr(importlib.import_module(name), ALERTS, ())
    ]
    names = [alert.name for alert in alerts]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SettingsError(
            f"alert name {', '.join(twice)} is declared twice: give each alert in the flow "
            "modules' ALERTS a name of its own"
        )
    return alerts


def flows() -> tuple[Flow[Any, Any], ...]:
    """Return every flow of the project, the default flow first."""
    return tuple(item.flow for item in found_flows())
