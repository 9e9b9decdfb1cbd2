"""Task runners: where a flow run's tasks run, chosen by the settings with no code change.

- ``threads``: Prefect's thread pool, in the flow run's process.
- ``dask``: a local Dask cluster in the flow run's process (in a pod, one worker per CPU of its
  limit), or the running cluster at ``PYFLOW_DASK_ADDRESS``.
- ``dask-kubernetes``: a Dask cluster of the flow run's own, created on Kubernetes by the Dask
  operator when the run starts and deleted when it ends. Its scheduler and workers run
  ``PYFLOW_DASK_IMAGE``, which a release sets to the image it deploys, by digest: the workers
  never run other code than the flow. (``deploy/dask-kubernetes.yaml``'s NetworkPolicies let only
  flow-run pods and the cluster's own pods reach its scheduler and workers.)
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from pyflow.errors import SettingsError

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

    from pyflow.config import Settings

SCHEDULER_PORT = 8786
"""The Dask scheduler's port, which flow-run pods and workers connect to."""

DASHBOARD_PORT = 8787
"""The scheduler's HTTP port: the operator looks its Service port up by name to reach it."""

API_KEY_SECRET = {"name": "prefect-api-key", "key": "key"}
"""The Kubernetes secret holding PREFECT_API_KEY, as the worker's Helm values name it."""

AUTH_STRING_SECRET = {"name": "prefect-basic-auth", "key": "auth-string"}
"""The secret holding a self-hosted server's PREFECT_API_AUTH_STRING, when it has basic auth."""

PRELOAD = "pyflow.preload"
"""The module Dask schedulers and workers preload (``--preload``): it warms them as they start."""


def dask_pod(
    settings: Settings, image: str, role: str, args: list[str], api_url: str
) -> dict[str, Any]:
    """Return the pod spec of a per-run cluster's scheduler or workers: the flow's image and user."""
    env: list[dict[str, Any]] = [
        {"name": "PREFECT_API_URL", "value": api_url},
        {
            "name": "PREFECT_API_KEY",
            "valueFrom": {"secretKeyRef": {**API_KEY_SECRET, "optional": True}},
        },
        {
            "name": "PREFECT_API_AUTH_STRING",
            "valueFrom": {"secretKeyRef": {**AUTH_STRING_SECRET, "optional": True}},
        },
    ]
    resources = {
        "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
        "limits": {"cpu": settings.cpu_limit, "memory": settings.memory_limit},
    }
    return {
        "serviceAccountName": settings.service_account,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
        "containers": [
            {
                "name": role,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "env": env,
                "resources": resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
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
    worker_args += ["--preload", PRELOAD]
    scheduler_args = ["dask", "scheduler", "--host", "0.0.0.0"]  # noqa: S104 (inside its pod)
    scheduler_args += ["--preload", PRELOAD]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name, "namespace": settings.namespace},
        "spec": {
            "worker": {
                "replicas": settings.dask_workers or 2,
                "spec": dask_pod(settings, image, "worker", worker_args, api_url),
            },
            "scheduler": {
                "spec": dask_pod(settings, image, "scheduler", scheduler_args, api_url),
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [
                        {
                            "name": "tcp-comm",
                            "protocol": "TCP",
                            "port": SCHEDULER_PORT,
                            "targetPort": SCHEDULER_PORT,
                        },
                        {
                            "name": "http-dashboard",
                            "protocol": "TCP",
                            "port": DASHBOARD_PORT,
                            "targetPort": DASHBOARD_PORT,
                        },
                    ],
                },
            },
        },
    }


def per_run_cluster(**kwargs: Any) -> Any:
    """Create the flow run's own Dask cluster on Kubernetes (DaskTaskRunner calls it at start).

    Raises:
        SettingsError: If PYFLOW_DASK_IMAGE is unset.
    """
    from dask_kubernetes.operator import KubeCluster
    from prefect.settings import PREFECT_API_URL

    from pyflow.config import get_settings

    settings = get_settings()
    name = f"pyflow-{uuid.uuid4().hex[:8]}"
    spec = cluster_spec(settings, name, PREFECT_API_URL.value() or "")
    return KubeCluster(custom_cluster_spec=spec, namespace=settings.namespace, **kwargs)


def build_task_runner(settings: Settings) -> TaskRunner[Any]:
    """Create the task runner the settings choose (a per-run cluster is made when a run starts)."""
    if settings.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=settings.thread_workers)
    from prefect_dask.task_runners import DaskTaskRunner

    if settings.task_runner == "dask-kubernetes":
        return DaskTaskRunner(cluster_class="pyflow.runners.per_run_cluster")
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    from dask.system import cpu_count  # affinity and the cgroup (a pod's) CPU limit

    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.dask_workers or cpu_count(),
            "threads_per_worker": settings.dask_threads,
            "processes": True,
            "dashboard_address": None,
            "env": {"POLARS_MAX_THREADS": str(settings.dask_threads)},
            "preload": [PRELOAD],
        }
    )
