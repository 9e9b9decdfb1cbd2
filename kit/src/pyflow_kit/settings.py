"""Settings from the environment and ``.env``: the only module that reads them.

``PREFECT_FLOW_ENV`` picks the environment (``development`` or ``production``, as in the
original template); every other setting is a ``PYFLOW_`` variable. Settings left unset take
the project's default (``[tool.pyflow.defaults]`` in its pyproject.toml, where copier writes the
answers a project was made with), else the environment's default from `ENVIRONMENT_DEFAULTS`.
`Settings` holds what every project has;
a project extends it with its own (``[tool.pyflow] settings``), and `get_settings` reads that.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pyflow_kit.errors import SettingsError

Environment = Literal["development", "production"]
Runner = Literal["threads", "dask", "dask-kubernetes"]

ENV_PREFIX = "PYFLOW_"
ENVIRONMENT_VARIABLE = "PREFECT_FLOW_ENV"
ENVIRONMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "development": {
        "output": "data/output",
        "task_runner": "threads",
        "work_pool": "pyflow-local",
    },
    "production": {
        "output": None,
        "task_runner": "dask",
        "work_pool": "pyflow-kubernetes",
    },
}
"""Defaults that differ between environments; ``None`` means there is none (see `require_output`)."""


PLACEHOLDERS = ("your-project-id", "your-org/your-repo", "your-bucket")
"""Values from .env.example that must be replaced before a release."""

RELEASE_SETTINGS = ("output", "gcp_project", "gcp_region", "artifact_repository", "image_name")
"""Settings a release needs, besides Prefect's PREFECT_API_URL."""


def _is_remote(location: str) -> bool:
    """Return whether a location is a URL other than a local file."""
    scheme = location.split("://", 1)[0] if "://" in location else ""
    return scheme not in ("", "file", "local")


