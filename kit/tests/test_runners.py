"""Task runners, and the per-run Dask cluster on Kubernetes: its spec and the manifests it needs.

No cluster runs here: the DaskCluster a flow run creates is checked as data (each pod spec with
kubernetes-validate), and the RBAC and NetworkPolicy in deploy/ the same way. The Role is
checked against the calls KubeCluster really makes, recorded by a stand-in Kubernetes API.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from pytest_mock import MockerFixture

from conftest import TEMPLATE, VENV_BIN
from pyflow_kit import deploy, runners
from pyflow_kit.errors import SettingsError
from pyflow_kit.settings import get_settings

KUBERNETES_VERSION = "1.30"
DASK_KUBERNETES = TEMPLATE / "deploy" / "dask-kubernetes.yaml"
NETWORK_POLICIES = TEMPLATE / "deploy" / "network-policies.yaml"
JOB_TEMPLATE = deploy.KIT_JOB_TEMPLATE
IMAGE = "us-central1-docker.pkg.dev/acme/pyflow/pyflow:1.2.3@sha256:" + "ab" * 32


def cluster_pods(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return a DaskCluster's two pod specs, by part: ``worker`` and ``scheduler``."""
    return {part: spec["spec"][part]["spec"] for part in ("worker", "scheduler")}


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
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": part}, "spec": pod}
        assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    service = spec["spec"]["scheduler"]["service"]
    assert service["selector"] == {
        "dask.org/cluster-name": "pyflow-test",
        "dask.org/component": "scheduler",
    }


def test_cluster_spec_puts_no_token_and_no_prefect_key_in_dask_pods() -> None:
    """Scheduler and workers get no service-account token, and no Prefect key in spec or env."""
    settings = get_settings(task_runner="dask-kubernetes", dask_image=IMAGE)
    spec = runners.cluster_spec(settings, "pyflow-test", "https://api.prefect.test/api")
    for pod in cluster_pods(spec).values():
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == settings.service_account, "Workload Identity: GCS"
        [container] = pod["containers"]
        assert [item["name"] for item in container["env"]] == ["PREFECT_API_URL"]
        assert "envFrom" not in container
        mounted = {volume["name"] for volume in pod["volumes"]}
        assert all(set(volume) == {"name", "emptyDir"} for volume in pod["volumes"]), mounted


def test_dask_tasks_bring_the_flow_runs_prefect_credentials() -> None:
    """A task sent to a Dask worker carries the flow run's API URL and key: its pod sets neither.

    prefect-dask sends each task with `serialize_context()` and the worker runs it inside
    `hydrated_context()`; the worker's own environment has no key (as a Dask pod's has none),
    but the key is in what crosses the wire, in clear in the task's message.
    """
    from prefect.context import hydrated_context, serialize_context
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    run_settings = {PREFECT_API_URL: "https://api.prefect.test/api", PREFECT_API_KEY: "pnu_test"}
    with temporary_settings(updates=run_settings):
        sent = json.loads(json.dumps(serialize_context(), default=str))  # what crosses the wire
    assert "pnu_test" in json.dumps(sent)
    assert PREFECT_API_KEY.value() != "pnu_test"
    with hydrated_context(sent):
        assert PREFECT_API_URL.value() == "https://api.prefect.test/api"
        assert PREFECT_API_KEY.value() == "pnu_test"


def test_cluster_spec_pods_are_locked_down_as_the_flow_run_pod() -> None:
    """Dask pods run with the flow-run pod's user, seccomp, read-only image and writable folders."""
    template = json.loads(JOB_TEMPLATE.read_text(encoding="utf-8"))
    job_pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    [job_container] = job_pod["containers"]
    settings = get_settings(task_runner="dask-kubernetes", dask_image=IMAGE)
    for part, pod in cluster_pods(runners.cluster_spec(settings, "pyflow-test", "")).items():
        [container] = pod["containers"]
        assert pod["securityContext"] == job_pod["securityContext"], part
        assert container["securityContext"] == job_container["securityContext"], part
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["volumes"] == job_pod["volumes"], part
        assert container["volumeMounts"] == job_container["volumeMounts"], part
    mounts = {mount["mountPath"] for mount in job_container["volumeMounts"]}
    assert mounts == set(runners.WRITABLE_FOLDERS.values())


