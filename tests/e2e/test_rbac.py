"""The chart's RBAC is enough and nothing more: the operator, run with a token of the chart's ServiceAccount
and nothing else, passes the operator-core scenario; without any one verb of the chart's rules it fails.

The control plane here is the e2e one plus two things: the OwnerReferencesPermissionEnforcement admission
plugin (off in a default kube-apiserver, on in OpenShift and hardened clusters; it is what makes the
operator need `update` on finetunejobs/finalizers, for the blockOwnerDeletion of its children's
ownerReferences), and an audit log of every ServiceAccount's requests. The audit log tells which
permissions the scenario exercised and shows the first request a trimmed role refused: a scenario stops
as failed at that request, the operator's 403, instead of waiting for its status never to converge.

The variants are read from charts/finetune-operator/files/operator-rbac.yaml, the chart's single source
of the operator's rules, so a rule added there is tested here at once. A verb whose reason there starts
with "planned" (code not written yet) is skipped while the operator never makes such a request.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from catalog import valid_job
from finetune_core.api import (
    MANIFEST_FILE_NAME,
    ArtifactReport,
    FinalSummary,
    PreflightPlan,
    PreflightReport,
    TrainerConfig,
    manifest_of_directory,
)
from finetune_operator.naming import PREFLIGHT_ROLE_LABEL, THROUGHPUT_CONFIG_MAP
from finetune_operator.pod_role import LEADER, ROLE_LABEL
from kubehelpers import condition, get, items, patch_pod_status, wait_for

from hack.localcluster import LocalCluster, build_binaries, free_port, metadata_audit_policy
from hack.localcluster.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"
RULES = yaml.safe_load((CHART / "files" / "operator-rbac.yaml").read_text())["rules"]
PROGRESS_AUDIENCE = "finetune.dev/progress"
CA_SECRET = "finetune-operator-progress-ca"
STEP_TIMEOUT = 45.0
RUN = "test.finetune.dev/run-duration"
KUBERNETES_VERSION = next(
    line.split("=", 1)[1].strip()
    for line in (REPO / "hack" / "versions.env").read_text().splitlines()
    if line.startswith("KUBERNETES_VERSION=")
)

AUDIT_POLICY = metadata_audit_policy(groups=["system:serviceaccounts"])


class AuditedCluster(LocalCluster):
    """The test control plane, with OwnerReferencesPermissionEnforcement (the audit log is LocalCluster's
    ``audit_policy`` option)."""

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None):
        if name == "kube-apiserver":
            argv = [*argv, "--enable-admission-plugins=OwnerReferencesPermissionEnforcement"]
        return super().spawn(name, argv, env)


@pytest.fixture(scope="module")
def rbac_cluster():
    with AuditedCluster(audit_policy=AUDIT_POLICY) as running:
        running.install_crds()
        yield running


def kubectl_json(cluster, *args: str) -> dict:
    return json.loads(cluster.run_kubectl(*args, "-o", "json").stdout)


def apply(cluster, *manifests: dict) -> None:
    cluster.run_kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)}),
    )


# -- the chart, rendered -----------------------------------------------------------------------------


def render_chart(release_namespace: str, values: dict) -> list[dict]:
    helm = build_binaries("helm")["helm"] / "helm"
    result = subprocess.run(
        [
            str(helm),
            "template",
            "fto",
            str(CHART),
            "--namespace",
            release_namespace,
            f"--kube-version={KUBERNETES_VERSION}",
            "--values",
            "-",
        ],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def is_user_role(obj: dict) -> bool:
    return obj["metadata"]["name"].endswith(("-edit", "-view", "-catalog-reader"))


def is_metrics_reader(obj: dict) -> bool:
    """The ClusterRole (and its binding) that lets Prometheus read /metrics: not the operator's permissions."""
    return obj["metadata"]["name"].endswith("-metrics-reader")


# -- permissions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Permission:
    """One verb of one rule of files/operator-rbac.yaml, and the mode whose rendering holds that rule."""

    mode: str  # clusterwide | namespaced
    scope: str  # watched | cluster | operator
    group: str
    resource: str  # resource[/subresource]
    verb: str
    reason: str

    @property
    def id(self) -> str:
        group = f".{self.group}" if self.group else ""
        where = "" if self.scope == "watched" else f"({self.scope})"
        return f"{self.mode}:{self.resource}{group}{where}:{self.verb}"

    @property
    def planned(self) -> bool:
        return self.reason.startswith("planned")

    def request(self) -> tuple[str, str, str]:
        return (self.group, self.resource, self.verb)


