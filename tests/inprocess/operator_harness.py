"""The operator's context built as the operator builds it, over the test's namespace of the real control plane,
and the steps that the cluster's own controllers would take for a training Job, taken by the test.

``Harness.reconcile(name)`` is one turn of the operator's loop without the loop: the caches are filled from
LISTs of the API server (the objects kopf's watches would have delivered, cut down by the same views) and
finetune_operator.reconcile.reconcile() runs once. The requests it sends are recorded (``requests``), so a
test can say that a reconcile sent no create, or nothing at all.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from catalog import valid_job
from finetune_operator.adapters.reconcile import reconcile_adapter
from finetune_operator.cache import Caches
from finetune_operator.context import Context, Outcome
from finetune_operator.kube import (
    CONFIGMAPS,
    EVENTS,
    FINETUNEJOBS,
    FINETUNEMODELS,
    JOBS,
    KINDS,
    MODELADAPTERS,
    PODS,
    SERVICEACCOUNTS,
    SERVICES,
    Kind,
    Kube,
)
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.naming import JOB_LABEL
from finetune_operator.progress.server import ProgressService
from finetune_operator.reconcile import reconcile
from finetune_operator.settings import PROGRESS_AUDIENCE, Settings
from kubelet import finished_pod_status

TIER_LABEL = "finetune.dev/inprocess-tier"
NO_SCHEDULER = "inprocess-tests"  # no scheduler of that name runs: the pods the tests create stay where put

_KINDS = {**KINDS, "FineTuneModel": FINETUNEMODELS}
_KIND_NAMES = {kind: name for name, kind in _KINDS.items()}


def timestamp(ago: dt.timedelta = dt.timedelta()) -> str:
    return (dt.datetime.now(dt.UTC) - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def training_job(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob of 8 GPUs on one node (tests/catalog.py's valid job), with ``spec`` fields replaced."""
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["resources"] = {"gpusPerNode": 8, "cpu": "16", "memory": "64Gi"}
    manifest["spec"].update(spec)
    return manifest


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