def test_cluster_spec_probes_the_ports_its_pods_open() -> None:
    """Each pod's health probes name a port it declares, the one its Dask process serves HTTP on."""
    settings = get_settings(task_runner="dask-kubernetes", dask_image=IMAGE)
    pods = cluster_pods(runners.cluster_spec(settings, "pyflow-test", ""))
    for part, pod in pods.items():
        [container] = pod["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            check = container[probe]["httpGet"]
            assert check["path"] == "/health"
            assert check["port"] in ports, (part, probe)
    [worker] = pods["worker"]["containers"]
    served = worker["args"][worker["args"].index("--dashboard-address") + 1]
    assert int(served) == runners.WORKER_HTTP_PORT
    assert {p["containerPort"] for p in worker["ports"]} == {runners.WORKER_HTTP_PORT}
    [scheduler] = pods["scheduler"]["containers"]
    assert {p["containerPort"] for p in scheduler["ports"]} == {
        runners.SCHEDULER_PORT,
        runners.DASHBOARD_PORT,
    }


def test_per_run_cluster_explains_a_pod_without_a_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In a pod given no token, the run stops with the job variable to set, before any API call."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(runners, "SERVICE_ACCOUNT_TOKEN", tmp_path / "token")
    monkeypatch.setenv("PYFLOW_TASK_RUNNER", "dask-kubernetes")
    monkeypatch.setenv("PYFLOW_DASK_IMAGE", IMAGE)
    with pytest.raises(SettingsError, match="set the job variable automount_service_account_token"):
        runners.per_run_cluster()
    (tmp_path / "token").write_text("a token")
    runners.require_api_token()  # mounted: nothing to say


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
    assert runner.cluster_class == "pyflow_kit.runners.per_run_cluster"
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


def manifests(path: Path = DASK_KUBERNETES) -> dict[str, dict[str, Any]]:
    """The manifests of a file in deploy/, by kind (the policies by name)."""
    found = {}
    for doc in yaml.safe_load_all(path.read_text()):
        key = doc["metadata"]["name"] if doc["kind"] == "NetworkPolicy" else doc["kind"]
        found[key] = doc
    return found


def test_dask_kubernetes_manifests_are_valid_kubernetes() -> None:
    """The Role, RoleBinding and NetworkPolicies validate (kubernetes-validate, strict)."""
    found = manifests()
    assert set(found) == {
        "Role",
        "RoleBinding",
        "pyflow-dask-scheduler",
        "pyflow-dask-workers",
        "pyflow-dask-egress",
    }
    for manifest in found.values():
        assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        assert "namespace" not in manifest["metadata"], "kubectl apply -n NAMESPACE chooses it"


Grant = tuple[str, str, str]
"""What an RBAC rule allows: (API group, resource, verb)."""


def granted(role: dict[str, Any]) -> set[Grant]:
    """Return every (group, resource, verb) a Role's rules allow (no wildcards, no names)."""
    grants: set[Grant] = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule, "a run's cluster has a new name each time"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.update((group, resource, verb) for verb in rule["verbs"])
    assert not any("*" in part for grant in grants for part in grant)
    return grants


def bound_accounts(binding: dict[str, Any], namespace: str) -> set[str]:
    """Return the service accounts a RoleBinding created in ``namespace`` gives its Role to.

    As Kubernetes' RBAC authorizer reads a subject (``appliesToUser``, in
    pkg/registry/rbac/validation/rule.go): a ServiceAccount naming no namespace is the one in
    the binding's own namespace. The user names are those of the accounts' tokens.
    """
    return {
        f"system:serviceaccount:{subject.get('namespace') or namespace}:{subject['name']}"
        for subject in binding["subjects"]
        if subject["kind"] == "ServiceAccount"
    }


def test_dask_kubernetes_binding_grants_the_account_of_the_namespace_it_is_applied_in() -> None:
    """Applied with `-n`, the Role goes to that namespace's flow-run account, never another's."""
    found = manifests()
    binding, account = found["RoleBinding"], get_settings().service_account
    for namespace in ("prefect", "prefect-previews"):
        granted_to = bound_accounts(binding, namespace)
        assert granted_to == {f"system:serviceaccount:{namespace}:{account}"}, namespace
    role = found["Role"]["metadata"]["name"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role,
    }


def test_dask_kubernetes_role_writes_nothing_but_dask_clusters() -> None:
    """The flow-run account may create and delete DaskClusters and read their parts, no more."""
    found = manifests()
    [subject] = found["RoleBinding"]["subjects"]
    assert subject["name"] == get_settings().service_account
    writes = {g for g in granted(found["Role"]) if g[2] not in {"get", "list", "watch"}}
    assert writes == {
        ("kubernetes.dask.org", "daskclusters", "create"),
        ("kubernetes.dask.org", "daskclusters", "delete"),
    }


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

    template = json.loads(deploy.KIT_JOB_TEMPLATE.read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]
    assert pod["metadata"]["labels"] == {"pyflow.io/role": "flow-run"}


def test_release_image_reaches_the_cluster_the_flow_run_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A production deployment's pod environment makes the run's Dask cluster use its image."""
    from pyflow_kit import deploy

    for name, value in {
        "PREFECT_FLOW_ENV": "production",
        "PYFLOW_OUTPUT": "gs://acme-data/notices",
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
    """The kit's README says how to apply the manifests (the file's own header says the same)."""
    readme = (TEMPLATE / "kit" / "README.md").read_text()
    assert "kubectl apply -n prefect -f deploy/dask-kubernetes.yaml" in readme
    assert "kubectl apply -n prefect-previews -f deploy/dask-kubernetes.yaml" in readme
    assert Path(DASK_KUBERNETES).read_text().count("kubectl apply -n prefect ") == 1


def test_network_policy_lets_dask_pods_reach_each_other_and_what_flow_runs_reach() -> None:
    """Schedulers and workers reach one another, and outside only what flow-run pods reach."""
    policy = manifests()["pyflow-dask-egress"]["spec"]
    assert policy["policyTypes"] == ["Egress"]
    dask_pods = {"key": "dask.org/component", "operator": "In", "values": ["scheduler", "worker"]}
    assert policy["podSelector"] == {"matchExpressions": [dask_pods]}
    first, *outside = policy["egress"]
    assert first == {"to": [{"podSelector": {"matchExpressions": [dask_pods]}}]}
    flow_runs = manifests(NETWORK_POLICIES)["pyflow-flow-runs"]["spec"]["egress"]
    dask_cluster = [rule for rule in flow_runs if "dask.org/component" in json.dumps(rule)]
    assert len(dask_cluster) == 2, "the scheduler's port, and the workers"
    assert outside == [rule for rule in flow_runs if rule not in dask_cluster]


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
    from pyflow_kit import deploy

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

    from pyflow_kit import preload

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
    from pyflow_kit import preload

    assert not preload.profiler_configured()
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "true")
    assert preload.profiler_configured()


# --- The Role, against the calls KubeCluster makes -----------------------------------------


@dataclass
class FakeKubernetesApi:
    """A stand-in Kubernetes API on loopback: it keeps DaskClusters and records every call.

    The operator is played by the API itself: a DaskCluster is Running as soon as it is
    created, with its Service and a worker group, and a scheduler pod that is ready after
    ``STARTUP_SECONDS`` (long enough for KubeCluster to check every part's status once).
    """

    url: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: float = 0.0

    def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Return the status and body the API answers a call with."""
        parts = path.strip("/").split("/")
        if "namespaces" not in parts:
            found = DISCOVERY.get("/".join(parts))
            return (200, found) if found else (404, not_found())
        resource, name = [*parts[parts.index("namespaces") + 2 :], ""][:2]
        if resource == "daskclusters" and method == "POST":
            self.clusters[body["metadata"]["name"]] = {**body, "status": {"phase": "Running"}}
            self.created = time.monotonic()
            return 201, self.clusters[body["metadata"]["name"]]
        if resource == "daskclusters" and method == "DELETE":
            self.clusters.pop(name, None)
            return 200, {}
        cluster = next(iter(self.clusters), "")
        kept: dict[str, list[dict[str, Any]]] = {
            "daskclusters": list(self.clusters.values()),
            "pods": [scheduler_pod(cluster, time.monotonic() - self.created)] if cluster else [],
            "services": [scheduler_service(self.clusters[cluster])] if cluster else [],
            "daskworkergroups": [{"metadata": {"name": f"{cluster}-default"}}] if cluster else [],
        }
        items = kept.get(resource, [])
        if not name:
            return 200, {"kind": "List", "items": items}
        named = [item for item in items if item["metadata"]["name"] == name]
        return (200, named[0]) if named else (404, not_found())

    def request_grants(self) -> set[Grant]:
        """Return the (group, resource, verb) each recorded resource call needs."""
        verbs = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}
        needed = set()
        for method, path in self.calls:
            parts = path.strip("/").split("/")
            if "namespaces" not in parts:
                continue
            group = "" if parts[0] == "api" else parts[1]
            resource, *rest = parts[parts.index("namespaces") + 2 :]
            if len(rest) > 1:  # a subresource, such as pods/log
                resource = f"{resource}/{rest[1]}"
            verb = verbs.get(method) or ("get" if rest else "list")
            needed.add((group, resource, verb))
        return needed