class Settings(BaseSettings):
    """The settings every project has, read from the environment and ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        env_ignore_empty=True,
    )

    env: Environment = Field(
        default="development",
        validation_alias=AliasChoices(ENVIRONMENT_VARIABLE),
        description="Environment: `development` (local defaults) or `production` (GKE).",
    )
    output: str | None = Field(
        default=None,
        description=(
            "Where the flows write their outputs: a folder or fsspec URL (such as "
            "`gs://bucket/outputs`)."
        ),
    )
    task_runner: Runner | None = Field(
        default=None,
        description="How tasks run: `threads` (one process), `dask` (a local Dask cluster, or the one at `PYFLOW_DASK_ADDRESS`) or `dask-kubernetes` (a Dask cluster of the run's own on Kubernetes, on `PYFLOW_DASK_IMAGE`; see `pyflow_kit/runners.py`).",
    )
    thread_workers: int = Field(
        default=2,
        ge=1,
        description="Threads of the thread runner: tasks it runs at once. A task whose engine uses every core (such as Polars) leaves a second thread the single-threaded steps of another task to overlap. Each costs one task's memory.",
    )
    dask_image: str | None = Field(
        default=None,
        description="Image of a `dask-kubernetes` cluster's scheduler and workers; `invoke release` sets it to the image it deploys, by digest.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Address of a running Dask scheduler (such as `tcp://10.0.0.5:8786`); unset starts a local cluster.",
    )
    dask_workers: int | None = Field(
        default=None,
        ge=1,
        description="Worker processes of a local Dask cluster; unset: the CPUs the process may use (a pod's CPU limit).",
    )
    dask_threads: int = Field(default=1, ge=1, description="Threads per local Dask worker process.")
    alert_webhook: SecretStr | None = Field(
        default=None,
        description="URL of a Slack incoming webhook (or any that takes Slack's `{\"text\": ...}`) that `invoke deploy` gives the flows' alerts (Prefect automations); unset: no alert is created or sent. A secret: pyflow never prints it.",
    )
    keep_runs: int = Field(
        default=10,
        ge=1,
        description="How many published runs the output keeps under `runs/`; older ones are removed after each publish (the one `latest.json` names always stays).",
    )
    run_lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a running run's lease lasts (renewed every quarter of that); a run folder whose lease ran out belongs to a crashed run, and the next run removes its leftovers.",
    )
    work_pool: str | None = Field(
        default=None,
        description="Prefect work pool the deployments run on.",
    )
    schedule: str | None = Field(
        default=None,
        description="Cron schedule of the deployments (such as `0 6 * * *`); unset: runs start only when triggered.",
    )
    schedule_timezone: str = Field(
        default="UTC", description="Time zone of the schedule (such as `America/Chicago`)."
    )
    deployment_parameters: Annotated[dict[str, dict[str, Any]], NoDecode] = Field(
        default_factory=dict,
        description=(
            "Parameters the deployments pass to their flows, as a JSON object keyed by flow name "
            '(such as `{"daily-report": {"count": 5}}`); a '
            "parameter left out takes the flow's default."
        ),
    )
    server_port: int = Field(
        default=4200,
        ge=1,
        le=65535,
        description="Port of this project's local Prefect server and its UI (`invoke server`, `invoke dev`, `invoke run`).",
    )
    namespace: str = Field(
        default="prefect",
        description="Kubernetes namespace of the flow-run Jobs (where the Prefect worker runs).",
    )
    service_account: str = Field(
        default="pyflow",
        description="Kubernetes service account of the flow-run pods (bound to a Google service account with Workload Identity).",
    )
    cpu_request: str = Field(
        default="500m", description="CPU a flow-run pod requests (Kubernetes quantity)."
    )
    cpu_limit: str = Field(
        default="2",
        description="CPU limit of a flow-run pod; a local Dask cluster sizes itself to it.",
    )
    memory_request: str = Field(default="1Gi", description="Memory a flow-run pod requests.")
    memory_limit: str = Field(default="4Gi", description="Memory limit of a flow-run pod.")
    gcp_project: str = Field(default="your-project-id", description="Google Cloud project ID.")
    gcp_region: str = Field(
        default="us-central1",
        description="Google Cloud region of the Artifact Registry repository.",
    )
    artifact_repository: str = Field(
        default="pyflow", description="Artifact Registry Docker repository."
    )
    image_name: str = Field(
        default="pyflow", description="Image name inside the Artifact Registry repository."
    )
    container_engine: Literal["docker", "podman"] = Field(
        default="docker",
        description="Engine that builds and pushes the image (`invoke build`, `invoke push`).",
    )
    github_repository: str = Field(
        default="your-org/your-repo",
        description="The GitHub repository allowed to release (OWNER/REPO), for `invoke gcp-setup`.",
    )
    release_service_account: str = Field(
        default="pyflow-release",
        description="Google service account the release workflow acts as, for `invoke gcp-setup`.",
    )
    release_branch: str = Field(
        default="main",
        description="The branch releases come from: `invoke release` refuses a tag whose commit is not on `origin/BRANCH`. The release workflow sets it to the repository's default branch.",
    )
    preview_service_account: str = Field(
        default="pyflow-preview",
        description="Google service account the preview workflow acts as, for `invoke gcp-setup`: it may push to the preview repository only.",
    )
    preview_artifact_repository: str = Field(
        default="pyflow-previews",
        description="Artifact Registry Docker repository of the preview images (`pr-N`), apart from the releases', for `invoke gcp-setup`.",
    )

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        """Refuse a cron expression Prefect cannot schedule."""
        if value:
            from prefect.client.schemas.schedules import CronSchedule

            try:
                CronSchedule(cron=value)
            except ValidationError:
                raise ValueError("not a cron expression such as '0 6 * * *'") from None
        return value

    @field_validator("deployment_parameters", mode="before")
    @classmethod
    def _parse_parameters(cls, value: Any) -> Any:
        """Read a JSON object of parameters by flow name."""
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"not JSON ({error}): give an object keyed by flow name, such as "
                '{"daily-report": {"count": 5}}'
            ) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read the arguments, the environment, .env, then the project's defaults, in that order."""
        defaults = ProjectDefaults(settings_cls)
        return init_settings, env_settings, dotenv_settings, file_secret_settings, defaults

    @model_validator(mode="after")
    def _apply_environment_defaults(self) -> Settings:
        """Fill unset settings from the environment's defaults."""
        for name, default in ENVIRONMENT_DEFAULTS[self.env].items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        return self

    def require_output(self) -> str:
        """Return the output location.

        Raises:
            SettingsError: If it is unset (production has no default).
        """
        if not self.output:
            raise SettingsError(
                f"PYFLOW_OUTPUT is not set, and {self.env} has no default output: set it in .env "
                "(a bucket such as gs://BUCKET/outputs) or pass --output"
            )
        return self.output

    @property
    def image_repository(self) -> str:
        """The image's Artifact Registry path, ``REGION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE``."""
        return (
            f"{self.gcp_region}-docker.pkg.dev/{self.gcp_project}/"
            f"{self.artifact_repository}/{self.image_name}"
        )

    def release_problems(self) -> list[str]:
        """Return what stops a release: each missing or placeholder production setting."""
        problems = []
        if self.env != "production":
            problems.append(f"{ENVIRONMENT_VARIABLE} must be production, not {self.env}")
        for name in RELEASE_SETTINGS:
            value = getattr(self, name)
            if not value:
                problems.append(f"{variable_name(name)} is not set")
            elif any(marker in str(value) for marker in PLACEHOLDERS):
                problems.append(f"{variable_name(name)} is still the placeholder '{value}'")
        if self.output and not _is_remote(self.output):
            problems.append(
                f"PYFLOW_OUTPUT='{self.output}' is a local folder: production pods need a bucket "
                "such as gs://BUCKET/outputs"
            )
        return problems

    def require_release(self) -> None:
        """Refuse to release unless every production setting is real.

        Raises:
            SettingsError: Listing every missing or placeholder setting at once.
        """
        problems = self.release_problems()
        if problems:
            raise SettingsError(
                "; ".join(problems) + ". Set them in .env (see .env.example) or, in GitHub "
                "Actions, as variables of the production (or preview) environment (see the "
                "README's release set-up)"
            )

    @property
    def pool(self) -> str:
        """The work pool's name: the setting, else the environment's default; never unset."""
        assert self.work_pool is not None, "filled from ENVIRONMENT_DEFAULTS"
        return self.work_pool