class Harness:
    def __init__(self, cluster, namespace: str, settings: dict[str, Any] | None = None):
        self.cluster = cluster
        self.namespace = namespace
        self.requests: list[tuple[str, str, str]] = []  # (verb, resource, code) the operator's client sent
        self.metrics = OperatorMetrics()
        self.admin = Kube.connect(str(cluster.kubeconfig))  # the test's own reads and writes: not recorded
        kube = Kube.connect(str(cluster.kubeconfig), observe=lambda *request: self.requests.append(request))
        self.context = Context(kube=kube, settings=self.settings(**(settings or {})), caches=Caches())

    def settings(self, **overrides: Any) -> Settings:
        """The operator's settings as the e2e tier runs it (operator_process.py), watching the test's namespace."""
        defaults = {
            "namespaces": [self.namespace],
            "default_output_uri": "s3://adapters/",
            "progress_port": 0,
            "metrics_port": 0,
            "health_port": 0,
        }
        return Settings(**{**defaults, **overrides})

    def configure(self, **overrides: Any) -> None:
        """Settings changed as a restart with other flags would change them."""
        current = self.context.settings.model_dump(exclude_unset=True)
        self.context.settings = Settings(**{**current, **overrides})

    def close(self) -> None:
        self.admin.rest.close()
        self.context.kube.rest.close()

    # -- the operator's side --------------------------------------------------------------------------

    def fill_caches(self) -> None:
        """What the watches would have brought by now: every watched kind listed with its watch's selector, kept
        through the cache's own views; what is gone from the API server is forgotten."""
        caches = self.context.caches
        for watched in caches.watched:
            store = caches[watched.kind]
            namespace = self.namespace if watched.kind.namespaced else None
            listed = []
            for item in self.admin.list(watched.kind, namespace, watched.selector):
                # A LIST's items carry no apiVersion and kind; a watch event's objects do.
                listed.append({"apiVersion": watched.kind.api_version, "kind": _KIND_NAMES[watched.kind], **item})
            for obj in listed:
                store.observe(obj)
            present = {store.key_of(obj) for obj in listed}
            for cached in list(store):
                if store.key_of(cached) not in present:
                    store.forget(cached)
        caches.ready.set()

    def reconcile(self, name: str) -> Outcome:
        self.fill_caches()
        self.requests.clear()
        return reconcile(self.context, self.namespace, name)

    def reconcile_adapter(self, name: str) -> Outcome:
        self.fill_caches()
        self.requests.clear()
        return reconcile_adapter(self.context, self.namespace, name)

    def progress_service(self) -> ProgressService:
        """The progress endpoint's service as the operator builds it, over the same client and caches; its
        requests are recorded with the reconciles'."""
        context = self.context
        return ProgressService(context.kube, context.caches, context.settings, self.metrics)

    def report(self, service: ProgressService, name: str, token: str, body: bytes | dict) -> None:
        """One progress report as the endpoint handles it: the caller authenticated, then its report accepted
        (Refusal when either says no)."""
        self.fill_caches()
        self.requests.clear()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        finetunejob = service.authenticate(self.namespace, name, token)
        service.accept(self.namespace, name, finetunejob, data)

    def token_for(self, pod: dict[str, Any], audience: str = PROGRESS_AUDIENCE) -> str:
        """A projected ServiceAccount token bound to ``pod``, as the kubelet mounts one (TokenRequest)."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience],
                "expirationSeconds": 600,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                },
            },
        }
        account = pod["spec"]["serviceAccountName"]
        path = f"{SERVICEACCOUNTS.path(self.namespace, account)}/token"
        return self.admin.rest.request("POST", path, request)["status"]["token"]

    def sent(self, verb: str | None = None) -> list[tuple[str, str, str]]:
        """The requests of the last call, all of them or those of one verb."""
        return [request for request in self.requests if verb is None or request[0] == verb]

    # -- the user's side --------------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest = json.loads(json.dumps(manifest))
        kind = _KINDS[manifest["kind"]]
        if kind.namespaced:
            manifest["metadata"].setdefault("namespace", self.namespace)
        return self.admin.rest.request("POST", kind.path(manifest["metadata"].get("namespace")), manifest)

    def patch(self, kind: Kind, name: str, patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        return self.admin.merge_patch(kind, self.namespace, name, patch, subresource)

    def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        return self.admin.get(kind, self.namespace if kind.namespaced else None, name)

    def ftj(self, name: str) -> dict[str, Any]:
        return self.get(FINETUNEJOBS, name)

    def adapter(self, name: str) -> dict[str, Any] | None:
        return self.get(MODELADAPTERS, name)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.admin.list(EVENTS, self.namespace) if e["involvedObject"]["name"] == name]

    def children(self, name: str) -> dict[str, dict[str, Any] | None]:
        return {
            "Job": self.get(JOBS, name),
            "ConfigMap": self.get(CONFIGMAPS, f"{name}-config"),
            "Service": self.get(SERVICES, name),
            "ServiceAccount": self.get(SERVICEACCOUNTS, f"{name}-trainer"),
        }

    # -- the Job controller's and the kubelet's side ------------------------------------------------------

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.admin.list(PODS, self.namespace, f"{JOB_LABEL}={name}")

    def start_pods(
        self, job_name: str, phase: str = "Running", ago: dt.timedelta = dt.timedelta()
    ) -> list[dict[str, Any]]:
        """As the Job controller would: one pod per completion index from the Job's template, owned by the Job,
        and the Job's status counting them (started ``ago``); then as the kubelet would, the pods' status."""
        job = self.get(JOBS, job_name)
        template, uid = job["spec"]["template"], job["metadata"]["uid"]
        pods = []
        for index in range(job["spec"].get("completions", 1)):
            annotations = {**template["metadata"].get("annotations", {})}
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": f"{job_name}-{index}-",
                    "namespace": self.namespace,
                    "labels": {
                        **template["metadata"]["labels"],
                        "batch.kubernetes.io/job-completion-index": str(index),
                    },
                    "annotations": annotations,
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": job_name,
                            "uid": uid,
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {**template["spec"], "schedulerName": NO_SCHEDULER},
            }
            created = self.admin.rest.request("POST", PODS.path(self.namespace), pod)
            pods.append(self.set_pod_phase(created["metadata"]["name"], phase))
        active = len(pods) if phase in ("Pending", "Running") else 0
        status = {"active": active, "ready": active if phase == "Running" else 0}
        if not (job.get("status") or {}).get("startTime"):  # a retry's pods leave it as it was
            status["startTime"] = timestamp(ago)
        self.patch(JOBS, job_name, {"status": status}, "status")
        return pods

    def _container(self, pod: str) -> str:
        return self.get(PODS, pod)["spec"]["containers"][0]["name"]

    def set_pod_phase(self, pod: str, phase: str) -> dict[str, Any]:
        now = timestamp()
        running = phase == "Running"
        container = {
            "name": self._container(pod),
            "image": "trainer",
            "imageID": "",
            "ready": running,
            "restartCount": 0,
            "started": running,
            "state": {"running": {"startedAt": now}} if running else {"waiting": {"reason": "ContainerCreating"}},
        }
        ready = {"type": "Ready", "status": str(running), "lastTransitionTime": now}
        status = {"phase": phase, "conditions": [ready], "containerStatuses": [container]}
        return self.patch(PODS, pod, {"status": status}, "status")

    def finish_pod(self, pod: str, exit_code: int, message: str = "", conditions: list | None = None) -> dict:
        """The trainer container exited: the pod's final status, as its kubelet writes it."""
        status = finished_pod_status(self._container(pod), exit_code, message, conditions)
        return self.patch(PODS, pod, {"status": status}, "status")

    def complete_job(self, name: str, finished: dt.timedelta = dt.timedelta()) -> dict[str, Any]:
        """The Job controller's record of a Job whose pods all succeeded (``finished`` ago)."""
        job = self.get(JOBS, name)
        completions = job["spec"].get("completions", 1)
        at = timestamp(finished)
        conditions = [
            {"type": kind, "status": "True", "reason": "CompletionsReached", "lastTransitionTime": at}
            for kind in ("SuccessCriteriaMet", "Complete")
        ]
        status = {
            "active": 0,
            "ready": 0,
            "terminating": 0,
            "succeeded": completions,
            "startTime": job.get("status", {}).get("startTime") or at,
            "completionTime": at,
            "conditions": conditions,
        }
        if job["spec"].get("completionMode") == "Indexed":
            status["completedIndexes"] = "0" if completions == 1 else f"0-{completions - 1}"
        return self.patch(JOBS, name, {"status": status}, "status")

    def fail_job(self, name: str, reason: str = "PodFailurePolicy", message: str = "") -> dict[str, Any]:
        """The Job controller's record of a Job that failed for good (a podFailurePolicy FailJob rule, say)."""
        now = timestamp()
        job = self.get(JOBS, name)
        conditions = [
            {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now}
            for kind in ("FailureTarget", "Failed")
        ]
        status = {
            "active": 0,
            "ready": 0,
            "terminating": 0,
            "failed": 1,
            "startTime": job.get("status", {}).get("startTime") or now,
            "conditions": conditions,
        }
        return self.patch(JOBS, name, {"status": status}, "status")

    def count_failed_pod(self, name: str) -> dict[str, Any]:
        """The Job controller counting a failed pod it will replace (status.failed), the Job still active."""
        failed = int((self.get(JOBS, name).get("status") or {}).get("failed") or 0) + 1
        return self.patch(JOBS, name, {"status": {"failed": failed, "active": 0, "ready": 0}}, "status")
