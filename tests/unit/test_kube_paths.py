"""The one Kube client builds every API path from checked, escaped segments: a name never addresses another object."""

from __future__ import annotations

import pytest
from finetune_operator.connection import Connection
from finetune_operator.kube import FINETUNEJOBS, KINDS, LEASES, PODS, SECRETS, TOKENREVIEWS, InvalidApiPath, Kube
from finetune_operator.rest import RestClient, request_labels


def test_paths_of_collections_objects_and_subresources():
    assert PODS.path() == "/api/v1/pods"
    assert PODS.path("team-a") == "/api/v1/namespaces/team-a/pods"
    assert PODS.path("team-a", "demo-0-x7k2p") == "/api/v1/namespaces/team-a/pods/demo-0-x7k2p"
    assert (
        FINETUNEJOBS.path("team-a", "demo", "status")
        == "/apis/finetune.dev/v1alpha1/namespaces/team-a/finetunejobs/demo/status"
    )
    assert TOKENREVIEWS.path() == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert LEASES.path("finetune-system", "finetune-operator") == (
        "/apis/coordination.k8s.io/v1/namespaces/finetune-system/leases/finetune-operator"
    )
    assert KINDS["Lease"] is LEASES


def test_names_may_be_dns_subdomains():
    assert SECRETS.path("team-a", "tls.example.com") == "/api/v1/namespaces/team-a/secrets/tls.example.com"


@pytest.mark.parametrize(
    "name",
    [
        "x%2F..%2F..%2Fkube-system%2Fsecrets%2Fx",
        "../../kube-system/secrets/x",
        "..",
        ".",
        "demo?watch=true",
        "demo#fragment",
        "a/b",
        "Demo",
        "",
        "a" * 254,
        "-demo",
        "demo..x",
    ],
)
def test_a_name_that_is_not_a_dns_subdomain_is_refused(name):
    with pytest.raises(InvalidApiPath, match=r"name .* is not a DNS-1123 subdomain"):
        SECRETS.path("team-a", name)


@pytest.mark.parametrize("namespace", ["kube-system/secrets", "..", "team.a", "Team", "", "a" * 64, "x%2Fy"])
def test_a_namespace_that_is_not_a_dns_label_is_refused(namespace):
    with pytest.raises(InvalidApiPath, match=r"namespace .* is not a DNS-1123 label"):
        PODS.path(namespace, "demo")


@pytest.mark.parametrize("subresource", ["status/../../x", "status?watch=true", "", "Status"])
def test_a_subresource_that_is_not_a_dns_label_is_refused(subresource):
    with pytest.raises(InvalidApiPath, match="subresource"):
        FINETUNEJOBS.path("team-a", "demo", subresource)


def test_the_refusal_does_not_repeat_the_value():
    with pytest.raises(InvalidApiPath) as raised:
        SECRETS.path("team-a", "secret-value?watch=true")
    assert "secret-value" not in str(raised.value)
    assert "watch" not in str(raised.value)


def _kube_without_a_server() -> Kube:
    # Nothing listens there: a request would fail differently (KubeError, status 0).
    return Kube(RestClient(Connection(server="https://127.0.0.1:9")))


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("get", (SECRETS, "team-a", "../x")),
        ("exists", (SECRETS, "team-a", "x?watch=true")),
        ("delete", (PODS, "team-a", "x%2Fy")),
        ("merge_patch", (FINETUNEJOBS, "team-a", "demo", {}, "status/../x")),
        ("list", (PODS, "kube-system/secrets")),
        ("replace", (LEASES, "team-a", "x/y", {"metadata": {"resourceVersion": "1"}})),
    ],
)
def test_the_client_refuses_before_any_request(method, args):
    with pytest.raises(InvalidApiPath):
        getattr(_kube_without_a_server(), method)(*args)


@pytest.mark.parametrize(
    "path", ["/api/v1/namespaces/a/pods?watch=true", "/api/v1/../v1/secrets", "/api/v1/pods/x%2Fy", "api/v1/pods"]
)
def test_a_path_not_built_by_kind_is_refused_by_the_client(path):
    with pytest.raises(InvalidApiPath, match="API path"):
        _kube_without_a_server()._call("GET", path)


def test_a_replace_without_a_resource_version_is_refused_before_any_request():
    with pytest.raises(ValueError, match="resourceVersion"):
        _kube_without_a_server().replace(LEASES, "finetune-system", "leader", {"metadata": {"name": "leader"}})


@pytest.mark.parametrize(
    ("method", "path", "labels"),
    [
        ("GET", "/api/v1/namespaces/a/pods", ("list", "pods")),
        ("GET", "/api/v1/pods", ("list", "pods")),
        ("GET", "/api/v1/namespaces/a/pods/demo-0", ("get", "pods")),
        ("GET", "/api/v1/namespaces", ("list", "namespaces")),
        ("GET", "/api/v1/namespaces/a", ("get", "namespaces")),
        (
            "PATCH",
            "/apis/finetune.dev/v1alpha1/namespaces/a/finetunejobs/demo/status",
            ("patch", "finetunejobs/status"),
        ),
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", ("create", "tokenreviews")),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/a/leases/leader", ("update", "leases")),
        ("DELETE", "/apis/batch/v1/namespaces/a/jobs/demo", ("delete", "jobs")),
        ("GET", "/api/v1/nodes/local-cpu-0", ("get", "nodes")),
        ("GET", "/version", ("get", "")),
    ],
)
def test_requests_are_counted_by_the_verb_and_resource_the_api_server_would_name(method, path, labels):
    assert request_labels(method, path) == labels


def test_a_watch_is_counted_as_one():
    assert request_labels("GET", "/api/v1/pods", watch=True) == ("watch", "pods")