def declared_permissions() -> list[Permission]:
    """Every verb of the rules; a rule rendered in both modes is tested in the clusterwide one, except a
    verb in the operator's namespace that a watched rule grants too: the clusterwide ClusterRole grants it
    in every namespace, the operator's among them, so only the namespaced mode can tell it is needed."""
    watched = {
        (group, resource, verb)
        for rule in RULES
        if rule["scope"] == "watched" and not rule.get("when")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    found = []
    for rule in RULES:
        if "sts" in rule.get("when", []):
            # The scenario runs without a store that mints credentials (it has no MinIO): the per-job
            # credentials' permissions are exercised by tests/e2e/test_storage_isolation.py, not trimmed here.
            continue
        if "cache" in rule.get("when", []):
            # The scenario runs without the shared model cache (it has no volume for the claim to bind to): the
            # claim's create is made by tests/e2e/test_model_cache_jobs.py, not trimmed here.
            continue
        if "kueue.x-k8s.io" in rule["apiGroups"]:
            # The scenario has no Kueue: reading Workloads and LocalQueues is exercised by tests/e2e/test_kueue.py.
            continue
        mode = "namespaced" if "namespaced" in rule.get("when", []) else "clusterwide"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb, reason in rule["verbs"].items():
                    shadowed = rule["scope"] == "operator" and (group, resource, verb) in watched
                    where = "namespaced" if shadowed else mode
                    found.append(Permission(where, rule["scope"], group, resource, verb, reason))
    return found


def without(docs: list[dict], permission: Permission, namespaces: dict[str, str]) -> list[dict]:
    """The operator's RBAC objects with ``permission``'s verb removed from the rules of its scope."""
    result = []
    for doc in docs:
        doc = json.loads(json.dumps(doc))
        kind, namespace = doc["kind"], doc["metadata"].get("namespace")
        holds_scope = {
            "cluster": kind == "ClusterRole",
            "watched": (kind == "ClusterRole")
            if permission.mode == "clusterwide"
            else (
                kind == "Role" and namespace == namespaces["workload"] and not doc["metadata"]["name"].endswith("-self")
            ),
            "operator": kind == "Role" and doc["metadata"]["name"].endswith("-self"),
        }[permission.scope]
        if holds_scope and "rules" in doc:
            rules = []
            for rule in doc["rules"]:
                if permission.group in rule["apiGroups"] and permission.resource in rule["resources"]:
                    rule = {**rule, "verbs": [v for v in rule["verbs"] if v != permission.verb]}
                if rule["verbs"]:
                    rules.append(rule)
            doc["rules"] = rules
        result.append(doc)
    return result


# -- the audit log -------------------------------------------------------------------------------------


def request_of(event: dict) -> tuple[str, str, str]:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "")
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    return (ref.get("apiGroup", ""), resource, event["verb"])


def describe(event: dict) -> str:
    ref = event.get("objectRef") or {}
    group, resource, verb = request_of(event)
    where = f" in {ref['namespace']}" if ref.get("namespace") else ""
    status = event.get("responseStatus") or {}
    return (
        f"{verb} {resource}{'.' + group if group else ''}{where} -> {status.get('code')} {status.get('message', '')}"[
            :600
        ]
    )


class Audit:
    """The audit events of one ServiceAccount about one run's namespaces (or cluster-scoped), from now on.

    Runs before this one leave namespaces behind that are still being deleted; a cluster-wide operator
    still sees their jobs, and what it is refused there (creating in a terminating namespace is a 403)
    says nothing about this run."""

    def __init__(self, cluster: LocalCluster, user: str, namespaces: set[str]):
        self.cluster = cluster
        self.user = user
        self.namespaces = namespaces
        self.offset = cluster.audit_log.stat().st_size if cluster.audit_log.exists() else 0
        self.events: list[dict] = []

    def read(self) -> list[dict]:
        events, self.offset = self.cluster.audit_events(self.offset)
        for event in events:
            ref = event.get("objectRef")
            if (
                event.get("user", {}).get("username") == self.user
                and ref is not None  # API discovery (/api, /apis) is everyone's
                and ref.get("namespace") in (None, *self.namespaces)
            ):
                self.events.append(event)
        return self.events

    def forbidden(self) -> list[dict]:
        return [e for e in self.read() if (e.get("responseStatus") or {}).get("code") == 403]

    def allowed_requests(self) -> set[tuple[str, str, str]]:
        """Requests RBAC let through, whatever their answer (a 404 or a 409 was authorized too)."""
        return {request_of(e) for e in self.read() if (e.get("responseStatus") or {}).get("code") not in (401, 403)}


# -- one run of the scenario ---------------------------------------------------------------------------


class ScenarioFailed(AssertionError):
    pass


