"""The deployment files in deploy/: the Kubernetes work pool's base job template and Helm values.

Nothing here reaches a cluster: the Job the Kubernetes worker would create for a production
flow run is rendered from the template (as the worker renders it) and validated offline
against the Kubernetes schema with kubernetes-validate; the prefect-worker chart cannot be
rendered offline (no chart, no helm), so its values are validated against the chart's
documented values instead.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import prefect
import pytest
import yaml
from prefect.utilities.templating import apply_values

from conftest import ROOT
from pyflow.config import ENVIRONMENT_DEFAULTS, Settings, get_settings
from pyflow.deploy import job_variables

DEPLOY = ROOT / "deploy"
JOB_TEMPLATE = DEPLOY / "kubernetes-job-template.json"
CLOUD_VALUES = DEPLOY / "prefect-worker-values.yaml"
SELF_HOSTED_VALUES = DEPLOY / "prefect-worker-values-selfhosted.yaml"
KUBERNETES_VERSION = "1.30"
"""The Kubernetes version the manifests are checked against; every field used is older."""

PRODUCTION_IMAGE = "us-central1-docker.pkg.dev/acme/pyflow/pyflow:1.2.3"
PRODUCTION_JOB_VARIABLES: dict[str, Any] = {
    "image": PRODUCTION_IMAGE,
    **job_variables(
        get_settings(
            PREFECT_FLOW_ENV="production",
            output="gs://acme-warn/output",
            gcp_project="acme",
            keep_runs=5,
            cpu_request="1",
            memory_request="2Gi",
            _env_file=None,
        )
    ),
}
"""The job variables `invoke deploy --env production` gives pyflow's deployments."""

EXPOSED_VARIABLES = {
    "image",
    "namespace",
    "service_account_name",
    "image_pull_policy",
    "env",
    "labels",
    "backoff_limit",
    "finished_job_ttl",
    "cpu_request",
    "cpu_limit",
    "memory_request",
    "memory_limit",
    "job_watch_timeout_seconds",
    "pod_watch_timeout_seconds",
    "stream_output",
}

# --- Rendering the Job as the Kubernetes worker does -------------------------------------
# (to move into the package with /tmp/pyflow-release/render.py; checked field by field
# against prefect-kubernetes 0.8.0's KubernetesWorkerJobConfiguration.prepare_for_flow_run)

WORKER_COMMAND = "prefect flow-run execute"
FLOW_RUN_NAME = "crimson-fox"
FLOW_RUN_ID = "00000000-0000-4000-8000-000000000000"


def variable_defaults(base_job_template: dict[str, Any]) -> dict[str, Any]:
    """Return the job variables' defaults, leaving out null ones as Prefect's worker does."""
    properties = base_job_template["variables"].get("properties", {})
    return {
        name: copy.deepcopy(schema["default"])
        for name, schema in properties.items()
        if schema.get("default") is not None
    }


def render_job_manifest(
    base_job_template: dict[str, Any],
    job_variables: dict[str, Any],
    flow_run_name: str = FLOW_RUN_NAME,
    flow_run_id: str = FLOW_RUN_ID,
) -> dict[str, Any]:
    """Render the Job manifest a Kubernetes worker submits for one flow run of a deployment."""
    values = variable_defaults(base_job_template)
    env = {**values.get("env", {}), **job_variables.get("env", {})}
    values.update(copy.deepcopy(job_variables))
    values["env"] = env
    values.setdefault("command", WORKER_COMMAND)
    template = copy.deepcopy(base_job_template["job_configuration"]["job_manifest"])
    manifest: dict[str, Any] = apply_values(template, values)

    container = manifest["spec"]["template"]["spec"]["containers"][0]
    if isinstance(container.get("args"), str):
        container["args"] = shlex.split(container["args"])
    run_env = {"PREFECT__FLOW_RUN_ID": flow_run_id, **env}
    container["env"] = [{"name": name, "value": str(value)} for name, value in run_env.items()]

    metadata = manifest.setdefault("metadata", {})
    version = prefect.__version__.split("+")[0]
    labels = {
        "prefect.io/flow-run-id": flow_run_id,
        "prefect.io/flow-run-name": flow_run_name,
        "prefect.io/version": version,
        "app.kubernetes.io/managed-by": "prefect",
        "app.kubernetes.io/part-of": "prefect",
        "app.kubernetes.io/version": version,
        **(metadata.get("labels") or {}),
    }
    metadata["labels"] = labels
    if not metadata.get("annotations"):
        metadata.pop("annotations", None)
    if metadata.get("generateName", "") in ("", "-", "None-"):
        name = values.get("name") or flow_run_name
        slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:45].strip("-")
        metadata["generateName"] = f"{slug or 'prefect-job'}-"
    pod_metadata = manifest["spec"]["template"].setdefault("metadata", {})
    pod_metadata["labels"] = {**pod_metadata.get("labels", {}), **labels}
    return manifest