DISCOVERY: dict[str, dict[str, Any]] = {
    "version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0"},
    "api": {"versions": ["v1"]},
    "api/v1": {
        "resources": [
            {"name": plural, "singularName": plural[:-1], "kind": kind, "namespaced": True}
            for plural, kind in (("pods", "Pod"), ("services", "Service"))
        ]
    },
    "apis": {"groups": []},
}
"""What the API says about itself (every authenticated account may read it), as kr8s reads it."""


def not_found() -> dict[str, Any]:
    """Return the API's answer for something that is not there."""
    return {"kind": "Status", "code": 404, "message": "not found"}


STARTUP_SECONDS = 2.0
"""How long the stand-in's scheduler pod takes to be ready, as a real one takes a while."""


def scheduler_pod(cluster: str, age: float) -> dict[str, Any]:
    """Return the scheduler pod the operator would have made for a cluster, ready once started."""
    labels = {"dask.org/cluster-name": cluster, "dask.org/component": "scheduler"}
    if age < STARTUP_SECONDS:
        return {"metadata": {"name": f"{cluster}-scheduler-0", "labels": labels},
                "status": {"phase": "Pending"}}  # fmt: skip
    ready = [{"type": kind, "status": "True"} for kind in ("Ready", "ContainersReady")]
    return {
        "metadata": {"name": f"{cluster}-scheduler-0", "labels": labels},
        "status": {"phase": "Running", "conditions": ready},
    }