@dataclass
class Run:
    cluster: AuditedCluster
    mode: str
    name: str  # distinct per run: names the release, its namespaces and the ServiceAccount
    tmp_path: Path
    removed: Permission | None = None
    namespaces: dict[str, str] = field(default_factory=dict)
    operator: OperatorProcess | None = None
    progress_port: int = 0
    metrics_port: int = 0
    progress: tuple[str, Path] | None = None  # the pod-bound token and the CA, once step_progress has them
    audit: Audit | None = None
    cluster_objects: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.namespaces = {"release": f"{self.name}-system", "workload": f"{self.name}-jobs"}

    @property
    def workload(self) -> str:
        return self.namespaces["workload"]

    @property
    def pod_name(self) -> str:
        """The operator's pod (a Pod object: the process is the test's), which it labels once it leads."""
        return f"{self.name}-operator"

    # waiting that fails at the operator's first refused request
    def check(self) -> None:
        forbidden = self.audit.forbidden() if self.audit else []
        if forbidden:
            raise ScenarioFailed(f"the operator's request was refused: {describe(forbidden[0])}")
        if self.operator and self.operator.process and self.operator.process.poll() is not None:
            raise ScenarioFailed(
                f"the operator exited with {self.operator.process.returncode}:\n{self.operator.tail()}"
            )

    def wait(self, what: str, probe: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check()
            try:
                last = probe()
            except ScenarioFailed:
                raise
            except Exception as error:  # probes fail while things settle
                last = error
            else:
                if last:
                    return last
            time.sleep(0.25)
        self.check()
        raise ScenarioFailed(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    # set-up and tear-down
    def install(self) -> None:
        """The chart's ServiceAccount and operator RBAC, applied from `helm template` (less one verb, maybe)."""
        for namespace in self.namespaces.values():
            self.cluster.run_kubectl("create", "namespace", namespace)
        values: dict[str, Any] = {
            "fullnameOverride": self.name,
            "metrics": {"readers": [{"name": "prometheus", "namespace": self.namespaces["release"]}]},
        }
        if self.mode == "namespaced":
            values["operator"] = {"watchNamespaces": [self.workload]}
        docs = render_chart(self.namespaces["release"], values)
        self.deployment = next(d for d in docs if d["kind"] == "Deployment")
        rbac = [
            d
            for d in docs
            if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
            and not is_user_role(d)
            and not is_metrics_reader(d)
        ]
        if self.removed:
            rbac = without(rbac, self.removed, self.namespaces)
        apply(self.cluster, *rbac)
        # Prometheus, as the chart's values bind it to the metrics-reader role.
        readers = [d for d in docs if is_metrics_reader(d)]
        apply(self.cluster, *readers)
        self.cluster.run_kubectl("create", "serviceaccount", "prometheus", "-n", self.namespaces["release"])
        self.cluster_objects = [
            (d["kind"], d["metadata"]["name"]) for d in [*rbac, *readers] if "namespace" not in d["metadata"]
        ]
        account = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["name"]
        self.user = f"system:serviceaccount:{self.namespaces['release']}:{account}"
        token = self.cluster.run_kubectl(
            "create", "token", account, "-n", self.namespaces["release"], "--duration=2h"
        ).stdout.strip()
        self.kubeconfig = self.tmp_path / f"{self.name}.kubeconfig"
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": self.cluster.server,
                                "certificate-authority": str(self.cluster.pki_dir / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": account, "user": {"token": token}}],
                    "contexts": [{"name": "operator", "context": {"cluster": "test", "user": account}}],
                    "current-context": "operator",
                }
            )
        )
        # What the trainer pods need before anything else: their Secret, and a ServiceAccount of their own.
        ns = self.workload
        self.cluster.run_kubectl(
            "create", "secret", "generic", "s3-creds", "-n", ns, "--from-literal=AWS_ACCESS_KEY_ID=x"
        )
        self.cluster.run_kubectl("create", "serviceaccount", "byo-trainer", "-n", ns)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.pod_name, "namespace": self.namespaces["release"]},
            "spec": {"containers": [{"name": "operator", "image": "finetune-operator:test"}]},
        }
        apply(self.cluster, pod)

    def operator_environment(self) -> dict[str, str]:
        """The settings of the chart's Deployment, with the endpoints on this machine's loopback."""
        (container,) = self.deployment["spec"]["template"]["spec"]["containers"]
        env = {}
        for var in container["env"]:
            if var["name"] == "FINETUNE_OPERATOR_NAMESPACE":
                env[var["name"]] = self.namespaces["release"]
            elif var["name"] == "FINETUNE_POD_NAME":
                env[var["name"]] = self.pod_name
            elif "value" in var:
                env[var["name"]] = var["value"]
        self.progress_port = free_port()
        env["FINETUNE_PROGRESS_PORT"] = str(self.progress_port)
        env["FINETUNE_PROGRESS_URL"] = f"https://127.0.0.1:{self.progress_port}"
        self.metrics_port = free_port()
        env["FINETUNE_METRICS_PORT"] = str(self.metrics_port)
        env["FINETUNE_ALLOW_LOCAL_FILES"] = "true"  # the published artifact is a local directory (step_report_artifact)
        return env

    def start_operator(self) -> None:
        self.audit = Audit(self.cluster, self.user, set(self.namespaces.values()))
        args = [*self.deployment["spec"]["template"]["spec"]["containers"][0]["args"]]
        self.operator = OperatorProcess(
            self.kubeconfig, self.tmp_path / f"{self.name}-operator.log", *args, env=self.operator_environment()
        )
        started: Future = Future()

        def start() -> None:
            try:
                self.operator.start()
                started.set_result(True)
            except Exception as error:  # reported by the wait below
                started.set_exception(error)

        threading.Thread(target=start, daemon=True).start()

        def healthy():
            if started.done() and started.exception():
                raise ScenarioFailed(f"the operator did not start: {started.exception()}")
            return started.done()

        self.wait("the operator to become healthy", healthy, timeout=70)

    def tear_down(self) -> None:
        if self.operator:
            self.operator.stop()
        for namespace in self.namespaces.values():
            self.cluster.run_kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        for kind, name in self.cluster_objects:
            self.cluster.run_kubectl("delete", kind, name, "--wait=false", check=False)