# --- Fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_template() -> dict[str, Any]:
    """The repository's base job template of the Kubernetes work pool."""
    return json.loads(JOB_TEMPLATE.read_text(encoding="utf-8"))


@pytest.fixture
def production_job(job_template: dict[str, Any]) -> dict[str, Any]:
    """The Job the worker creates for a flow run of a production deployment."""
    return render_job_manifest(job_template, PRODUCTION_JOB_VARIABLES)


def as_submitted(job: dict[str, Any]) -> dict[str, Any]:
    """Return the Job as the API server keeps it: without Prefect's two misplaced pod fields.

    Prefect's Kubernetes worker requires ``parallelism: 1`` and ``completions: 1`` under
    ``spec.template.spec`` (its manifest check refuses a template without them), where they
    are not PodSpec fields: the API server drops them with an "unknown field" warning, and the
    Job-level defaults (1 and 1) apply. Everything else must pass the strict schema.
    """
    submitted = copy.deepcopy(job)
    pod = submitted["spec"]["template"]["spec"]
    assert pod.pop("parallelism") == 1
    assert pod.pop("completions") == 1
    return submitted


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    """Return the flow-run container of a rendered Job."""
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container


# --- The base job template ----------------------------------------------------------------


def test_job_template_exposes_every_pyflow_job_variable(job_template: dict[str, Any]) -> None:
    """Every job variable pyflow sets is in the template, described, and used by the Job."""
    properties = job_template["variables"]["properties"]
    assert set(properties) >= EXPOSED_VARIABLES
    used = json.dumps(job_template["job_configuration"])
    for name in EXPOSED_VARIABLES:
        assert properties[name].get("description"), name
        assert f"{{{{ {name} }}}}" in used, f"{name} is not used by the job configuration"


def test_job_template_gives_a_default_to_every_variable_but_the_image(
    job_template: dict[str, Any],
) -> None:
    """Every variable has a default except the image, which every flow run must be given."""
    variables = job_template["variables"]
    without_default = {
        name for name in EXPOSED_VARIABLES if "default" not in variables["properties"][name]
    }
    assert without_default == {"image"}
    assert variables["required"] == ["image"]


def test_job_template_defaults_match_the_worker_and_production(
    job_template: dict[str, Any],
) -> None:
    """The defaults suit pyflow: the worker's namespace, no pod retries, production settings."""
    defaults = variable_defaults(job_template)
    assert defaults["namespace"] == "prefect"
    assert defaults["backoff_limit"] == 0
    assert defaults["image_pull_policy"] == "IfNotPresent"
    assert defaults["env"] == {"PREFECT_FLOW_ENV": "production"}
    assert defaults["pod_watch_timeout_seconds"] >= 60
    assert defaults["stream_output"] is True


def test_job_template_accepts_production_job_variables(job_template: dict[str, Any]) -> None:
    """Prefect's check of job variables against the template's schema passes for production."""
    jsonschema.validate(PRODUCTION_JOB_VARIABLES, job_template["variables"])


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"cpu_limit": "two"}, "does not match"),
        ({"memory_request": "4 GB"}, "does not match"),
        ({"image_pull_policy": "Sometimes"}, "is not one of"),
        ({"backoff_limit": -1}, "less than the minimum"),
        ({"env": {"PYFLOW_KEEP_RUNS": 5}}, "is not of type 'string'"),
    ],
)
def test_job_template_refuses_invalid_job_variables(
    job_template: dict[str, Any], variables: dict[str, Any], reason: str
) -> None:
    """A malformed quantity, pull policy, retry count or env value is refused before any run."""
    with pytest.raises(jsonschema.ValidationError, match=reason):
        jsonschema.validate({**PRODUCTION_JOB_VARIABLES, **variables}, job_template["variables"])


