"""Task runners: where a flow run's tasks run, chosen by the settings with no code change.

- ``threads``: Prefect's thread pool, in the flow run's process.
- ``dask``: a local Dask cluster in the flow run's process (in a pod, one worker per CPU of its
  limit), or the running cluster at ``PYFLOW_DASK_ADDRESS``.
- ``dask-kubernetes``: a Dask cluster of the flow run's own, created on Kubernetes by the Dask
  operator when the run starts and deleted when it ends. Its scheduler and workers run
  ``PYFLOW_DASK_IMAGE``, which a release sets to the image it deploys, by digest: the workers
  never run other code than the flow. Their pods are as locked down as the flow run's (the
  ``restricted`` Pod Security level, a read-only image, no service-account token, and no
  Prefect API key in their spec or environment). The key still reaches the workers: every
  task carries the flow run's ``serialize_context()``, whose settings include it, over Dask's
  unencrypted (plain TCP) messages from the flow-run pod through the scheduler, and the
  workers hold it in memory. ``deploy/dask-kubernetes.yaml``'s NetworkPolicies limit who may
  connect to the scheduler and workers (flow-run pods and the cluster's own pods), not who
  can watch that traffic on the cluster's network.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflow_kit.errors import SettingsError

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

    from pyflow_kit.settings import Settings

SCHEDULER_PORT = 8786
"""The Dask scheduler's port, which flow-run pods and workers connect to."""

DASHBOARD_PORT = 8787
"""The scheduler's HTTP port: the operator looks its Service port up by name to reach it."""

WORKER_HTTP_PORT = 8788
"""A worker's HTTP port, where the kubelet checks its ``/health`` (as KubeCluster's own spec)."""

IMAGE_USER = 1000
"""The image's unprivileged user and group (the Dockerfile's ``pyflow``), which the pods run as."""

WRITABLE_FOLDERS = {"tmp": "/tmp", "home": "/home/pyflow"}  # noqa: S108 (a pod's own emptyDir)
"""What a pod may write, each an emptyDir volume by name: the image itself is read-only.

``/tmp`` takes temporary files and Dask's scratch and spill space; the home holds Prefect's
(``PREFECT_HOME``), which Prefect creates as it starts. The job template
(the kit's ``kubernetes-job-template.json``) gives the flow-run pod the same two.
"""

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
"""Where Kubernetes mounts a pod's service-account token, when the pod asks for one."""

PRELOAD = "pyflow_kit.preload"
ENGINE_THREADS = (
    "POLARS_MAX_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)
"""What native engines size their thread pools by: a local worker's engines get its threads, so
the workers of one machine do not fight over its cores."""
"""The module Dask schedulers and workers preload (``--preload``): it warms them as they start."""


def health_probes(port: str) -> dict[str, Any]:
    """Return the readiness and liveness probes of a Dask process's HTTP ``/health``.

    Ready as soon as it answers (the scheduler's Service sends nothing before, and KubeCluster
    waits for it); restarted only after a minute without an answer, since a busy worker can be
    slow to reply.
    """
    check = {"httpGet": {"path": "/health", "port": port}, "timeoutSeconds": 10}
    return {
        "readinessProbe": {**check, "periodSeconds": 2},
        "livenessProbe": {
            **check,
            "initialDelaySeconds": 15,
            "periodSeconds": 20,
            "failureThreshold": 3,
        },
    }


def dask_pod(
    settings: Settings,
    image: str,
    role: str,
    args: list[str],
    api_url: str,
    ports: dict[str, int],
) -> dict[str, Any]:
    """Return the pod spec of a per-run cluster's scheduler or workers, at Pod Security `restricted`.

    The flow pod's image, user, service account (its Workload Identity writes to the bucket)
    and sizes; no service-account token, since nothing in the pod calls the Kubernetes API; and
    no Prefect API key in the spec: every task a flow run sends brings the run's Prefect
    settings, key included (Prefect's ``serialize_context``), so only the API's URL is set here
    (the key reaches the process with the tasks; see the module's docstring).
    """
    resources = {
        "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
        "limits": {"cpu": settings.cpu_limit, "memory": settings.memory_limit},
    }
    return {
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_USER,
            "runAsGroup": IMAGE_USER,
            "fsGroup": IMAGE_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": role,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "env": [{"name": "PREFECT_API_URL", "value": api_url}],
                "ports": [
                    {"name": port_name, "containerPort": port, "protocol": "TCP"}
                    for port_name, port in ports.items()
                ],
                **health_probes("http-dashboard"),
                "resources": resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
                "volumeMounts": [
                    {"name": name, "mountPath": path} for name, path in WRITABLE_FOLDERS.items()
                ],
            }
        ],
        "volumes": [{"name": name, "emptyDir": {}} for name in WRITABLE_FOLDERS],
    }