# -- the scenario: create, run, report progress, read metrics, succeed, delete -----------------------


def training_job(name: str, namespace: str, **spec: Any) -> dict:
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["resources"] = {"gpusPerNode": 8, "cpu": "16", "memory": "64Gi"}
    manifest["spec"]["template"] = {"podAnnotations": {RUN: "1h"}}
    manifest["spec"].update(spec)
    return manifest


def condition_of(run: Run, name: str, type_: str, status: str = "True"):
    def probe():
        found = condition(get(run.cluster, "ftj", run.workload, name), type_)
        return found if found and found["status"] == status else None

    return probe


def step_lead(run: Run) -> None:
    """Elected, the operator labels its own pod as the leader's: the chart's Service selects that label."""

    def labelled():
        pod = get(run.cluster, "pod", run.namespaces["release"], run.pod_name)
        return (pod["metadata"].get("labels") or {}).get(ROLE_LABEL) == LEADER

    run.wait("the operator's pod labelled as the leader's", labelled)


PLANNED_TOKENS = 1_200_000
TRAIN_SECONDS = 600.0


def finish_preflight(run: Run, name: str) -> None:
    """The preflight pod exits 0 with its plan, as the trainer image's `preflight` would report it."""
    ns = run.workload

    def unfinished():
        # A re-planned job's earlier preflight pod may still be listed (Succeeded, or being deleted with its Job).
        found = items(run.cluster, "pods", ns, f"finetune.dev/job={name},{PREFLIGHT_ROLE_LABEL}=preflight")
        return [
            p for p in found if p["status"].get("phase") != "Succeeded" and not p["metadata"].get("deletionTimestamp")
        ]

    pods = run.wait(f"{name}'s preflight pod", unfinished)
    plan = PreflightPlan(
        parameters=494_000_000, total_steps=400, steps_per_epoch=400, epochs=1.0, trained_tokens=PLANNED_TOKENS
    )
    report = PreflightReport(outcome="Planned", plan=plan)
    patch_pod_status(run.cluster, ns, pods[0]["metadata"]["name"], 0, report.to_message())


def succeed(run: Run, pod: dict, artifact: dict) -> None:
    """The trainer exits 0 with its final summary: the artifact and the seconds of its optimizer steps."""
    summary = FinalSummary(artifact=ArtifactReport.model_validate(artifact), train_seconds=TRAIN_SECONDS)
    patch_pod_status(run.cluster, run.workload, pod["metadata"]["name"], 0, summary.to_message())


def throughput_row(run: Run) -> list[float]:
    """The throughput table's only row (every job of the scenario has the same kind)."""
    table = get(run.cluster, "configmap", run.namespaces["release"], THROUGHPUT_CONFIG_MAP)
    rows = list(((table or {}).get("data") or {}).values())
    return json.loads(rows[0]) if len(rows) == 1 else []


def step_create(run: Run) -> None:
    """A job that starts suspended gets its preflight and all its children but the training Job (a dry
    run: plan and estimate); a job whose claim is missing gets none."""
    ns = run.workload
    alpha = training_job("alpha", ns, suspend=True)
    alpha["spec"]["data"]["credentialsSecretRef"] = {"name": "s3-creds"}
    beta = training_job("beta", ns)
    beta["spec"]["model"]["uri"] = "pvc://models/base"
    beta["spec"]["template"]["serviceAccountName"] = "byo-trainer"
    apply(run.cluster, alpha, beta)

    finish_preflight(run, "alpha")
    run.wait("alpha Planned", condition_of(run, "alpha", "Planned"))
    run.wait("alpha Suspended", condition_of(run, "alpha", "Suspended"))
    ftj = get(run.cluster, "ftj", ns, "alpha")
    # No figure measured yet: the table was read (a 404) and the default wins.
    assert ftj["status"]["plan"]["estimate"]["source"] == "default", ftj["status"]["plan"]
    for kind, child in [
        ("job", "alpha-preflight"),
        ("configmap", "alpha-config"),
        ("service", "alpha"),
        ("serviceaccount", "alpha-trainer"),
    ]:
        found = run.wait(f"{kind} {child}", lambda kind=kind, child=child: get(run.cluster, kind, ns, child))
        (owner,) = found["metadata"]["ownerReferences"]
        assert owner["uid"] == ftj["metadata"]["uid"] and owner["blockOwnerDeletion"] is True
    assert get(run.cluster, "job", ns, "alpha") is None, "a dry run creates no training Job"

    blocked = run.wait("beta blocked by its missing claim", condition_of(run, "beta", "ReferencesResolved", "False"))
    assert blocked["reason"] == "PersistentVolumeClaimNotFound", blocked