def test_job_template_refuses_job_variables_without_an_image(
    job_template: dict[str, Any],
) -> None:
    """A flow run without an image is refused instead of running Prefect's stock image."""
    variables = {k: v for k, v in PRODUCTION_JOB_VARIABLES.items() if k != "image"}
    with pytest.raises(jsonschema.ValidationError, match="'image' is a required property"):
        jsonschema.validate(variables, job_template["variables"])


def test_job_template_keeps_what_the_kubernetes_worker_requires(
    job_template: dict[str, Any],
) -> None:
    """The container is `prefect-job`, its args are `{{ command }}`, and no pull step is added."""
    configuration = job_template["job_configuration"]
    assert configuration["command"] == "{{ command }}"
    pod = configuration["job_manifest"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["name"] == "prefect-job"
    assert container["args"] == "{{ command }}"
    assert "command" not in container
    assert "initContainers" not in pod


# --- The rendered Job ---------------------------------------------------------------------


def test_render_job_manifest_is_a_valid_kubernetes_job(production_job: dict[str, Any]) -> None:
    """The production Job passes the Kubernetes schema, strictly (no unknown fields)."""
    assert kubernetes_validate.validate(
        as_submitted(production_job), KUBERNETES_VERSION, strict=True
    )


def test_render_job_manifest_with_defaults_is_a_valid_kubernetes_job(
    job_template: dict[str, Any],
) -> None:
    """A Job with only an image (every other variable defaulted) is valid too."""
    job = render_job_manifest(job_template, {"image": PRODUCTION_IMAGE})
    assert kubernetes_validate.validate(as_submitted(job), KUBERNETES_VERSION, strict=True)
    assert container_of(job)["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }


def test_render_job_manifest_wires_resources_image_and_account(
    production_job: dict[str, Any],
) -> None:
    """CPU and memory requests and limits, image, namespace and account reach the manifest."""
    container = container_of(production_job)
    assert container["image"] == PRODUCTION_IMAGE
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    assert production_job["metadata"]["namespace"] == "prefect"
    assert production_job["spec"]["template"]["spec"]["serviceAccountName"] == "pyflow"


def test_render_job_manifest_runs_the_worker_command(production_job: dict[str, Any]) -> None:
    """The container runs `prefect flow-run execute` as args, with the image's entrypoint."""
    container = container_of(production_job)
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert "command" not in container


def test_render_job_manifest_keeps_the_types_of_whole_placeholders(
    production_job: dict[str, Any],
) -> None:
    """A placeholder alone in a string takes its value's type: integers stay integers."""
    spec = production_job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 86400
    assert production_job["metadata"]["generateName"] == "crimson-fox-"


def test_render_job_manifest_merges_env_into_a_kubernetes_list(
    production_job: dict[str, Any],
) -> None:
    """The env defaults and the deployment's env become one name/value list, flow run first."""
    env = container_of(production_job)["env"]
    assert env == [
        {"name": "PREFECT__FLOW_RUN_ID", "value": FLOW_RUN_ID},
        {"name": "PREFECT_FLOW_ENV", "value": "production"},
        {"name": "PYFLOW_OUTPUT", "value": "gs://acme-warn/output"},
        {"name": "PYFLOW_TASK_RUNNER", "value": "dask"},
        {"name": "PYFLOW_KEEP_RUNS", "value": "5"},
    ]


def test_render_job_manifest_labels_the_job_and_its_pod(production_job: dict[str, Any]) -> None:
    """The pool's labels and the flow run's labels are on the Job and on its pod."""
    for labels in (
        production_job["metadata"]["labels"],
        production_job["spec"]["template"]["metadata"]["labels"],
    ):
        assert labels["app.kubernetes.io/name"] == "pyflow"
        assert labels["prefect.io/flow-run-id"] == FLOW_RUN_ID


def test_render_job_manifest_runs_as_the_image_user_without_privileges(
    production_job: dict[str, Any],
) -> None:
    """The pod runs as the image's unprivileged user (1000) and may not gain privileges."""
    pod = production_job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert container_of(production_job)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def test_render_job_manifest_drops_unset_optional_fields(job_template: dict[str, Any]) -> None:
    """A variable left unset removes its field, as the worker does: no null in the manifest."""
    template = copy.deepcopy(job_template)
    del template["variables"]["properties"]["finished_job_ttl"]["default"]
    job = render_job_manifest(template, {"image": PRODUCTION_IMAGE})
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert "null" not in json.dumps(job)


def test_kubernetes_validate_refuses_a_broken_job(production_job: dict[str, Any]) -> None:
    """The schema check bites: a misspelt field or a wrongly typed value fails validation."""
    misspelt = as_submitted(production_job)
    container_of(misspelt)["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    mistyped = as_submitted(production_job)
    mistyped["spec"]["backoffLimit"] = "0"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(mistyped, KUBERNETES_VERSION, strict=True)


# --- The prefect-worker Helm values -------------------------------------------------------

API_KEY_SECRET = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
}
QUANTITIES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"cpu": {"type": "string"}, "memory": {"type": "string"}},
}
WORKER_VALUES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["worker"],
    "properties": {
        "worker": {
            "type": "object",
            "additionalProperties": False,
            "required": ["apiConfig", "config", "image"],
            "properties": {
                "apiConfig": {"enum": ["cloud", "selfManagedCloud", "selfHostedServer"]},
                "cloudApiConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "accountId": {"type": "string"},
                        "workspaceId": {"type": "string"},
                        "apiKeySecret": API_KEY_SECRET,
                        "cloudUrl": {"type": "string"},
                    },
                },
                "selfHostedServerApiConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["apiUrl"],
                    "properties": {
                        "apiUrl": {"type": "string", "pattern": "^https?://.+/api$"},
                        "basicAuth": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "enabled": {"type": "boolean"},
                                "existingSecret": {"type": "string"},
                            },
                        },
                    },
                },
                "config": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["workPool"],
                    "properties": {
                        "workPool": {"type": "string", "minLength": 1},
                        "workQueues": {"type": "array", "items": {"type": "string"}},
                        "type": {"const": "kubernetes"},
                        "installPolicy": {"enum": ["always", "if-not-present", "never", "prompt"]},
                        "queryInterval": {"type": "integer"},
                        "prefetchSeconds": {"type": "integer"},
                        "limit": {"type": ["integer", "null"]},
                        "name": {"type": ["string", "null"]},
                    },
                },
                "image": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "repository": {"type": "string"},
                        "prefectTag": {"type": "string"},
                        "pullPolicy": {"enum": ["IfNotPresent", "Always", "Never"]},
                        "pullSecrets": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "livenessProbe": {
                    "type": "object",
                    "properties": {"enabled": {"type": "boolean"}},
                },
                "resources": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"requests": QUANTITIES, "limits": QUANTITIES},
                },
                "replicaCount": {"type": "integer"},
                "clusterUid": {"type": "string"},
            },
        },
        "serviceAccount": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "create": {"type": "boolean"},
                "name": {"type": "string"},
                "annotations": {"type": "object"},
            },
        },
        "role": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"create": {"type": "boolean"}, "extraPermissions": {"type": "array"}},
        },
        "rolebinding": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"create": {"type": "boolean"}},
        },
    },
}
"""The prefect-worker chart's values that pyflow sets, with the types and choices its values
table documents (chart README, `helm-docs`; apiConfig names as of the 2025.3 chart releases).
The chart's own values.schema.json is not available offline."""


