"""Tests of the settings: environment defaults, validation messages, and their documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import PROJECT
from pyflow_kit.errors import SettingsError
from pyflow_kit.settings import ENVIRONMENT_DEFAULTS, Settings, get_settings, variable_name


def test_get_settings_defaults_to_development() -> None:
    """With nothing set, development runs on threads into data/output, on the local pool."""
    settings = get_settings()
    assert settings.env == "development"
    assert settings.task_runner == "threads"
    assert settings.output == "data/output"
    assert settings.work_pool == "pyflow-local"
    assert settings.deployment_parameters == {}


def test_get_settings_production_defaults_to_dask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production runs on Dask and the Kubernetes pool, writing where PYFLOW_OUTPUT says."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    monkeypatch.setenv("PYFLOW_OUTPUT", "gs://bucket/outputs")
    settings = get_settings()
    assert (settings.task_runner, settings.work_pool, settings.output) == (
        "dask",
        "pyflow-kubernetes",
        "gs://bucket/outputs",
    )


def test_get_settings_production_requires_an_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production has no default output location: the message names the variable."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    settings = get_settings()
    with pytest.raises(
        SettingsError, match="PYFLOW_OUTPUT is not set, and production has no default output"
    ):
        settings.require_output()


def test_get_settings_names_an_unknown_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown PREFECT_FLOW_ENV is refused, listing the allowed values."""
    monkeypatch.setenv("PREFECT_FLOW_ENV", "staging")
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert str(raised.value).startswith(
        "PREFECT_FLOW_ENV=\"staging\" is invalid: Input should be 'development' or 'production'"
    )
    assert ".env.example" in str(raised.value)


def test_get_settings_lists_every_invalid_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """All invalid settings are reported at once, each with its variable and value."""
    monkeypatch.setenv("PYFLOW_TASK_RUNNER", "fork")
    monkeypatch.setenv("PYFLOW_KEEP_RUNS", "-1")
    with pytest.raises(SettingsError) as raised:
        get_settings()
    message = str(raised.value)
    assert (
        "PYFLOW_TASK_RUNNER=\"fork\" is invalid: Input should be 'threads', 'dask' or 'dask-kubernetes'"
        in message
    )
    assert 'PYFLOW_KEEP_RUNS="-1" is invalid: Input should be greater than or equal to 1' in message


def test_get_settings_reads_dot_env(isolated_settings: Path) -> None:
    """Settings load from .env in the working folder; the environment wins over it."""
    (isolated_settings / ".env").write_text("PYFLOW_OUTPUT=from-dot-env\nPYFLOW_TASK_RUNNER=dask\n")
    assert get_settings().output == "from-dot-env"
    assert get_settings(task_runner="threads").task_runner == "threads"


