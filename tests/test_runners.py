"""Task runners, and the per-run Dask cluster on Kubernetes: its spec and the manifests it needs.

No cluster runs here: the DaskCluster a flow run creates is checked as data (each pod spec with
kubernetes-validate), and the RBAC and NetworkPolicy in deploy/ the same way.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pytest_mock import MockerFixture

from conftest import ROOT
from pyflow import runners
from pyflow.config import get_settings
from pyflow.errors import SettingsError

KUBERNETES_VERSION = "1.30"
DASK_KUBERNETES = ROOT / "deploy" / "dask-kubernetes.yaml"
IMAGE = "us-central1-docker.pkg.dev/acme/pyflow/pyflow:1.2.3@sha256:" + "ab" * 32


def test_cluster_spec_runs_the_flows_image_on_scheduler_and_workers() -> None:
    """Scheduler and workers run PYFLOW_DASK_IMAGE, as the flow pod's user, valid as pods."""
    settings = get_settings(task_runner="dask-kubernetes", dask_image=IMAGE, dask_workers=3)
    spec = runners.cluster_spec(settings, "pyflow-test", "http://prefect.test/api")
    assert spec["kind"] == "DaskCluster"
    assert spec["metadata"] == {"name": "pyflow-test", "namespace": settings.namespace}
    assert spec["spec"]["worker"]["replicas"] == 3
    for part in ("worker", "scheduler"):
        pod = spec["spec"][part]["spec"]
        [container] = pod["containers"]
        assert container["image"] == IMAGE
        assert container["args"][:2] == ["dask", part]
        assert container["args"][container["args"].index("--preload") + 1] == runners.PRELOAD
        assert pod["securityContext"]["runAsUser"] == 1000
        env = {item["name"]: item for item in container["env"]}
        assert env["PREFECT_API_URL"]["value"] == "http://prefect.test/api"
        assert "value" not in env["PREFECT_API_KEY"], "the key comes from a secret, never inline"
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": part}, "spec": pod}
        assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    service = spec["spec"]["scheduler"]["service"]
    assert service["selector"] == {
        "dask.org/cluster-name": "pyflow-test",
        "dask.org/component": "scheduler",
    }


def test_cluster_spec_needs_the_image() -> None:
    """Without PYFLOW_DASK_IMAGE there is nothing to run: the message says a release sets it."""
    settings = get_settings(task_runner="dask-kubernetes")
    with pytest.raises(SettingsError, match="needs PYFLOW_DASK_IMAGE"):
        runners.cluster_spec(settings, "pyflow-test", "")


def test_build_task_runner_makes_the_cluster_when_a_run_starts() -> None:
    """dask-kubernetes: the runner creates the run's own cluster at its start, not at import."""
    from prefect_dask.task_runners import DaskTaskRunner

    runner = runners.build_task_runner(get_settings(task_runner="dask-kubernetes"))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_class == "pyflow.runners.per_run_cluster"
    assert runner.address is None


def test_build_task_runner_follows_the_settings() -> None:
    """Threads, a local cluster sized by the settings, or a running cluster's address."""
    from dask.system import cpu_count
    from prefect.task_runners import ThreadPoolTaskRunner

    assert isinstance(runners.build_task_runner(get_settings()), ThreadPoolTaskRunner)
    local = runners.build_task_runner(get_settings(task_runner="dask"))
    assert local.cluster_kwargs["n_workers"] == cpu_count()
    sized = runners.build_task_runner(get_settings(task_runner="dask", dask_workers=3))
    assert sized.cluster_kwargs["n_workers"] == 3
    remote = runners.build_task_runner(
        get_settings(task_runner="dask", dask_address="tcp://10.0.0.5:8786")
    )
    assert remote.address == "tcp://10.0.0.5:8786"


def manifests() -> dict[str, dict[str, Any]]:
    """The manifests of deploy/dask-kubernetes.yaml, by kind (the policies by name)."""
    found = {}
    for doc in yaml.safe_load_all(DASK_KUBERNETES.read_text()):
        key = doc["metadata"]["name"] if doc["kind"] == "NetworkPolicy" else doc["kind"]
        found[key] = doc
    return found


def test_dask_kubernetes_manifests_are_valid_kubernetes() -> None:
    """The Role, RoleBinding and NetworkPolicy validate (kubernetes-validate, strict)."""
    found = manifests()
    assert set(found) == {"Role", "RoleBinding", "pyflow-dask-scheduler", "pyflow-dask-workers"}
    for manifest in found.values():
        assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        assert manifest["metadata"]["namespace"] == get_settings().namespace


def test_dask_kubernetes_role_lets_the_flow_runs_account_manage_dask_clusters_only() -> None:
    """The flow-run pods' service account may manage DaskClusters, and only read pods."""
    found = manifests()
    [subject] = found["RoleBinding"]["subjects"]
    assert subject["name"] == get_settings().service_account
    rules = {rule["apiGroups"][0]: rule for rule in found["Role"]["rules"]}
    assert "daskclusters" in rules["kubernetes.dask.org"]["resources"]
    assert set(rules[""]["verbs"]) == {"get", "list", "watch"}


def test_network_policy_lets_only_flow_runs_and_workers_reach_the_scheduler() -> None:
    """Only flow-run pods and Dask workers may reach a scheduler's port; all else is refused."""
    policy = manifests()["pyflow-dask-scheduler"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"dask.org/component": "scheduler"}}
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": runners.SCHEDULER_PORT}]
    allowed = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    assert allowed == [{"pyflow.io/role": "flow-run"}, {"dask.org/component": "worker"}]
    assert all(set(peer) == {"podSelector"} for peer in rule["from"]), "same namespace only"


