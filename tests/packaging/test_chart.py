"""The Helm chart: it lints, renders valid manifests for the cluster's Kubernetes version with default values
and with every option on, grants the operator exactly the permissions files/operator-rbac.yaml declares,
and configures the operator with settings the operator itself accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from chartkit import CHART, RELEASE_NAMESPACE, REPO, kubeconform, operator_rbac, write_schemas

ALL_FEATURES = {
    "operator": {
        "logFormat": "text",
        "logLevel": "DEBUG",
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    },
    "trainer": {"image": {"repository": "registry.example/trainer", "tag": "1.2.3"}},
    "verifier": {
        "imagePullSecrets": ["registry-creds"],
        "nodeSelector": {"pool": "cpu", "zone": "a"},
        "tolerations": [
            {"key": "dedicated", "value": "cpu", "effect": "NoSchedule"},
            {"key": "spot", "effect": "NoExecute"},
        ],
    },
    "output": {
        "defaultUri": "s3://adapters/",
        "sts": {
            "credentialsSecret": "sts-minter",
            "endpoint": "https://sts.example",
            "roleArn": "arn:aws:iam::123456789012:role/finetune-jobs",
            "durationSeconds": 1800,
            "region": "eu-west-1",
        },
    },
    "storage": {
        "endpoint": "http://minio.storage.svc:9000",
        "allowedEndpoints": ["https://s3.example.com", "http://10.0.0.5:9000"],
        "verificationTimeoutSeconds": 120,
    },
    "progress": {"tls": {"secretName": "progress-tls"}, "url": "https://progress.example:8443"},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "readers": [{"name": "prometheus", "namespace": "monitoring"}],
    },
    "networkPolicy": {
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "observability"}}, "podSelector": {}}],
        "extraIngress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 8081}]}],
    },
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    "crds": {"asTemplates": True},
    "image": {"digest": "sha256:" + "a" * 64},
    "imagePullSecrets": ["registry-creds"],
    "podAnnotations": {"example.com/team": "ml-platform"},
    "priorityClassName": "system-cluster-critical",
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
}
NAMESPACED = {"operator": {"watchNamespaces": ["team-a", "team-b"]}}
STS_OUTPUT = {"defaultUri": "s3://adapters/", "sts": {"credentialsSecret": "sts-minter"}}
EVERYTHING_NAMESPACED = {**ALL_FEATURES, "operator": {**ALL_FEATURES["operator"], **NAMESPACED["operator"]}}


def docs_of(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [
        d
        for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]


def validate(tools, openapi, tmp_path, text: str) -> subprocess.CompletedProcess:
    kinds = {(d["apiVersion"], d["kind"]) for d in docs_of(text)}
    return kubeconform(tools, text, write_schemas(openapi, kinds, tmp_path / "schemas"))


# -- lint and schema validation --------------------------------------------------------------------


def test_helm_lint_passes_in_strict_mode(tools):
    result = tools.run_helm("lint", str(CHART), "--strict", "--namespace", RELEASE_NAMESPACE)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", [ALL_FEATURES, EVERYTHING_NAMESPACED], ids=["clusterwide", "namespaced"])
def test_helm_lint_passes_with_every_feature_on(tools, tmp_path, values):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    tools.run_helm("lint", str(CHART), "--strict", "--values", str(values_file))


@pytest.mark.parametrize(
    "values",
    [
        {},
        NAMESPACED,
        ALL_FEATURES,
        EVERYTHING_NAMESPACED,
        {"progress": {"enabled": False}, "metrics": {"enabled": False}},
    ],
    ids=["default", "namespaced", "all-features", "all-features-namespaced", "no-endpoints"],
)
def test_rendered_manifests_pass_kubeconform_strict_for_the_clusters_kubernetes_version(
    tools, openapi, tmp_path, values
):
    result = validate(tools, openapi, tmp_path, tools.template(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, result.stdout


def test_every_feature_renders_every_kind(tools):
    kinds = {d["kind"] for d in tools.render(EVERYTHING_NAMESPACED)}
    assert kinds == {
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }


def test_the_top_level_crds_pass_kubeconform_strict(tools, openapi, tmp_path):
    text = "\n---\n".join(path.read_text() for path in sorted((REPO / "crds").glob("*.yaml")))
    result = validate(tools, openapi, tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubeconform_rejects_a_field_the_api_does_not_define(tools, openapi, tmp_path):
    """The validation above is strict for real: a misspelled field fails it."""
    docs = tools.render()
    (deployment,) = find(docs, "Deployment")
    deployment["spec"]["replica"] = 1
    result = validate(tools, openapi, tmp_path, yaml.safe_dump_all(docs))
    assert result.returncode != 0
    assert "replica" in result.stdout


def test_kubeconform_rejects_a_misspelled_service_monitor_field(tools, openapi, tmp_path):
    docs = tools.render(ALL_FEATURES)
    (monitor,) = find(docs, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    result = validate(tools, openapi, tmp_path, yaml.safe_dump_all(docs))
    assert result.returncode != 0 and "intervall" in result.stdout


@pytest.mark.parametrize(
    "uri",
    ["s3://adapters/", "s3://a.b-c/prefix/x", "pvc://outputs/finetune", "s3://My_Bucket/x", "s3://ab", "pvc://Claim/x"],
)
def test_the_default_output_the_schema_accepts_is_one_the_operator_accepts(uri):
    import re

    from finetune_operator.settings import Settings, SettingsError

    pattern = json.loads((CHART / "values.schema.json").read_text())["properties"]["output"]["properties"]
    schema_accepts = re.fullmatch(pattern["defaultUri"]["pattern"].removeprefix("^").removesuffix("$"), uri) is not None
    try:
        Settings(default_output_uri=uri)
        operator_accepts = True
    except (ValueError, SettingsError):
        operator_accepts = False
    assert schema_accepts == operator_accepts


@pytest.mark.parametrize(
    "endpoint",
    ["http://minio.storage.svc:9000", "https://s3.example.com/", "http://10.0.0.5", "minio:9000", "http://minio/path"],
)
def test_an_s3_endpoint_the_schema_accepts_is_one_the_operator_accepts(endpoint):
    import re

    from finetune_operator.settings import Settings

    pattern = json.loads((CHART / "values.schema.json").read_text())["properties"]["storage"]["properties"]
    schema_accepts = (
        re.fullmatch(pattern["endpoint"]["pattern"].removeprefix("^").removesuffix("$"), endpoint) is not None
    )
    try:
        Settings(s3_endpoint=endpoint, allowed_s3_endpoints=[endpoint])
        operator_accepts = True
    except ValueError:
        operator_accepts = False
    assert schema_accepts == operator_accepts


@pytest.mark.parametrize(
    "values, message",
    [
        ({"operator": {"logFormat": "xml"}}, "logFormat"),
        ({"operator": {"watchNamespace": ["a"]}}, "watchNamespace"),
        ({"output": {"defaultUri": "http://bucket/"}}, "defaultUri"),
        ({"output": {"defaultUri": "s3://My_Bucket/x"}}, "defaultUri"),
        ({"livenessProbe": {"successThreshold": 2}}, "successThreshold"),
        ({"verifier": {"imagePullSecrets": ["Bad Name"]}}, "imagePullSecrets"),
        ({"progress": {"url": "http://operator:8443"}}, "url"),
        ({"trainer": {"terminationGraceSeconds": 5}}, "terminationGraceSeconds"),
        ({"operator": {"watchNamespaces": ["Team_A"]}}, "watchNamespaces"),
        ({"metrics": {"readers": [{"name": "prometheus"}]}}, "namespace"),
        ({"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabel": {}}}]}}, "matchLabel"),
        ({"networkPolicy": {"metricsFrom": []}}, "metricsFrom"),
        ({"storage": {"endpoint": "minio:9000"}}, "endpoint"),
        ({"storage": {"allowedEndpoints": ["http://minio/bucket"]}}, "allowedEndpoints"),
        ({"leaderElection": {"leaseDuration": 15}}, "leaseDuration"),
        ({"replicas": 0}, "replicas"),
        ({"rbac": {"catalogReaders": [{"kind": "ServiceAccount", "name": "api"}]}}, "namespace"),
        ({"rbac": {"catalogReaders": [{"kind": "Team", "name": "a"}]}}, "kind"),
    ],
    ids=[
        "log-format",
        "misspelled-key",
        "output-scheme",
        "output-bucket-name",
        "liveness-success-threshold",
        "pull-secret-name",
        "progress-http",
        "grace-too-short",
        "namespace-name",
        "metrics-reader-without-namespace",
        "network-policy-selector",
        "network-policy-admitting-everyone",
        "storage-endpoint-scheme",
        "storage-endpoint-path",
        "leader-election-key",
        "no-replica",
        "catalog-reader-account-without-namespace",
        "catalog-reader-kind",
    ],
)
def test_values_schema_refuses_bad_values_naming_them(tools, tmp_path, values, message):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    result = tools.run_helm("template", "x", str(CHART), "--values", str(values_file), check=False)
    assert result.returncode != 0
    assert message in result.stderr


# -- CRDs ------------------------------------------------------------------------------------------


def test_chart_crds_are_identical_to_the_top_level_crds():
    top = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert chart == top, "charts/finetune-operator/crds/ is stale: run `make crds` (it copies crds/ there)"


def test_crds_are_not_templates_by_default(tools):
    assert not find(tools.render(), "CustomResourceDefinition")


def test_crds_as_templates_are_the_crds_kept_on_uninstall_and_synced_first(tools):
    rendered = {
        d["metadata"]["name"]: d
        for d in find(tools.render({"crds": {"asTemplates": True}}), "CustomResourceDefinition")
    }
    for path in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        got = rendered.pop(crd["metadata"]["name"])
        annotations = got["metadata"].pop("annotations")
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert annotations["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false"  # Argo CD's keep
        assert int(annotations["argocd.argoproj.io/sync-wave"]) < 0
        assert got == crd
    assert not rendered


def test_crds_as_templates_without_keep_have_no_resource_policy(tools):
    for crd in find(tools.render({"crds": {"asTemplates": True, "keep": False}}), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"]["annotations"]
        assert "argocd.argoproj.io/sync-options" not in crd["metadata"]["annotations"]


# -- the operator's RBAC ---------------------------------------------------------------------------


def expected_rules(values: dict, scopes: set[str]) -> set[tuple]:
    """files/operator-rbac.yaml read independently of the template: (groups, resources, verbs) per rule."""
    namespaced = bool(values.get("operator", {}).get("watchNamespaces"))
    progress = values.get("progress", {}).get("enabled", True)
    metrics = values.get("metrics", {}).get("enabled", True)
    conditions = {
        "clusterwide": not namespaced,
        "namespaced": namespaced,
        "progress": progress,
        "metrics": metrics,
        "httpsEndpoints": progress or metrics,
        "selfSignedTLS": (progress or metrics) and not values.get("progress", {}).get("tls", {}).get("secretName"),
        "sts": bool(values.get("output", {}).get("sts", {}).get("credentialsSecret")),
        "leaderElection": values.get("leaderElection", {}).get("enabled", True),
        "preflight": values.get("preflight", {}).get("enabled", True),
        "cache": values.get("preflight", {}).get("enabled", True) and values.get("cache", {}).get("enabled", False),
    }
    return {
        (tuple(rule["apiGroups"]), tuple(rule["resources"]), tuple(sorted(rule["verbs"])))
        for rule in operator_rbac()
        if rule["scope"] in scopes and all(conditions[c] for c in rule.get("when", []))
    }


def rules_of(obj: dict) -> set[tuple]:
    return {(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in obj["rules"]}


PEOPLES_ROLES = ("-edit", "-view", "-metrics-reader", "-catalog-reader")


def operator_objects(docs: list[dict]) -> list[dict]:
    return [
        d for d in docs if d["kind"] in ("ClusterRole", "Role") and not d["metadata"]["name"].endswith(PEOPLES_ROLES)
    ]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"progress": {"enabled": False}},
        {"progress": {"tls": {"secretName": "progress-tls"}}},
        NAMESPACED,
        {**NAMESPACED, "progress": {"tls": {"secretName": "progress-tls"}}},
        {**NAMESPACED, "progress": {"enabled": False}},
        {"metrics": {"enabled": False}},
        {"progress": {"enabled": False}, "metrics": {"enabled": False}},
        {**NAMESPACED, "progress": {"enabled": False}, "metrics": {"enabled": False}},
        {"output": STS_OUTPUT},
        {**NAMESPACED, "output": STS_OUTPUT},
        {"leaderElection": {"enabled": False}, "replicas": 1},
        {"preflight": {"enabled": False}},
        {**NAMESPACED, "preflight": {"enabled": False}},
        {"cache": {"enabled": True}},
        {**NAMESPACED, "cache": {"enabled": True}},
        {"preflight": {"enabled": False}, "cache": {"enabled": True}},
    ],
    ids=[
        "clusterwide",
        "no-progress",
        "tls-secret",
        "namespaced",
        "namespaced-tls-secret",
        "namespaced-no-progress",
        "no-metrics",
        "no-endpoints",
        "namespaced-no-endpoints",
        "sts",
        "namespaced-sts",
        "no-leader-election",
        "no-preflight",
        "namespaced-no-preflight",
        "cache",
        "namespaced-cache",
        "cache-without-preflight",
    ],
)
def test_the_operator_gets_exactly_the_declared_rules(tools, values):
    docs = tools.render(values)
    namespaced = bool(values.get("operator", {}).get("watchNamespaces"))
    by_place = {(d["kind"], d["metadata"].get("namespace")): rules_of(d) for d in operator_objects(docs)}
    expected = {}
    if cluster_rules := expected_rules(values, {"cluster"} if namespaced else {"cluster", "watched"}):
        expected[("ClusterRole", None)] = cluster_rules
    for namespace in values.get("operator", {}).get("watchNamespaces", []):
        expected[("Role", namespace)] = expected_rules(values, {"watched"})
    if own := expected_rules(values, {"operator"}):
        expected[("Role", RELEASE_NAMESPACE)] = own
    assert by_place == expected


def test_every_operator_role_is_bound_to_the_operators_service_account(tools):
    docs = tools.render(EVERYTHING_NAMESPACED)
    (account,) = find(docs, "ServiceAccount")
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in operator_objects(docs)}
    bound = set()
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        if binding["roleRef"]["name"].endswith(PEOPLES_ROLES):
            continue
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": RELEASE_NAMESPACE}
        ]
        kind = binding["roleRef"]["kind"]
        bound.add((kind, binding["metadata"].get("namespace") if kind == "Role" else None, binding["roleRef"]["name"]))
    assert bound == roles


def test_no_rule_of_the_chart_uses_a_wildcard(tools):
    for doc in find(tools.render(EVERYTHING_NAMESPACED), "ClusterRole") + find(tools.render(ALL_FEATURES), "Role"):
        for rule in doc["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (doc["metadata"]["name"], rule)


def test_every_declared_verb_says_which_code_needs_it():
    for rule in operator_rbac():
        assert rule["scope"] in ("watched", "cluster", "operator")
        assert set(rule.get("when", [])) <= {
            "clusterwide",
            "namespaced",
            "progress",
            "metrics",
            "httpsEndpoints",
            "selfSignedTLS",
            "sts",
            "leaderElection",
            "preflight",
            "cache",
        }
        for verb, reason in rule["verbs"].items():
            assert verb in {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
            assert isinstance(reason, str) and len(reason) > 10, (rule["resources"], verb)


def test_rbac_create_false_renders_no_rbac(tools):
    kinds = {d["kind"] for d in tools.render({"rbac": {"create": False}})}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_user_roles_aggregate_to_the_built_in_admin_edit_and_view_roles(tools):
    docs = tools.render()
    (edit,) = find(docs, "ClusterRole", "fto-finetune-operator-edit")
    (view,) = find(docs, "ClusterRole", "fto-finetune-operator-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    (edit_rule,) = edit["rules"]
    assert set(edit_rule["resources"]) == {"finetunejobs", "modeladapters"}, "status stays the operator's"
    assert {"create", "delete", "patch", "update"} <= set(edit_rule["verbs"])
    (view_rule,) = view["rules"]
    assert set(view_rule["verbs"]) == {"get", "list", "watch"}


# -- the Deployment --------------------------------------------------------------------------------


def operator_container(docs: list[dict]) -> dict:
    (deployment,) = find(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


POD_NAME = "fto-finetune-operator-6d5f7c9b8-x2x9q"
DOWNWARD_API = {"metadata.namespace": RELEASE_NAMESPACE, "metadata.name": POD_NAME}


def environment(container: dict) -> dict[str, str]:
    env = {}
    for var in container["env"]:
        if "valueFrom" in var:
            (field,) = var["valueFrom"]["fieldRef"].values()
            env[var["name"]] = DOWNWARD_API[field]
        else:
            env[var["name"]] = var["value"]
    return env


@pytest.mark.parametrize("values", [{}, NAMESPACED, ALL_FEATURES], ids=["default", "namespaced", "all-features"])
def test_the_operator_accepts_the_settings_the_deployment_gives_it(tools, values):
    from finetune_operator.__main__ import parse
    from finetune_operator.settings import from_arguments

    container = operator_container(tools.render(values))
    env = {k: v for k, v in environment(container).items() if k.startswith("FINETUNE_")}
    settings = from_arguments(parse(container["args"]), environ=env)
    assert settings.namespaces == sorted(values.get("operator", {}).get("watchNamespaces", []))
    assert settings.operator_namespace == RELEASE_NAMESPACE
    assert settings.progress_port == 8443 and settings.metrics_port == 8080
    assert settings.progress_url.startswith("https://")
    if values is ALL_FEATURES:
        assert settings.progress_tls_secret == f"{RELEASE_NAMESPACE}/progress-tls"
        assert settings.trainer_image == "registry.example/trainer:1.2.3"
        assert settings.default_output_uri == "s3://adapters/" and settings.default_output_secret is None
        assert settings.sts_enabled and settings.sts_credentials_secret == "sts-minter"
        assert (settings.sts_endpoint, settings.sts_region) == ("https://sts.example", "eu-west-1")
        assert settings.sts_role_arn == "arn:aws:iam::123456789012:role/finetune-jobs"
        assert settings.sts_duration_seconds == 1800
        assert settings.allowed_endpoints == {
            "http://minio.storage.svc:9000",
            "https://s3.example.com:443",
            "http://10.0.0.5:9000",
        }
        assert settings.verification_timeout_seconds == 120
        assert settings.verifier_image == f"ghcr.io/finetune-operator/operator@sha256:{'a' * 64}"
        assert settings.verifier_node_selector == {"pool": "cpu", "zone": "a"}
        assert settings.verifier_image_pull_policy == "IfNotPresent"
        assert settings.verifier_image_pull_secrets == ["registry-creds"]
        assert settings.verifier_tolerations == [
            {"key": "dedicated", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"},
            {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
        ]
    else:
        assert settings.allowed_endpoints == frozenset() and settings.verification_timeout_seconds == 300
    assert not settings.allow_local_files  # local mode reads the operator's own files: never in a cluster
    assert settings.elects_leader and settings.pod_name == POD_NAME
    assert (
        settings.leader_election_lease_duration_seconds,
        settings.leader_election_renew_deadline_seconds,
        settings.leader_election_retry_period_seconds,
    ) == (15, 10, 2)


def test_every_environment_variable_the_chart_sets_is_an_operator_setting(tools):
    result = subprocess.run(
        [sys.executable, "-m", "finetune_operator", "--help"], capture_output=True, text=True, check=True, cwd=REPO
    )
    known = set(re.findall(r"\(env\s+(FINETUNE_[A-Z0-9_]+)\)", result.stdout))
    container = operator_container(tools.render(ALL_FEATURES))
    assert {v["name"] for v in container["env"] if v["name"].startswith("FINETUNE_")} <= known


def test_the_default_trainer_image_is_the_operators_default():
    from finetune_operator.settings import DEFAULT_TRAINER_IMAGE

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = values["trainer"]["image"]
    assert f"{image['repository']}:{image['tag'] or chart['appVersion']}" == DEFAULT_TRAINER_IMAGE


def test_two_elected_replicas_run_by_default_and_roll_without_a_gap(tools):
    (deployment,) = find(tools.render(), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_the_pod_name_is_the_identity_in_the_lease(tools):
    container = operator_container(tools.render())
    (pod_name,) = [v for v in container["env"] if v["name"] == "FINETUNE_POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_lease_settings_reach_the_operator(tools):
    values = {"leaderElection": {"leaseDurationSeconds": 30, "renewDeadlineSeconds": 20, "retryPeriodSeconds": 4}}
    env = environment(operator_container(tools.render(values)))
    assert env["FINETUNE_LEADER_ELECTION_LEASE_DURATION_SECONDS"] == "30"
    assert env["FINETUNE_LEADER_ELECTION_RENEW_DEADLINE_SECONDS"] == "20"
    assert env["FINETUNE_LEADER_ELECTION_RETRY_PERIOD_SECONDS"] == "4"


def test_without_leader_election_one_operator_runs_replaced_never_alongside_another(tools):
    docs = tools.render({"leaderElection": {"enabled": False}, "replicas": 1})
    (deployment,) = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = environment(operator_container(docs))
    assert env["FINETUNE_LEADER_ELECTION"] == "false" and "FINETUNE_POD_NAME" not in env
    assert not [d for d in docs if d["kind"] == "Role" and "leases" in str(d["rules"])]


def test_the_chart_refuses_two_replicas_without_leader_election(tools, tmp_path):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps({"leaderElection": {"enabled": False}}))
    result = tools.run_helm("template", "x", str(CHART), "--values", str(values_file), check=False)
    assert result.returncode != 0
    assert "leaderElection.enabled" in result.stderr


def test_the_lease_permissions_name_the_lease_except_create_which_cannot(tools):
    (own,) = [
        d for d in find(tools.render(), "Role", namespace=RELEASE_NAMESPACE) if d["metadata"]["name"].endswith("-self")
    ]
    lease_rules = [r for r in own["rules"] if r["resources"] == ["leases"]]
    assert sorted((r["verbs"], r.get("resourceNames")) for r in lease_rules) == [
        (["create"], None),
        (["get", "update"], ["finetune-operator"]),
    ]
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in lease_rules)


def own_configmap_rules(docs: list[dict]) -> list[tuple]:
    own = [d for d in find(docs, "Role", namespace=RELEASE_NAMESPACE) if d["metadata"]["name"].endswith("-self")]
    return sorted(
        (r["verbs"], r.get("resourceNames")) for d in own for r in d["rules"] if r["resources"] == ["configmaps"]
    )


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["clusterwide", "namespaced"])
def test_the_throughput_table_permissions_name_the_configmap_except_create_which_cannot(tools, values):
    """planning.py reads and writes the ConfigMap finetune-throughput in the operator's namespace, which the
    cache (the jobs' own ConfigMaps, by label, in the watched namespaces) never answers for."""
    assert own_configmap_rules(tools.render(values)) == [
        (["create"], None),
        (["get", "patch"], ["finetune-throughput"]),
    ]


def test_without_preflight_the_operator_has_no_configmap_rule_in_its_own_namespace(tools):
    assert own_configmap_rules(tools.render({"preflight": {"enabled": False}})) == []


def test_the_service_sends_connections_to_the_leaders_pod_only(tools):
    from finetune_operator.pod_role import LEADER, ROLE_LABEL

    docs = tools.render()
    (service,) = find(docs, "Service")
    (deployment,) = find(docs, "Deployment")
    pods = deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == {**pods, ROLE_LABEL: LEADER}
    # The mark is the leader's to set: no pod carries it from the template, and the Deployment's own selector
    # (immutable) does not need it.
    assert ROLE_LABEL not in deployment["spec"]["template"]["metadata"]["labels"]
    assert ROLE_LABEL not in pods


def test_without_leader_election_the_service_selects_the_only_pod(tools):
    from finetune_operator.pod_role import ROLE_LABEL

    docs = tools.render({"leaderElection": {"enabled": False}, "replicas": 1})
    (service,) = find(docs, "Service")
    (deployment,) = find(docs, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert ROLE_LABEL not in service["spec"]["selector"]


def pod_patchers(docs: list[dict]) -> list[tuple[str, str, str | None]]:
    """The operator's roles that may patch pods: kind, name, namespace."""
    return [
        (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
        for d in operator_objects(docs)
        for rule in d["rules"]
        if "pods" in rule["resources"] and "patch" in rule["verbs"]
    ]


@pytest.mark.parametrize("values", [{}, EVERYTHING_NAMESPACED], ids=["clusterwide", "namespaced"])
def test_the_operator_may_patch_pods_in_its_own_namespace_only(tools, values):
    assert pod_patchers(tools.render(values)) == [("Role", "fto-finetune-operator-self", RELEASE_NAMESPACE)]


def test_without_leader_election_the_operator_patches_no_pod(tools):
    assert pod_patchers(tools.render({"leaderElection": {"enabled": False}, "replicas": 1})) == []


def test_the_replicas_prefer_different_nodes(tools):
    (deployment,) = find(tools.render(), "Deployment")
    (term,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_an_affinity_of_yours_replaces_the_default_anti_affinity(tools):
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    (deployment,) = find(tools.render({"affinity": affinity}), "Deployment")
    assert deployment["spec"]["template"]["spec"]["affinity"] == affinity


def test_the_disruption_budget_lets_one_pod_go_at_a_time_and_never_blocks_on_an_unhealthy_one(tools):
    docs = tools.render()
    (budget,) = find(docs, "PodDisruptionBudget")
    (deployment,) = find(docs, "Deployment")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert not find(tools.render({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


def test_the_operator_pod_meets_the_restricted_pod_security_standard(tools):
    (deployment,) = find(tools.render(ALL_FEATURES), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] != 0
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in volume for volume in pod["volumes"])


def test_liveness_probes_healthz_and_readiness_probes_readyz(tools):
    container = operator_container(tools.render())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert str(ports["health"]) == environment(container)["FINETUNE_HEALTH_PORT"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_the_service_exposes_progress_on_8443_and_metrics_on_8080(tools):
    docs = tools.render()
    (service,) = find(docs, "Service")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"progress": (8443, "progress"), "metrics": (8080, "metrics")}
    assert {p["name"]: p["appProtocol"] for p in service["spec"]["ports"]} == {"progress": "https", "metrics": "https"}
    container = operator_container(docs)
    assert {p["name"] for p in container["ports"]} >= {"progress", "metrics"}
    env = environment(container)
    assert env["FINETUNE_PROGRESS_URL"] == f"https://fto-finetune-operator.{RELEASE_NAMESPACE}.svc:8443"


def test_disabled_endpoints_are_off_in_the_operator_and_absent_from_the_service(tools):
    docs = tools.render({"progress": {"enabled": False}, "metrics": {"enabled": False}})
    assert not find(docs, "Service")
    env = environment(operator_container(docs))
    assert env["FINETUNE_PROGRESS_PORT"] == "0" and env["FINETUNE_METRICS_PORT"] == "0"


def test_the_pod_monitor_selects_trainer_pods_in_the_watched_namespaces(tools):
    from finetune_operator.naming import child_labels

    (monitor,) = find(tools.render(EVERYTHING_NAMESPACED), "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= child_labels("any-job").items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    (everywhere,) = find(tools.render(ALL_FEATURES), "PodMonitor")
    assert everywhere["spec"]["namespaceSelector"] == {"any": True}


# -- who may read /metrics, who may connect at all --------------------------------------------------


def test_the_metrics_reader_role_grants_get_on_metrics_and_nothing_else(tools):
    docs = tools.render()
    (reader,) = find(docs, "ClusterRole", "fto-finetune-operator-metrics-reader")
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert not [b for b in find(docs, "ClusterRoleBinding") if b["roleRef"]["name"] == reader["metadata"]["name"]]


def test_metrics_readers_are_bound_to_the_metrics_reader_role(tools):
    readers = [{"name": "prometheus", "namespace": "monitoring"}, {"name": "vmagent", "namespace": "vm"}]
    (binding,) = find(
        tools.render({"metrics": {"readers": readers}}), "ClusterRoleBinding", "fto-finetune-operator-metrics-reader"
    )
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "fto-finetune-operator-metrics-reader",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", **reader} for reader in readers]


def test_the_catalog_reader_role_reads_finetunemodels_and_is_bound_to_nobody_by_default(tools):
    docs = tools.render()
    (reader,) = find(docs, "ClusterRole", "fto-finetune-operator-catalog-reader")
    assert reader["rules"] == [
        {"apiGroups": ["finetune.dev"], "resources": ["finetunemodels"], "verbs": ["get", "list", "watch"]}
    ]
    assert not [b for b in find(docs, "ClusterRoleBinding") if b["roleRef"]["name"] == reader["metadata"]["name"]]


def test_catalog_readers_are_bound_to_the_catalog_reader_role(tools):
    readers = [
        {"kind": "Group", "name": "system:authenticated"},
        {"kind": "User", "name": "alice"},
        {"kind": "ServiceAccount", "name": "openai-api", "namespace": "finetune-system"},
    ]
    (binding,) = find(
        tools.render({"rbac": {"catalogReaders": readers}}),
        "ClusterRoleBinding",
        "fto-finetune-operator-catalog-reader",
    )
    assert binding["roleRef"]["name"] == "fto-finetune-operator-catalog-reader"
    assert binding["subjects"] == [
        {"kind": "Group", "name": "system:authenticated", "apiGroup": "rbac.authorization.k8s.io"},
        {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
        {"kind": "ServiceAccount", "name": "openai-api", "namespace": "finetune-system"},
    ]


def test_no_role_of_the_chart_lets_anyone_write_the_catalog(tools):
    for doc in find(tools.render(ALL_FEATURES), "ClusterRole") + find(tools.render(ALL_FEATURES), "Role"):
        for rule in doc["rules"]:
            if "finetunemodels" in rule.get("resources", []):
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, doc["metadata"]["name"]


def test_without_metrics_there_is_no_metrics_reader_role(tools):
    names = {
        d["metadata"]["name"]
        for d in tools.render({"metrics": {"enabled": False, "readers": [{"name": "p", "namespace": "m"}]}})
    }
    assert "fto-finetune-operator-metrics-reader" not in names


def test_the_service_monitor_scrapes_over_https_with_prometheus_token_and_verifies_the_operators_ca(tools):
    (monitor,) = find(tools.render({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert endpoint["tlsConfig"] == {
        "serverName": f"fto-finetune-operator.{RELEASE_NAMESPACE}.svc",
        "ca": {"secret": {"name": "finetune-operator-progress-ca", "key": "ca.crt"}},
    }
    with_secret = tools.render(
        {"metrics": {"serviceMonitor": {"enabled": True}}, "progress": {"tls": {"secretName": "operator-tls"}}}
    )
    (monitor,) = find(with_secret, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"] == {"secret": {"name": "operator-tls", "key": "ca.crt"}}


def test_the_service_monitor_takes_a_tls_config_of_yours(tools):
    values = {"metrics": {"serviceMonitor": {"enabled": True, "tlsConfig": {"insecureSkipVerify": True}}}}
    (monitor,) = find(tools.render(values), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["tlsConfig"] == {"insecureSkipVerify": True}


@pytest.mark.parametrize("values", [{}, {"progress": {"enabled": False}}], ids=["default", "metrics-only"])
def test_the_operators_own_certificate_names_the_host_the_service_monitor_verifies(tools, values):
    from finetune_operator.__main__ import parse
    from finetune_operator.progress.tls import hosts_for
    from finetune_operator.settings import from_arguments

    docs = tools.render({**values, "metrics": {"serviceMonitor": {"enabled": True}}})
    container = operator_container(docs)
    env = {k: v for k, v in environment(container).items() if k.startswith("FINETUNE_")}
    settings = from_arguments(parse(container["args"]), environ=env)
    (monitor,) = find(docs, "ServiceMonitor")
    assert settings.metrics_secure, "the chart serves /metrics over HTTPS, authorized"
    assert monitor["spec"]["endpoints"][0]["tlsConfig"]["serverName"] in hosts_for(settings)


def network_policy(docs: list[dict]) -> dict:
    (policy,) = find(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open: the API server, object stores"
    return policy


def rules_by_port(policy: dict) -> dict[int, list[dict]]:
    return {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"].get("ingress", [])}


def test_the_network_policy_admits_trainer_pods_to_progress_and_prometheus_to_metrics_only(tools):
    from finetune_operator.naming import child_labels

    docs = tools.render()
    policy = network_policy(docs)
    (deployment,) = find(docs, "Deployment")
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    rules = rules_by_port(policy)
    assert set(rules) == {8443, 8080}, "nothing but the two endpoints: kubelet probes come from the node"
    (trainers,) = rules[8443]
    assert trainers["namespaceSelector"] == {}, "trainer pods of every namespace"
    assert trainers["podSelector"]["matchLabels"].items() <= child_labels("any-job").items()
    assert rules[8080] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]


def test_the_network_policy_admits_trainers_of_the_watched_namespaces_only(tools):
    (trainers,) = rules_by_port(network_policy(tools.render(NAMESPACED)))[8443]
    assert trainers["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]
    }


def test_the_network_policy_follows_the_monitoring_selectors_and_extra_rules_given(tools):
    policy = network_policy(tools.render(ALL_FEATURES))
    rules = rules_by_port(policy)
    assert rules[8080] == [{"namespaceSelector": {"matchLabels": {"team": "observability"}}, "podSelector": {}}]
    assert rules[8081] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]


def test_the_network_policy_follows_the_ports_and_the_endpoints_enabled(tools):
    custom = rules_by_port(network_policy(tools.render({"progress": {"port": 9443}, "metrics": {"port": 9090}})))
    assert set(custom) == {9443, 9090}
    assert set(rules_by_port(network_policy(tools.render({"metrics": {"enabled": False}})))) == {8443}
    nothing = network_policy(tools.render({"progress": {"enabled": False}, "metrics": {"enabled": False}}))
    assert "ingress" not in nothing["spec"], "no endpoint: no connection is admitted"


def test_the_network_policy_can_be_switched_off(tools):
    assert not find(tools.render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# -- dashboard, NOTES, Argo CD ---------------------------------------------------------------------


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((CHART / "dashboards" / "finetune-operator.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    expressions += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return set(re.findall(r"\b(finetune_(?:operator|trainer)_[a-z_]+)", " ".join(expressions)))


def test_the_dashboard_queries_only_metrics_the_operator_exports():
    from finetune_operator.metrics import OperatorMetrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {m.name + suffix for m in OperatorMetrics().registry.collect() for suffix in suffixes[m.type]}
    operator_metrics = {m for m in dashboard_metrics() if m.startswith("finetune_operator_")}
    assert operator_metrics, "the dashboard shows the operator's metrics"
    assert operator_metrics <= exported, operator_metrics - exported


def test_the_dashboard_queries_only_metrics_the_trainer_exports(monkeypatch):
    from finetune_trainer import metrics_server
    from finetune_trainer.metrics_server import MetricsServer

    monkeypatch.setattr(metrics_server, "_gpu_memory_bytes", lambda: 0)  # as on a GPU, where that series exists
    server = MetricsServer(port=0, addr="127.0.0.1")
    try:
        suffixes = {"counter": ["_total"], "gauge": [""]}
        exported = {m.name + suffix for m in server.registry.collect() for suffix in suffixes[m.type]}
    finally:
        server.stop()
    trainer_metrics = {m for m in dashboard_metrics() if m.startswith("finetune_trainer_")}
    assert trainer_metrics, "the dashboard shows the trainer's metrics"
    assert trainer_metrics <= exported, trainer_metrics - exported


def test_the_service_monitor_keeps_the_jobs_own_namespace_label(tools):
    (monitor,) = find(tools.render({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_the_dashboard_is_shipped_in_a_config_map_for_grafanas_sidecar(tools):
    (config_map,) = find(tools.render({"grafanaDashboard": {"enabled": True}}), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["finetune-operator.json"])
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"FineTuneJobs by phase", "Loss", "Tokens per second", "Progress"} <= titles


def render_notes(tools, tmp_path, values: dict | None = None) -> str:
    """NOTES.txt as `helm install` prints it. `helm install --dry-run=client` insists on reaching a cluster
    (helm 3.19), so a copy of the chart renders the file through `tpl` in a ConfigMap of `helm template`."""
    chart = tmp_path / "finetune-operator"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-under-test.txt")
    (chart / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes-under-test.txt") . | toJson }}\n'
    )
    docs = docs_of(tools.template(values, chart=chart))
    (config_map,) = find(docs, "ConfigMap", "notes-under-test")
    return config_map["data"]["notes"]


def test_notes_tell_how_to_check_and_use_the_operator(tools, tmp_path):
    notes = render_notes(tools, tmp_path)
    assert "kubectl -n finetune-system rollout status deployment/fto-finetune-operator" in notes
    assert "all namespaces" in notes
    assert "every FineTuneJob must set spec.output.uri" in notes
    assert "admin or edit role" in notes


def test_notes_name_the_watched_namespaces_and_the_default_output(tools, tmp_path):
    notes = render_notes(tools, tmp_path, EVERYTHING_NAMESPACED)
    assert "the namespaces team-a, team-b" in notes
    assert "s3://adapters/ under <namespace>/, each job with credentials of its own" in notes
    assert "the Secret sts-minter (in finetune-system)" in notes
    assert "--skip-crds" in notes


def test_notes_tell_who_may_read_the_metrics(tools, tmp_path):
    notes = render_notes(tools, tmp_path)
    assert "bind the ClusterRole fto-finetune-operator-metrics-reader" in notes and "(metrics.readers)" in notes
    assert "networkPolicy.metricsFrom" in notes
    notes = render_notes(tools, tmp_path / "readers", ALL_FEATURES)
    assert "(bound now: monitoring/prometheus)" in notes


def test_argocd_cm_embeds_the_health_scripts_verbatim():
    config = yaml.safe_load((CHART / "argocd" / "argocd-cm.yaml").read_text())["data"]
    for kind, script in [("FineTuneJob", "finetunejob-health.lua"), ("ModelAdapter", "modeladapter-health.lua")]:
        assert config[f"resource.customizations.health.finetune.dev_{kind}"] == (CHART / "argocd" / script).read_text()


def test_argocd_ignore_resource_updates_covers_the_progress_churn():
    config = yaml.safe_load((CHART / "argocd" / "argocd-cm-ignore-resource-updates.yaml").read_text())["data"]
    pointers = yaml.safe_load(config["resource.customizations.ignoreResourceUpdates.finetune.dev_FineTuneJob"])
    assert "/status/progress" in pointers["jsonPointers"]
    assert "/status/phase" not in pointers["jsonPointers"] and "/status" not in pointers["jsonPointers"]


# -- storage isolation between namespaces ------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"defaultUri": "s3://adapters/", "credentialsSecret": "s3-creds"}, "sharedCredentialsAcknowledged"),
        ({**STS_OUTPUT, "credentialsSecret": "s3-creds"}, "unset output.credentialsSecret"),
        ({"defaultUri": "pvc://outputs/x", "sts": {"credentialsSecret": "sts-minter"}}, "s3:// output.defaultUri"),
    ],
    ids=["shared-secret-unacknowledged", "sts-and-a-shared-secret", "sts-without-s3"],
)
def test_the_chart_refuses_an_output_every_namespace_shares_keys_to(tools, tmp_path, output, message):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps({"output": output}))
    result = tools.run_helm("template", "x", str(CHART), "--values", str(values_file), check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    "output",
    [
        {"defaultUri": "s3://adapters/", "credentialsSecret": "s3-creds", "sharedCredentialsAcknowledged": True},
        STS_OUTPUT,
        {"defaultUri": "pvc://outputs/finetune", "credentialsSecret": "unused"},
        {"defaultUri": "s3://adapters/"},
    ],
    ids=["acknowledged", "sts", "volume", "no-shared-secret"],
)
def test_the_chart_accepts_an_output_without_shared_keys_or_with_them_acknowledged(tools, output):
    from finetune_operator.__main__ import parse
    from finetune_operator.settings import from_arguments

    container = operator_container(tools.render({"output": output}))
    env = {k: v for k, v in environment(container).items() if k.startswith("FINETUNE_")}
    settings = from_arguments(parse(container["args"]), environ=env)
    assert settings.default_output_uri == output["defaultUri"]
    assert settings.sts_enabled == ("sts" in output)


# -- the OpenAI-compatible API ---------------------------------------------------------------------

OPENAI_API = {
    "openaiApi": {
        "enabled": True,
        "tls": {"secretName": "openai-tls"},
        "files": {"uri": "s3://files/uploads/", "credentialsSecret": "files-keys", "jobDataSecret": "files-read"},
        "jobTemplate": {"nodeSelector": {"pool": "gpu"}, "priorityClassName": "training"},
    }
}
API_RULES = {
    (("authentication.k8s.io",), ("tokenreviews",), ("create",)),
    (("authorization.k8s.io",), ("subjectaccessreviews",), ("create",)),
    (("finetune.dev",), ("finetunemodels",), ("get", "list")),
    (("",), ("namespaces",), ("get",)),
}
TENANT_RULES = {
    (("finetune.dev",), ("finetunejobs",), ("get", "list", "create", "patch")),
    (("finetune.dev",), ("modeladapters",), ("get", "list", "delete")),
}


def openai_api_objects(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "openai-api"]


def test_the_openai_api_is_off_by_default(tools):
    assert openai_api_objects(tools.render({})) == []


@pytest.mark.parametrize("values", [OPENAI_API, {**OPENAI_API, **NAMESPACED}], ids=["clusterwide", "namespaced"])
def test_the_openai_api_renders_manifests_that_pass_kubeconform_strict(tools, openapi, tmp_path, values):
    result = validate(tools, openapi, tmp_path, tools.template(values))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_openai_api_gets_reviews_the_catalog_and_tenant_jobs_and_adapters_and_nothing_else(tools):
    docs = openai_api_objects(tools.render(OPENAI_API))
    (role,) = find(docs, "ClusterRole")
    assert rules_of(role) == API_RULES | TENANT_RULES
    (binding,) = find(docs, "ClusterRoleBinding")
    (account,) = find(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": RELEASE_NAMESPACE}
    ]


def test_with_watched_namespaces_the_openai_api_touches_jobs_and_adapters_only_there(tools):
    docs = openai_api_objects(tools.render({**OPENAI_API, **NAMESPACED}))
    (role,) = find(docs, "ClusterRole")
    assert rules_of(role) == API_RULES
    roles = {d["metadata"]["namespace"]: rules_of(d) for d in find(docs, "Role")}
    assert roles == {"team-a": TENANT_RULES, "team-b": TENANT_RULES}
    assert {d["metadata"]["namespace"] for d in find(docs, "RoleBinding")} == {"team-a", "team-b"}


def test_the_openai_api_runs_under_its_own_account_with_settings_it_accepts(tools):
    from finetune_operator.openai_api.settings import parse

    docs = tools.render(OPENAI_API)
    (deployment,) = find(openai_api_objects(docs), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "finetune_operator.openai_api"]
    assert pod["serviceAccountName"] == find(openai_api_objects(docs), "ServiceAccount")[0]["metadata"]["name"]
    operator = next(d for d in find(docs, "Deployment") if d is not deployment)
    assert pod["serviceAccountName"] != operator["spec"]["template"]["spec"]["serviceAccountName"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    settings = parse([], environ=environment(container))
    assert settings.files_uri == "s3://files/uploads/" and settings.job_data_secret == "files-read"
    assert settings.max_upload_bytes == 512 << 20 and settings.port == 8443
    assert settings.template_spec() == {"nodeSelector": {"pool": "gpu"}, "priorityClassName": "training"}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"tls": "openai-tls", "files-credentials": "files-keys"}


def test_the_openai_api_service_selects_its_pods_and_the_operators_service_does_not(tools):
    docs = tools.render(OPENAI_API)
    (api_service,) = find(openai_api_objects(docs), "Service")
    (api,) = find(openai_api_objects(docs), "Deployment")
    api_labels = api["spec"]["template"]["metadata"]["labels"]
    assert api_service["spec"]["selector"].items() <= api_labels.items()
    operator_service = next(d for d in find(docs, "Service") if d not in openai_api_objects(docs))
    assert not operator_service["spec"]["selector"].items() <= api_labels.items()


@pytest.mark.parametrize("missing", ["tls", "files"])
def test_the_openai_api_needs_its_certificate_and_files_location(tools, tmp_path, missing):
    values = json.loads(json.dumps(OPENAI_API))
    del values["openaiApi"][missing]
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    result = tools.run_helm("template", "x", str(CHART), "--values", str(values_file), check=False)
    assert result.returncode != 0
    assert f"openaiApi.{missing}." in result.stderr