def load_values(path: Path) -> dict[str, Any]:
    """Read one Helm values file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", [CLOUD_VALUES, SELF_HOSTED_VALUES], ids=lambda p: p.name)
def test_worker_values_match_the_chart_documented_values(path: Path) -> None:
    """Each values file uses only documented prefect-worker keys, with the documented types."""
    jsonschema.validate(load_values(path), WORKER_VALUES_SCHEMA)


@pytest.mark.parametrize("path", [CLOUD_VALUES, SELF_HOSTED_VALUES], ids=lambda p: p.name)
def test_worker_values_poll_the_production_pool_with_a_kubernetes_worker(path: Path) -> None:
    """The worker polls the production work pool that `invoke pool` creates, as a Kubernetes worker."""
    worker = load_values(path)["worker"]
    assert worker["config"]["workPool"] == ENVIRONMENT_DEFAULTS["production"]["work_pool"]
    assert worker["config"]["type"] == "kubernetes"
    assert "baseJobTemplate" not in worker["config"], "invoke pool manages the template"


@pytest.mark.parametrize("path", [CLOUD_VALUES, SELF_HOSTED_VALUES], ids=lambda p: p.name)
def test_worker_values_run_the_prefect_major_version_pyflow_uses(path: Path) -> None:
    """The worker image is a Kubernetes image of the Prefect major version pyflow is locked to."""
    tag = load_values(path)["worker"]["image"]["prefectTag"]
    assert tag.startswith(f"{prefect.__version__.split('.')[0]}.")
    assert tag.endswith("-kubernetes")


@pytest.mark.parametrize("path", [CLOUD_VALUES, SELF_HOSTED_VALUES], ids=lambda p: p.name)
def test_worker_values_run_in_the_namespace_of_the_jobs(
    path: Path, job_template: dict[str, Any]
) -> None:
    """The values are installed in the namespace the pool's Jobs default to (the worker's Role)."""
    namespace = job_template["variables"]["properties"]["namespace"]["default"]
    assert f"--namespace {namespace}" in path.read_text(encoding="utf-8")


def test_worker_values_for_cloud_read_the_api_key_from_a_secret() -> None:
    """The Prefect Cloud worker reads its API key from an existing secret, never inline."""
    text = CLOUD_VALUES.read_text(encoding="utf-8")
    worker = load_values(CLOUD_VALUES)["worker"]
    assert worker["apiConfig"] == "cloud"
    assert worker["cloudApiConfig"]["apiKeySecret"] == {"name": "prefect-api-key", "key": "key"}
    assert not re.search(r"pnu_[A-Za-z0-9]{8,}", text)
    assert "apiKey:" not in text


def test_worker_values_for_a_self_hosted_server_name_its_api() -> None:
    """The self-hosted variant points at the server's API and keeps credentials in a secret."""
    worker = load_values(SELF_HOSTED_VALUES)["worker"]
    assert worker["apiConfig"] == "selfHostedServer"
    api = worker["selfHostedServerApiConfig"]
    assert api["apiUrl"].endswith("/api")
    assert "authString" not in api["basicAuth"]
    assert "cloudApiConfig" not in worker