def project_defaults() -> dict[str, Any]:
    """Return the project's ``[tool.pyflow.defaults]``, keys as field names; none outside one."""
    from pyflow_kit import project

    if not project.find_root():
        return {}

    def fields(table: dict[str, Any]) -> dict[str, Any]:
        return {key.replace("-", "_"): value for key, value in table.items()}

    table = project.current().defaults
    found = fields(table)
    for environment in ENVIRONMENT_DEFAULTS:
        found[environment] = fields(table.get(environment, {}))
    return found


class ProjectDefaults(PydanticBaseSettingsSource):
    """The settings source of the project's defaults, those of the run's environment first."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Return a field's project default (unused: `__call__` reads them all at once)."""
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """Return the project's defaults of this class's settings, for the run's environment.

        Raises:
            SettingsError: If a table names something that is not a setting.
        """
        found = project_defaults()
        state = self.current_state
        environment = state.get(ENVIRONMENT_VARIABLE) or state.get("env") or "development"
        tables = {"": found, **{name: found.get(name, {}) for name in ENVIRONMENT_DEFAULTS}}
        for name, table in tables.items():
            unknown = set(table) - set(self.settings_cls.model_fields) - set(ENVIRONMENT_DEFAULTS)
            if unknown or (name and set(table) & set(ENVIRONMENT_DEFAULTS)):
                where = f"[tool.pyflow.defaults{'.' + name if name else ''}]"
                shown = ", ".join(sorted(key.replace("_", "-") for key in unknown or table))
                raise SettingsError(
                    f"{where} in pyproject.toml sets {shown}, which no setting is: fix the name "
                    "(the README's configuration table lists them, as PYFLOW_NAME)"
                )
        common = {key: value for key, value in found.items() if key not in ENVIRONMENT_DEFAULTS}
        return {**common, **tables.get(str(environment), {})}


def variable_name(field: str) -> str:
    """Return the environment variable that sets a field."""
    if field in {"env", ENVIRONMENT_VARIABLE}:
        return ENVIRONMENT_VARIABLE
    return f"{ENV_PREFIX}{field.upper()}"


def project_settings() -> type[Settings]:
    """Return the project's settings class (``[tool.pyflow] settings``); the kit's outside one.

    Raises:
        SettingsError: If it cannot be imported or is not a subclass of `Settings`.
    """
    from pyflow_kit import project

    if not project.find_root():
        return Settings
    path = project.current().settings
    found = project.import_path(path)
    if not (isinstance(found, type) and issubclass(found, Settings)):
        raise SettingsError(
            f"[tool.pyflow] settings = '{path}' is not a subclass of pyflow_kit.settings.Settings: "
            "name the project's settings class, such as pyflow.config:Settings"
        )
    return found


def get_settings(**overrides: Any) -> Settings:
    """Read and validate the project's settings; keyword arguments take precedence.

    Raises:
        SettingsError: Naming every invalid or missing variable, its value and the fix.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    kind = project_settings()
    try:
        return kind(**given)
    except ValidationError as error:
        raise SettingsError(format_validation_error(error)) from None


def format_validation_error(error: ValidationError) -> str:
    """Turn a settings `ValidationError` into one message naming each variable and the fix."""
    problems = []
    for detail in error.errors():
        location = [str(part) for part in detail["loc"]]
        message = detail["msg"].removeprefix("Value error, ")
        if not location:
            problems.append(message)
            continue
        name = variable_name(location[0])
        where = f" (item {location[1]})" if len(location) > 1 else ""
        value = detail.get("input")
        shown = f"={json.dumps(value)}" if isinstance(value, str | int | float) else ""
        problems.append(f"{name}{shown}{where} is invalid: {message}")
    return (
        "; ".join(problems)
        + ". Fix it in .env or the environment (see .env.example), or with the matching option."
    )