def step_start_and_suspend(run: Run) -> None:
    """Unsuspended, the planned job's training Job is created; suspended again, the Job is suspended."""
    ns = run.workload
    run.cluster.run_kubectl("patch", "ftj", "alpha", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    created = run.wait("the training Job alpha", lambda: get(run.cluster, "job", ns, "alpha"))
    (owner,) = created["metadata"]["ownerReferences"]
    assert owner["blockOwnerDeletion"] is True
    run.cluster.run_kubectl("patch", "ftj", "alpha", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    run.wait("the Job alpha suspended", lambda: (get(run.cluster, "job", ns, "alpha") or {})["spec"].get("suspend"))


def step_catalog(run: Run) -> None:
    """A job naming a FineTuneModel that admits namespaces by label: the operator reads the model and the
    namespace's labels, and the job resolves."""
    ns, model = run.workload, f"{run.name}-model"
    run.cluster.run_kubectl("label", "namespace", ns, "finetune.test/catalog=allowed")
    catalog_entry = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneModel",
        "metadata": {"name": model},
        "spec": {
            "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct",
            "limits": {"namespaceSelector": {"matchLabels": {"finetune.test/catalog": "allowed"}}},
        },
    }
    apply(run.cluster, catalog_entry)
    run.cluster_objects.append(("FineTuneModel", model))
    gamma = training_job("gamma", ns, suspend=True)
    gamma["spec"]["model"] = {"name": model}
    apply(run.cluster, gamma)
    resolved = run.wait("gamma ModelResolved", condition_of(run, "gamma", "ModelResolved"))
    assert resolved["reason"] == "Resolved", resolved


def step_resize(run: Run) -> None:
    """Resources and training settings changed while suspended: the Job is deleted (re-created once the
    job is resumed: a suspended, planned job holds no training Job), the ConfigMap patched, and the plan,
    made for the old resources, made again by a new preflight Job."""
    ns = run.workload
    patch = {"spec": {"resources": {"gpusPerNode": 4}, "training": {"learningRate": 0.0002}}}
    run.cluster.run_kubectl("patch", "ftj", "alpha", "-n", ns, "--type=merge", "-p", json.dumps(patch))
    run.wait("the suspended Job deleted to be replaced", lambda: get(run.cluster, "job", ns, "alpha") is None)
    run.wait(
        "the ConfigMap patched with the new learning rate",
        lambda: (
            TrainerConfig.model_validate_json(
                get(run.cluster, "configmap", ns, "alpha-config")["data"]["config.json"]
            ).training.learning_rate
            == 0.0002
        ),
    )
    run.wait("alpha's plan of the old spec set aside", condition_of(run, "alpha", "Planned", "False"))
    finish_preflight(run, "alpha")
    run.wait("alpha planned again", condition_of(run, "alpha", "Planned"))


def step_run(run: Run) -> dict:
    """Resumed: the Job is re-created with the new resources and its pod runs."""
    ns = run.workload
    run.cluster.run_kubectl("patch", "ftj", "alpha", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')

    def resized():
        job = get(run.cluster, "job", ns, "alpha")
        limits = job and job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        return job if limits and limits.get("nvidia.com/gpu") == "4" else None

    run.wait("the Job re-created with 4 GPUs", resized)
    pods = run.wait(
        "alpha's pod Running",
        lambda: [
            p for p in items(run.cluster, "pods", ns, "finetune.dev/job=alpha") if p["status"].get("phase") == "Running"
        ],
    )
    run.wait("alpha Running", condition_of(run, "alpha", "Running"))
    return pods[0]


def step_progress(run: Run, pod: dict) -> None:
    """The pod's projected token, checked with a TokenReview; the report lands in status.progress."""
    ns = run.workload
    secret = run.wait(
        "the progress CA Secret", lambda: get(run.cluster, "secret", run.namespaces["release"], CA_SECRET)
    )
    ca_file = run.tmp_path / f"{run.name}-progress-ca.crt"
    ca_file.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    token = run.cluster.run_kubectl(
        "create",
        "token",
        pod["spec"]["serviceAccountName"],
        "-n",
        ns,
        f"--audience={PROGRESS_AUDIENCE}",
        "--bound-object-kind=Pod",
        f"--bound-object-name={pod['metadata']['name']}",
        f"--bound-object-uid={pod['metadata']['uid']}",
        "--duration=10m",
    ).stdout.strip()
    run.progress = (token, ca_file)
    post_report(run, {"step": 120, "totalSteps": 400, "trainLoss": 1.25})
    run.wait(
        "status.progress.step 120",
        lambda: ((get(run.cluster, "ftj", ns, "alpha").get("status") or {}).get("progress") or {}).get("step") == 120,
    )


def post_report(run: Run, report: dict) -> None:
    token, ca_file = run.progress
    request = urllib.request.Request(
        f"https://127.0.0.1:{run.progress_port}/v1/namespaces/{run.workload}/finetunejobs/alpha/progress",
        data=json.dumps(report).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(
            request, context=ssl.create_default_context(cafile=str(ca_file)), timeout=20
        ) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        run.check()  # a refusal of the operator's own requests explains a 500 best
        raise ScenarioFailed(f"the progress report was refused: {error.code} {error.read()[:300]!r}") from None
    assert status == 204


def step_metrics(run: Run) -> None:
    """Prometheus, bound to the chart's metrics-reader role, reads /metrics: a TokenReview and a
    SubjectAccessReview of the operator's."""
    _, ca_file = run.progress
    token = run.cluster.run_kubectl(
        "create", "token", "prometheus", "-n", run.namespaces["release"], "--duration=10m"
    ).stdout.strip()
    request = urllib.request.Request(
        f"https://127.0.0.1:{run.metrics_port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(
            request, context=ssl.create_default_context(cafile=str(ca_file)), timeout=20
        ) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        run.check()  # a refusal of the operator's own review explains a 503 best
        raise ScenarioFailed(f"/metrics was refused: {error.code} {error.read()[:300]!r}") from None
    assert 'finetune_operator_progress_reports_total{reason="",result="accepted"}' in text, text[:2000]


def step_report_artifact(run: Run) -> dict:
    """The trainer's final report: the evaluation and the artifact it stored (here a local directory)."""
    artifact = run.tmp_path / f"{run.name}-artifact"
    artifact.mkdir()
    adapter_config = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 32,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "base_model_name_or_path": valid_job("alpha")["spec"]["model"]["uri"],
    }
    (artifact / "adapter_config.json").write_text(json.dumps(adapter_config))
    (artifact / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    manifest = manifest_of_directory(artifact)
    (artifact / MANIFEST_FILE_NAME).write_text(manifest.model_dump_json(by_alias=True))
    evaluation = {
        "task": {"baseLoss": 2.0, "adapterLoss": 1.5},
        "general": {"baseLoss": 2.5, "adapterLoss": 2.51},
        "gate": "Passed",
        "message": "passed",
    }
    artifact_report = {"uri": f"file://{artifact}/", "digest": manifest.digest, "sizeBytes": manifest.size_bytes}
    post_report(
        run, {"stage": "done", "step": 400, "totalSteps": 400, "evaluation": evaluation, "artifact": artifact_report}
    )
    return artifact_report


def step_publish(run: Run) -> None:
    """The succeeded job's ModelAdapter is created, then verified by the operator (its status written)."""
    ns = run.workload
    run.wait("alpha Published", condition_of(run, "alpha", "Published"))

    def ready():
        adapter = get(run.cluster, "modeladapters.finetune.dev", ns, "alpha")
        return adapter if ((adapter or {}).get("status") or {}).get("phase") == "Ready" else None

    adapter = run.wait("the ModelAdapter Ready", ready)
    assert adapter["spec"]["source"]["fineTuneJob"] == "alpha"


def step_succeed(run: Run, pod: dict, artifact: dict) -> None:
    """The pod exits 0 as its kubelet would report it: Succeeded, with Events telling the story, and its
    measured throughput the first row of the table in the operator's namespace (created)."""
    ns = run.workload
    succeed(run, pod, artifact)
    run.wait("alpha Succeeded", condition_of(run, "alpha", "Succeeded"))
    run.wait("the throughput table created with alpha's figure", lambda: len(throughput_row(run)) == 1)
    run.wait(
        "the operator's Events",
        lambda: (
            {"JobCreated", "TrainingSucceeded"}
            <= {e["reason"] for e in items(run.cluster, "events", ns) if e["involvedObject"]["name"] == "alpha"}
        ),
    )


def step_measured_estimate(run: Run, artifact: dict) -> None:
    """A second job of the same kind: its estimate uses alpha's measured figure (the table read), and its
    own figure joins the row (the table patched)."""
    ns = run.workload
    apply(run.cluster, training_job("delta", ns, resources={"gpusPerNode": 4, "cpu": "16", "memory": "64Gi"}))
    finish_preflight(run, "delta")

    def estimate():
        plan = (get(run.cluster, "ftj", ns, "delta").get("status") or {}).get("plan") or {}
        return plan.get("estimate")

    found = run.wait("delta's estimate", estimate)
    assert found["source"] == "measured" and found["samples"] == 1, found
    pod = run.wait(
        "delta's training pod Running",
        lambda: [
            p
            for p in items(run.cluster, "pods", ns, "finetune.dev/job=delta")
            if p["status"].get("phase") == "Running" and PREFLIGHT_ROLE_LABEL not in p["metadata"]["labels"]
        ],
    )[0]
    succeed(run, pod, artifact)
    run.wait("delta's figure added to the row", lambda: len(throughput_row(run)) == 2)


def step_delete(run: Run) -> None:
    """Deleting the job removes its children (ownerReferences; no finalizer of the operator's)."""
    ns = run.workload
    run.cluster.run_kubectl("delete", "ftj", "alpha", "-n", ns, "--timeout=30s")
    run.wait(
        "alpha's children garbage-collected",
        lambda: all(
            get(run.cluster, kind, ns, name) is None
            for kind, name in [
                ("job", "alpha"),
                ("configmap", "alpha-config"),
                ("service", "alpha"),
                ("serviceaccount", "alpha-trainer"),
            ]
        ),
        timeout=60,
    )


@dataclass
class Outcome:
    completed: bool
    failure: str
    allowed: set[tuple[str, str, str]]
    forbidden: list[dict]
    log: str


def run_scenario(run: Run) -> Outcome:
    failure = ""
    try:
        run.install()
        run.start_operator()
        step_lead(run)
        step_create(run)
        step_catalog(run)
        step_start_and_suspend(run)
        step_resize(run)
        pod = step_run(run)
        step_progress(run, pod)
        step_metrics(run)
        artifact = step_report_artifact(run)
        step_succeed(run, pod, artifact)
        step_publish(run)
        step_measured_estimate(run, artifact)
        step_delete(run)
        run.check()  # a refusal at the very end counts too
    except ScenarioFailed as error:
        failure = str(error)
    finally:
        log = run.operator.tail(80) if run.operator and run.operator.log_path.exists() else ""
        run.tear_down()
    return Outcome(
        completed=not failure,
        failure=failure,
        allowed=run.audit.allowed_requests() if run.audit else set(),
        forbidden=run.audit.forbidden() if run.audit else [],
        log=log,
    )


# -- the tests -----------------------------------------------------------------------------------------

_counter = iter(range(1000))


def run_name(mode: str) -> str:
    return f"rbac{next(_counter)}-{mode[:2]}"


@pytest.fixture(scope="module")
def baselines(rbac_cluster, tmp_path_factory) -> dict[str, Outcome]:
    """The scenario under the untrimmed chart RBAC, once per mode; what it exercised decides the skips."""
    return {
        mode: run_scenario(Run(rbac_cluster, mode, run_name(mode), tmp_path_factory.mktemp(mode)))
        for mode in ("clusterwide", "namespaced")
    }


@pytest.mark.parametrize("mode", ["clusterwide", "namespaced"])
def test_the_operator_passes_the_core_scenario_with_the_charts_rbac_alone(baselines, mode):
    outcome = baselines[mode]
    for group, resource, verb in sorted(outcome.allowed):  # shown with -rP: what the scenario exercised
        print(f"{mode}: {verb} {resource}{'.' + group if group else ''}")
    assert outcome.completed, f"{outcome.failure}\n--- operator log ---\n{outcome.log}"
    assert not outcome.forbidden, [describe(e) for e in outcome.forbidden]


def test_every_request_of_the_operator_is_one_a_declared_rule_allows(baselines):
    declared = {p.request() for p in declared_permissions()}
    for mode, outcome in baselines.items():
        undeclared = outcome.allowed - declared
        assert not undeclared, f"{mode}: the operator made requests no rule of operator-rbac.yaml names: {undeclared}"


PERMISSIONS = declared_permissions()


@pytest.mark.parametrize("permission", PERMISSIONS, ids=[p.id for p in PERMISSIONS])
def test_without_this_verb_the_scenario_fails(rbac_cluster, baselines, tmp_path, permission):
    baseline = baselines[permission.mode]
    if not baseline.completed:
        pytest.fail(f"the {permission.mode} baseline failed, so no variant can be judged: {baseline.failure}")
    exercised = permission.request() in baseline.allowed
    if permission.planned and not exercised:
        pytest.skip(f"{permission.reason} (the operator makes no such request yet)")

    outcome = run_scenario(Run(rbac_cluster, permission.mode, run_name(permission.mode), tmp_path, removed=permission))

    assert not outcome.completed, (
        f"the scenario passed without {permission.verb} on {permission.resource}: the rule is not needed "
        f"(its reason: {permission.reason}); remove it from charts/finetune-operator/files/operator-rbac.yaml"
    )
    print(f"{permission.id}: {outcome.failure.splitlines()[0]}")  # shown with -rP: how it failed
    refused = [request_of(e) for e in outcome.forbidden]
    if permission.resource.endswith("/finalizers"):
        # Not a request of its own: the admission plugin refuses the creates whose ownerReferences block deletion.
        assert any("blockOwnerDeletion" in describe(e) for e in outcome.forbidden), outcome.failure
    else:
        assert permission.request() in refused, f"failed, but not for {permission.id}: {outcome.failure}"


def test_namespace_users_create_and_read_jobs_through_the_built_in_roles(rbac_cluster):
    """The user-facing ClusterRoles aggregate into admin, edit and view: no extra binding is needed."""
    cluster = rbac_cluster
    docs = render_chart("finetune-system", {})
    apply(cluster, *[d for d in docs if d["kind"] == "ClusterRole" and is_user_role(d)])
    namespace = "self-service"
    cluster.run_kubectl("create", "namespace", namespace)
    for user, role in [("alice", "edit"), ("bob", "view"), ("carol", "admin")]:
        cluster.run_kubectl(
            "create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}", "-n", namespace
        )

    def can(user: str, verb: str, resource: str, *flags: str) -> bool:
        result = cluster.run_kubectl(
            "auth", "can-i", verb, resource, *flags, "-n", namespace, f"--as={user}", check=False
        )
        return result.stdout.strip() == "yes"

    deadline = time.monotonic() + 30
    while not can("alice", "create", "finetunejobs.finetune.dev"):  # the aggregation controller catches up
        assert time.monotonic() < deadline, "the edit role never gained finetunejobs"
        time.sleep(0.5)
    for user in ("alice", "carol"):
        for resource in ("finetunejobs.finetune.dev", "modeladapters.finetune.dev"):
            for verb in ("create", "get", "list", "watch", "patch", "delete"):
                assert can(user, verb, resource), (user, verb, resource)
        assert not can(user, "patch", "finetunejobs.finetune.dev", "--subresource=status"), "status is the operator's"
    for resource in ("finetunejobs.finetune.dev", "modeladapters.finetune.dev"):
        assert can("bob", "get", resource) and can("bob", "list", resource) and can("bob", "watch", resource)
        assert not can("bob", "create", resource) and not can("bob", "delete", resource)
    assert not can("dave", "get", "finetunejobs.finetune.dev"), "unbound users get nothing"


def test_catalog_readers_read_the_catalog_and_no_namespace_role_writes_it(rbac_cluster):
    """FineTuneModels are cluster-scoped: a namespace's admin cannot write (or even read) them through the
    aggregated roles; rbac.catalogReaders binds the catalog-reader role, which reads and never writes."""
    cluster = rbac_cluster
    docs = render_chart("finetune-system", {"rbac": {"catalogReaders": [{"kind": "User", "name": "erin"}]}})
    catalog_rbac = [d for d in docs if d["metadata"]["name"].endswith("-catalog-reader")]
    assert {d["kind"] for d in catalog_rbac} == {"ClusterRole", "ClusterRoleBinding"}
    apply(cluster, *[d for d in docs if d["kind"] == "ClusterRole" and is_user_role(d)], *catalog_rbac)
    namespace = "catalog-tenant"
    cluster.run_kubectl("create", "namespace", namespace)
    cluster.run_kubectl("create", "rolebinding", "frank-admin", "--clusterrole=admin", "--user=frank", "-n", namespace)

    def can(user: str, verb: str, *flags: str) -> bool:
        result = cluster.run_kubectl(
            "auth", "can-i", verb, "finetunemodels.finetune.dev", *flags, f"--as={user}", check=False
        )
        return result.stdout.strip() == "yes"

    deadline = time.monotonic() + 30
    while not can("erin", "list"):  # the binding is effective a moment after it is created
        assert time.monotonic() < deadline, "the catalog reader never could list"
        time.sleep(0.5)
    assert can("erin", "get") and can("erin", "watch")
    for user in ("erin", "frank"):
        for verb in ("create", "patch", "update", "delete"):
            assert not can(user, verb), (user, verb)
            assert not can(user, verb, "-n", namespace), (user, verb, namespace)
    assert not can("frank", "list") and not can("frank", "get", "-n", namespace)


def test_an_unreadable_throughput_table_leaves_the_default_estimate_and_the_job_goes_on(rbac_cluster, tmp_path):
    """Under RBAC without `get` on the table (as the chart had before preflight's rules), the read is
    refused: the estimate falls back to the default figures with a warning, and the job is planned."""
    (refused,) = [p for p in PERMISSIONS if p.scope == "operator" and p.resource == "configmaps" and p.verb == "get"]
    run = Run(rbac_cluster, refused.mode, run_name(refused.mode), tmp_path, removed=refused)
    try:
        run.install()
        run.start_operator()
        apply(run.cluster, training_job("alpha", run.workload, suspend=True))
        pods = wait_for(
            "alpha's preflight pod",
            lambda: items(
                run.cluster, "pods", run.workload, f"finetune.dev/job=alpha,{PREFLIGHT_ROLE_LABEL}=preflight"
            ),
        )
        plan = PreflightPlan(parameters=494_000_000, total_steps=400, trained_tokens=PLANNED_TOKENS)
        report = PreflightReport(outcome="Planned", plan=plan).to_message()
        patch_pod_status(run.cluster, run.workload, pods[0]["metadata"]["name"], 0, report)

        def planned():
            ftj = get(run.cluster, "ftj", run.workload, "alpha")
            found = condition(ftj, "Planned")
            return ftj if found and found["status"] == "True" else None

        ftj = wait_for("alpha Planned", planned, timeout=STEP_TIMEOUT)
        assert ftj["status"]["plan"]["estimate"]["source"] == "default", ftj["status"]["plan"]
        assert ("", "configmaps", "get") in [request_of(e) for e in run.audit.forbidden()]
        assert "could not read the throughput table" in run.operator.tail(200)
        assert condition(ftj, "Failed") is None
    finally:
        run.tear_down()