def test_worker_values_schema_refuses_an_undocumented_key() -> None:
    """The values check bites: a misspelt or retired chart key is refused."""
    values = load_values(SELF_HOSTED_VALUES)
    values["worker"]["serverApiConfig"] = values["worker"].pop("selfHostedServerApiConfig")
    values["worker"]["apiConfig"] = "server"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, WORKER_VALUES_SCHEMA)


# --- the Dask cluster of the Dask Kubernetes operator ------------------------------------

DASK_CLUSTER = ROOT / "deploy" / "dask-cluster.yaml"


@pytest.fixture(scope="module")
def dask_cluster() -> dict[str, Any]:
    """The DaskCluster resource kept in deploy/."""
    return yaml.safe_load(DASK_CLUSTER.read_text())


def test_dask_cluster_pod_specs_are_valid_kubernetes(dask_cluster: dict[str, Any]) -> None:
    """The operator turns the worker and scheduler specs into pods: each is a valid PodSpec."""
    for part in ("worker", "scheduler"):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"pyflow-dask-{part}"},
            "spec": dask_cluster["spec"][part]["spec"],
        }
        assert kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_dask_cluster_scheduler_service_is_valid_and_reaches_the_scheduler(
    dask_cluster: dict[str, Any],
) -> None:
    """The scheduler's Service is valid, and exposes the port PYFLOW_DASK_ADDRESS names."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "pyflow-dask-scheduler"},
        "spec": dask_cluster["spec"]["scheduler"]["service"],
    }
    assert kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports["tcp-comm"] == 8786
    assert "tcp://pyflow-dask-scheduler.prefect.svc.cluster.local:8786" in DASK_CLUSTER.read_text()
    assert dask_cluster["metadata"]["namespace"] == Settings.model_fields["namespace"].default


def test_dask_cluster_runs_pyflows_image_as_its_user(dask_cluster: dict[str, Any]) -> None:
    """Scheduler and workers run the pyflow image (same code and libraries) as UID 1000."""
    for part in ("worker", "scheduler"):
        spec = dask_cluster["spec"][part]["spec"]
        [container] = spec["containers"]
        assert container["image"].startswith("us-central1-docker.pkg.dev/")
        assert container["args"][:2] == ["dask", part]
        assert spec["securityContext"]["runAsUser"] == 1000
        assert spec["serviceAccountName"] == "pyflow"