def scheduler_service(cluster: dict[str, Any]) -> dict[str, Any]:
    """Return the scheduler Service the operator would have made from a DaskCluster."""
    name = f"{cluster['metadata']['name']}-scheduler"
    namespace = cluster["metadata"]["namespace"]
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": cluster["spec"]["scheduler"]["service"],
    }


@pytest.fixture
def fake_kubernetes_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeKubernetesApi]:
    """Serve the stand-in API on loopback, with a kubeconfig (KUBECONFIG) pointing at it."""
    api = FakeKubernetesApi()

    class Handler(BaseHTTPRequestHandler):
        def handle_call(self) -> None:
            path = urlparse(self.path).path
            api.calls.append((self.command, path))
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            status, answer = api.answer(self.command, path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = handle_call

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    namespace = get_settings().namespace
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
        ],
        "users": [{"name": "fake", "user": {}}],
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    yield api
    server.shutdown()
    server.server_close()


@pytest.fixture
def dask_scheduler(tmp_path: Path) -> Iterator[str]:
    """Run a real Dask scheduler on loopback, as the cluster's pod would; yield its address."""
    info = tmp_path / "scheduler.json"
    process = subprocess.Popen(
        [str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(info)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the Dask scheduler did not start")
            time.sleep(0.1)
        yield json.loads(info.read_text())["address"]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_dask_kubernetes_role_allows_what_kubecluster_does_for_a_run(
    fake_kubernetes_api: FakeKubernetesApi,
    dask_scheduler: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run's whole cluster life (create, wait, connect, delete) needs only what the Role grants.

    The task runner starts and stops its cluster through the stand-in API; only the scheduler's
    address is given (in a pod, it is the Service's name). The one grant it does not use,
    reading pods' logs, serves KubeCluster's report of a scheduler that fails to start.
    """
    from dask_kubernetes.operator import networking

    async def service_address(*args: Any, **kwargs: Any) -> str:
        return dask_scheduler

    monkeypatch.setattr(networking, "get_external_address_for_scheduler_service", service_address)
    monkeypatch.setenv("PYFLOW_TASK_RUNNER", "dask-kubernetes")
    monkeypatch.setenv("PYFLOW_DASK_IMAGE", IMAGE)
    from prefect_dask.task_runners import DaskTaskRunner

    runner = runners.build_task_runner(get_settings())
    assert isinstance(runner, DaskTaskRunner)
    with runner:
        assert runner.client.scheduler_info()["address"] == dask_scheduler
    assert fake_kubernetes_api.clusters == {}, "the run's cluster is deleted when it ends"
    needed = fake_kubernetes_api.request_grants()
    assert ("kubernetes.dask.org", "daskclusters", "create") in needed
    role = granted(manifests()["Role"])
    assert needed <= role, f"the Role lacks {sorted(needed - role)}"
    assert role - needed == {("", "pods/log", "get")}
    elsewhere = {
        path.strip("/") for _, path in fake_kubernetes_api.calls if "/namespaces/" not in path
    }
    assert elsewhere <= set(DISCOVERY), "outside the namespace, only discovery"