def test_job_template_labels_flow_run_pods_for_the_network_policy() -> None:
    """The pods of flow-run Jobs carry the label the NetworkPolicy lets in."""
    import json

    template = json.loads((ROOT / "deploy" / "kubernetes-job-template.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]
    assert pod["metadata"]["labels"] == {"pyflow.io/role": "flow-run"}


def test_release_image_reaches_the_cluster_the_flow_run_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A production deployment's pod environment makes the run's Dask cluster use its image."""
    from pyflow import deploy

    for name, value in {
        "PREFECT_FLOW_ENV": "production",
        "PYFLOW_OUTPUT": "gs://acme-warn/notices",
        "PYFLOW_GCP_PROJECT": "acme",
        "PYFLOW_TASK_RUNNER": "dask-kubernetes",
    }.items():
        monkeypatch.setenv(name, value)
    released = deploy.released_settings(get_settings(), IMAGE)
    pod_env = deploy.job_variables(released)["env"]
    assert pod_env["PYFLOW_DASK_IMAGE"] == IMAGE
    for name, value in pod_env.items():
        monkeypatch.setenv(name, value)
    spec = runners.cluster_spec(get_settings(), "pyflow-run", "")
    images = {
        spec["spec"][part]["spec"]["containers"][0]["image"] for part in ("worker", "scheduler")
    }
    assert images == {IMAGE}


def test_dask_kubernetes_file_is_applied_in_the_readme() -> None:
    """The README says how to apply the manifests (the file's own header says the same)."""
    readme = (ROOT / "README.md").read_text()
    assert "kubectl apply -n prefect -f deploy/dask-kubernetes.yaml" in readme
    assert Path(DASK_KUBERNETES).read_text().count("kubectl apply -n prefect") == 1


def test_network_policy_lets_only_flow_runs_and_the_cluster_reach_a_worker() -> None:
    """A worker runs any function sent to it: only flow runs and Dask pods may reach it."""
    policy = manifests()["pyflow-dask-workers"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"dask.org/component": "worker"}}
    [rule] = policy["ingress"]
    assert "ports" not in rule
    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [
        {"pyflow.io/role": "flow-run"},
        {"dask.org/component": "scheduler"},
        {"dask.org/component": "worker"},
    ]


def test_cluster_spec_names_the_ports_the_operator_looks_up() -> None:
    """KubeCluster finds the scheduler's comm and dashboard ports on its Service, by name."""
    from dask_kubernetes.operator.networking import _get_port

    settings = get_settings(task_runner="dask-kubernetes", dask_image=IMAGE)
    service = runners.cluster_spec(settings, "pyflow-test", "")["spec"]["scheduler"]["service"]

    from types import SimpleNamespace

    ports = [SimpleNamespace(name=p["name"], port=p["port"]) for p in service["ports"]]
    found = SimpleNamespace(metadata=SimpleNamespace(name="pyflow-test-scheduler"))
    found.spec = SimpleNamespace(ports=ports)  # as kr8s gives the operator the Service

    assert _get_port(found, "tcp-comm") == runners.SCHEDULER_PORT
    assert _get_port(found, "http-dashboard") == runners.DASHBOARD_PORT


def test_cluster_spec_follows_the_pods_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Namespace, account and sizes set for the flow-run pods reach its cluster through the pod."""
    from pyflow import deploy

    monkeypatch.setenv("PYFLOW_NAMESPACE", "data")
    monkeypatch.setenv("PYFLOW_SERVICE_ACCOUNT", "etl")
    monkeypatch.setenv("PYFLOW_CPU_LIMIT", "8")
    pod_env = deploy.job_variables(deploy.released_settings(get_settings(), IMAGE))["env"]
    monkeypatch.delenv("PYFLOW_NAMESPACE")
    monkeypatch.delenv("PYFLOW_SERVICE_ACCOUNT")
    monkeypatch.delenv("PYFLOW_CPU_LIMIT")
    for name, value in pod_env.items():
        monkeypatch.setenv(name, value)
    spec = runners.cluster_spec(get_settings(), "pyflow-run", "")
    assert spec["metadata"]["namespace"] == "data"
    worker = spec["spec"]["worker"]["spec"]
    assert worker["serviceAccountName"] == "etl"
    assert worker["containers"][0]["resources"]["limits"]["cpu"] == "8"


def test_preload_shares_one_tls_context_per_ca_file(
    monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture
) -> None:
    """Prefect's clients load their CA file once in all, not once each, once the preload applies."""
    import prefect.client.orchestration
    from prefect.client.orchestration import SyncPrefectClient

    from pyflow import preload

    monkeypatch.setattr(prefect.client.orchestration, "ssl", ssl)
    preload._verified_context.cache_clear()
    made = mocker.spy(ssl, "create_default_context")
    SyncPrefectClient("http://127.0.0.1:9/api")
    assert made.call_count == 1
    assert preload.share_tls_contexts()
    clients = [SyncPrefectClient("http://127.0.0.1:9/api") for _ in range(3)]
    assert made.call_count == 2
    assert made.call_args.kwargs["cafile"] is not None
    assert len({id(client._client._transport._pool._ssl_context) for client in clients}) == 1


def test_preload_keeps_a_profiler_the_configuration_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DASK_ variable (or YAML file) that sets the profiler wins over the preload's default."""
    from pyflow import preload

    assert not preload.profiler_configured()
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "true")
    assert preload.profiler_configured()
