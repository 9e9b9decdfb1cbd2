"""The releases, recorded on the Prefect server, and rollback to any of them.

Each release (and each rollback) adds a version of the keyed artifact ``pyflow-releases``: the
version, commit, image by digest and the deployments it registered. The Prefect UI shows them
under Artifacts; ``python -m pyflow_kit.history list`` prints them (`invoke releases`), and
``python -m pyflow_kit.history rollback [VERSION]`` registers the deployments again on the image of
the release before the current one, or of VERSION (`invoke rollback`). Prefect Cloud has its own
rollback; this one works on any Prefect server, because every deployment is pinned to a digest.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyflow_kit import commands
from pyflow_kit.errors import ReleaseError, run_command
from pyflow_kit.settings import Settings, get_settings

ARTIFACT_KEY = "pyflow-releases"
"""The key of the artifact whose versions are the releases."""

PAGE = 200
"""How many records one request reads (the server's own maximum)."""


@dataclass(frozen=True)
class Release:
    """What one release (or rollback) registered: version, commit, image, deployments."""

    version: str
    commit: str
    image: str
    deployments: list[str] = field(default_factory=list)
    action: str = "release"
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def digest(self) -> str:
        """The image's digest, ``sha256:...``."""
        return self.image.rpartition("@")[2]


def record(entry: Release) -> None:
    """Add a release to the server's record (a new version of the keyed artifact)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    row = {**asdict(entry), "deployments": ", ".join(entry.deployments)}
    description = f"{entry.action} {entry.version}: {entry.image}"
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                key=ARTIFACT_KEY, type="table", data=json.dumps([row]), description=description
            )
        )


def releases() -> list[Release]:
    """Return every recorded release and rollback, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    found: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:  # the server returns at most PAGE at a time
            page = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
                sort=ArtifactSort.CREATED_DESC,
                limit=PAGE,
                offset=len(found),
            )
            found += page
            if len(page) < PAGE:
                break
    entries = []
    for artifact in sorted(
        found, key=lambda item: item.created or datetime.min.replace(tzinfo=UTC)
    ):
        [row] = json.loads(str(artifact.data))
        row["deployments"] = [name for name in row["deployments"].split(", ") if name]
        entries.append(Release(**row))
    return entries


def rollback_target(entries: list[Release], version: str | None) -> Release:
    """Return the release to roll back to: VERSION's, else the one released before the current.

    Raises:
        ReleaseError: If nothing was released, VERSION never was, or there is no earlier release.
    """
    released = [entry for entry in entries if entry.action == "release"]
    if not released:
        raise ReleaseError(
            "no release is recorded on this Prefect server: release first (`invoke release`)"
        )
    if version:
        matching = [entry for entry in released if entry.version == version]
        if not matching:
            known = ", ".join(dict.fromkeys(entry.version for entry in released))
            raise ReleaseError(f"version {version} was never released here: choose one of {known}")
        return matching[-1]
    current = entries[-1].version
    position = max(i for i, entry in enumerate(released) if entry.version == current)
    earlier = [entry for entry in released[:position] if entry.version != current]
    if not earlier:
        raise ReleaseError(
            f"nothing was released before {current}: name a version, `invoke rollback VERSION`"
        )
    return earlier[-1]


def rollback(settings: Settings, version: str | None = None, dry_run: bool = False) -> Release:
    """Register every deployment again on an earlier release's image; record it; return it.

    Raises:
        PyflowError: If there is no such release, or the deployments cannot be registered.
    """
    from pyflow_kit.deploy import deploy_production

    entries = releases()
    target = rollback_target(entries, version)
    current = entries[-1]
    print(f"current: {current.version} ({current.image})")
    print(f"rollback to: {target.version} ({target.image}), released {target.at}")
    if dry_run:
        print("dry run: nothing was registered")
        return target
    from pyflow_kit.deploy import deployment_name
    from pyflow_kit.project import flows as project_flows

    flows = tuple(
        f for f in project_flows() if f"{f.name}/{deployment_name(settings)}" in target.deployments
    )
    gone = set(target.deployments) - {f"{f.name}/{deployment_name(settings)}" for f in flows}
    if gone or not flows:
        raise ReleaseError(
            f"{target.version} deployed {', '.join(target.deployments) or 'nothing'}, but this "
            f"checkout has no flow for {', '.join(sorted(gone)) or 'them'}: roll back from a "
            f"checkout of {target.commit} (`git checkout {target.commit}`)"
        )
    registered = deploy_production(settings, target.image, target.version, flows)
    for item in registered:
        print(f"registered {item.name} on work pool '{item.work_pool}' with {target.image}")
    entry = Release(
        target.version,
        target.commit,
        target.image,
        [item.name for item in registered],
        action=f"rollback from {current.version}",
    )
    record(entry)
    return entry


def table(entries: list[Release]) -> str:
    """Return the releases as a table to print, newest first, the current one marked."""
    lines = [f"{'':2}{'VERSION':<12}{'WHEN':<27}{'WHAT':<26}IMAGE"]
    for position, entry in enumerate(reversed(entries)):
        mark = "* " if position == 0 else "  "
        lines.append(f"{mark}{entry.version:<12}{entry.at:<27}{entry.action:<26}{entry.image}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """List the releases or roll back; print one message naming the problem and the fix."""
    args = commands.parser("pyflow_kit.history").parse_args(argv)

    def act() -> None:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise ReleaseError(
                "PREFECT_API_URL is not set: set it (and PREFECT_API_KEY for Prefect Cloud) in "
                ".env to the server the releases went to"
            )
        if args.command == "list":
            entries = releases()
            print(table(entries) if entries else "no release is recorded on this Prefect server")
        else:
            rollback(get_settings(), args.version, bool(args.dry_run))

    return run_command(args.command, act)


if __name__ == "__main__":
    sys.exit(main())