def cluster_spec(settings: Settings, name: str, api_url: str) -> dict[str, Any]:
    """Return the DaskCluster a flow run creates: scheduler and workers on the flow's image.

    Raises:
        SettingsError: If PYFLOW_DASK_IMAGE is unset (a release sets it).
    """
    image = settings.dask_image
    if not image:
        raise SettingsError(
            "PYFLOW_TASK_RUNNER=dask-kubernetes needs PYFLOW_DASK_IMAGE, the image of the "
            "cluster's pods: `invoke release` sets it to the image it deploys"
        )
    worker_args = [
        "dask",
        "worker",
        "--name",
        "$(DASK_WORKER_NAME)",
        "--nthreads",
        str(settings.dask_threads),
    ]
    worker_args += ["--dashboard-address", str(WORKER_HTTP_PORT), "--preload", PRELOAD]
    scheduler_args = ["dask", "scheduler", "--host", "0.0.0.0"]  # noqa: S104 (inside its pod)
    scheduler_args += ["--preload", PRELOAD]
    worker_ports = {"http-dashboard": WORKER_HTTP_PORT}
    scheduler_ports = {"tcp-comm": SCHEDULER_PORT, "http-dashboard": DASHBOARD_PORT}
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name, "namespace": settings.namespace},
        "spec": {
            "worker": {
                "replicas": settings.dask_workers or 2,
                "spec": dask_pod(settings, image, "worker", worker_args, api_url, worker_ports),
            },
            "scheduler": {
                "spec": dask_pod(
                    settings, image, "scheduler", scheduler_args, api_url, scheduler_ports
                ),
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [
                        {"name": port_name, "protocol": "TCP", "port": port, "targetPort": port}
                        for port_name, port in scheduler_ports.items()
                    ],
                },
            },
        },
    }


def per_run_cluster(**kwargs: Any) -> Any:
    """Create the flow run's own Dask cluster on Kubernetes (DaskTaskRunner calls it at start).

    Raises:
        SettingsError: If PYFLOW_DASK_IMAGE is unset, or the pod has no service-account token.
    """
    from dask_kubernetes.operator import KubeCluster
    from prefect.settings import PREFECT_API_URL

    from pyflow_kit.settings import get_settings

    require_api_token()
    settings = get_settings()
    name = f"pyflow-{uuid.uuid4().hex[:8]}"
    spec = cluster_spec(settings, name, PREFECT_API_URL.value() or "")
    return KubeCluster(custom_cluster_spec=spec, namespace=settings.namespace, **kwargs)


def require_api_token() -> None:
    """Check that a flow run in a pod can reach the Kubernetes API, to create its Dask cluster.

    Flow-run pods get a service-account token only when their deployment asks for it (the job
    variable ``automount_service_account_token``, which `invoke deploy` sets for this runner).

    Raises:
        SettingsError: If this runs in a pod without a token (and without a kubeconfig).
    """
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if in_pod and not os.environ.get("KUBECONFIG") and not SERVICE_ACCOUNT_TOKEN.exists():
        raise SettingsError(
            "PYFLOW_TASK_RUNNER=dask-kubernetes creates the run's Dask cluster through the "
            "Kubernetes API, but this pod has no service-account token: set the job variable "
            "automount_service_account_token to true for the run (`invoke deploy` sets it on "
            "deployments whose PYFLOW_TASK_RUNNER is dask-kubernetes)"
        )


def build_task_runner(settings: Settings) -> TaskRunner[Any]:
    """Create the task runner the settings choose (a per-run cluster is made when a run starts)."""
    if settings.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=settings.thread_workers)
    from prefect_dask.task_runners import DaskTaskRunner

    if settings.task_runner == "dask-kubernetes":
        return DaskTaskRunner(cluster_class="pyflow_kit.runners.per_run_cluster")
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    from dask.system import cpu_count  # affinity and the cgroup (a pod's) CPU limit

    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.dask_workers or cpu_count(),
            "threads_per_worker": settings.dask_threads,
            "processes": True,
            "dashboard_address": None,
            "env": {name: str(settings.dask_threads) for name in ENGINE_THREADS},
            "preload": [PRELOAD],
        }
    )