def test_get_settings_overrides_take_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyword overrides (command-line options) beat the environment; None means not given."""
    monkeypatch.setenv("PYFLOW_OUTPUT", "from-env")
    assert get_settings(output="from-option").output == "from-option"
    assert get_settings(output=None).output == "from-env"


def test_get_settings_reads_deployment_parameters_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PYFLOW_DEPLOYMENT_PARAMETERS is a JSON object of parameters by flow name."""
    monkeypatch.setenv("PYFLOW_DEPLOYMENT_PARAMETERS", '{"my-flow": {"count": 3}}')
    assert get_settings().deployment_parameters == {"my-flow": {"count": 3}}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('{"my-flow": ', "is invalid: not JSON (Expecting value"),
        ('{"my-flow": [1]}', "(item my-flow) is invalid: Input should be a valid dictionary"),
    ],
)
def test_get_settings_names_bad_deployment_parameters(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    """Deployment parameters that are not a JSON object of objects name the variable and the fix."""
    monkeypatch.setenv("PYFLOW_DEPLOYMENT_PARAMETERS", value)
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert str(raised.value).startswith("PYFLOW_DEPLOYMENT_PARAMETERS")
    assert problem in str(raised.value)


def documented_variables(text: str) -> set[str]:
    """Return the PYFLOW_ and PREFECT_FLOW_ENV variables a document mentions."""
    return set(re.findall(r"\b(PYFLOW_[A-Z_]+|PREFECT_FLOW_ENV)\b", text))


def test_env_example_lists_every_setting() -> None:
    """.env.example mentions every variable, so a new user sees all there is to set."""
    text = (PROJECT / ".env.example").read_text()
    expected = {variable_name(name) for name in Settings.model_fields}
    assert documented_variables(text) == expected


def test_environment_defaults_name_only_real_settings() -> None:
    """Every per-environment default belongs to a setting that can take it."""
    for defaults in ENVIRONMENT_DEFAULTS.values():
        assert set(defaults) <= set(Settings.model_fields)


def test_get_settings_refuses_an_invalid_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cron expression Prefect cannot read is refused, naming PYFLOW_SCHEDULE."""
    monkeypatch.setenv("PYFLOW_SCHEDULE", "every morning")
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert str(raised.value).startswith(
        "PYFLOW_SCHEDULE=\"every morning\" is invalid: not a cron expression such as '0 6 * * *'"
    )


def defaults_project(root: Path, defaults: str) -> Path:
    """Write a project whose pyproject.toml sets defaults in ``[tool.pyflow.defaults]``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        '[tool.pyflow]\npackage = "pkg"\nsettings = "pyflow_kit.settings:Settings"\n\n' + defaults
    )
    return root


def test_get_settings_takes_the_projects_defaults_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[tool.pyflow.defaults]` (copier's answers) fill what neither variables nor .env set."""
    defaults = (
        '[tool.pyflow.defaults]\ngcp-project = "acme-data"\ngcp-region = "europe-west1"\n'
        'work-pool = "acme-any"\n\n'
        '[tool.pyflow.defaults.production]\nwork-pool = "acme-gke"\n'
        '[tool.pyflow.defaults.development]\nwork-pool = "acme-local"\n'
    )
    monkeypatch.setenv("PYFLOW_PROJECT", str(defaults_project(tmp_path / "acme", defaults)))
    monkeypatch.setenv("PYFLOW_GCP_REGION", "us-east1")
    settings = get_settings()
    assert (settings.gcp_project, settings.gcp_region) == ("acme-data", "us-east1")
    assert settings.work_pool == "acme-local"
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    assert get_settings(output="gs://b/o").work_pool == "acme-gke"
    monkeypatch.setenv("PYFLOW_WORK_POOL", "other")
    assert get_settings(output="gs://b/o").work_pool == "other"


def test_get_settings_names_a_project_default_that_is_no_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt default stops every command with its name and where to fix it."""
    defaults = '[tool.pyflow.defaults]\ngcp-projet = "acme-data"\n'
    monkeypatch.setenv("PYFLOW_PROJECT", str(defaults_project(tmp_path / "typo", defaults)))
    with pytest.raises(
        SettingsError,
        match=r"\[tool.pyflow.defaults\] in pyproject.toml sets gcp-projet, which no setting is",
    ):
        get_settings()
    defaults = '[tool.pyflow.defaults.production]\nwork-pol = "acme-gke"\n'
    monkeypatch.setenv("PYFLOW_PROJECT", str(defaults_project(tmp_path / "env", defaults)))
    with pytest.raises(
        SettingsError, match=r"defaults.production\] in pyproject.toml sets work-pol"
    ):
        get_settings()


def test_get_settings_validates_a_project_default_as_any_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment's project default is checked like a variable: the message names it."""
    defaults = '[tool.pyflow.defaults.production]\ntask-runner = "dsk"\n'
    monkeypatch.setenv("PYFLOW_PROJECT", str(defaults_project(tmp_path / "bad", defaults)))
    monkeypatch.setenv("PREFECT_FLOW_ENV", "production")
    with pytest.raises(SettingsError, match=r'PYFLOW_TASK_RUNNER="dsk" is invalid'):
        get_settings(output="gs://b/o")
    monkeypatch.setenv("PREFECT_FLOW_ENV", "development")
    assert get_settings().task_runner == "threads", "production's table is production's alone"
