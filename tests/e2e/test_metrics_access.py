"""/metrics as Prometheus reaches it: over HTTPS, with a bearer token the API server authenticates
(TokenReview) and authorizes (SubjectAccessReview: get on the non-resource URL /metrics, what the chart's
ClusterRole <fullname>-metrics-reader grants). The metrics name every tenant's jobs, losses and ETAs."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from kubehelpers import apply, get, wait_for
from prometheus_client.parser import text_string_to_metric_families

from hack.localcluster import free_port

READER_ROLE = "e2e-finetune-operator-metrics-reader"


@dataclass
class MetricsEndpoint:
    url: str
    ca_file: str

    def get(self, token: str | None) -> tuple[int, str]:
        request = urllib.request.Request(self.url)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def samples(self, token: str) -> dict[tuple[str, tuple], float]:
        status, text = self.get(token)
        assert status == 200, text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture(scope="module")
def reader_role(cluster):
    """The chart's metrics-reader ClusterRole (templates/rbac-metrics.yaml), under a name of this test's."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": READER_ROLE},
        "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
    }
    apply(cluster, role)
    yield READER_ROLE
    cluster.run_kubectl("delete", "clusterrole", READER_ROLE, "--wait=false", check=False)


@pytest.fixture
def account_token(cluster, namespace, reader_role):
    """A ServiceAccount's token, the account bound to the metrics-reader role or not."""
    bindings: list[str] = []

    def make(name: str, reader: bool, audience: str | None = None) -> str:
        cluster.run_kubectl("create", "serviceaccount", name, "-n", namespace)
        if reader:
            binding = f"{namespace}-{name}"
            cluster.run_kubectl(
                "create",
                "clusterrolebinding",
                binding,
                f"--clusterrole={reader_role}",
                f"--serviceaccount={namespace}:{name}",
            )
            bindings.append(binding)
        args = ["create", "token", name, "-n", namespace, "--duration=10m"]
        if audience:
            args.append(f"--audience={audience}")
        return cluster.run_kubectl(*args).stdout.strip()

    yield make
    for binding in bindings:
        cluster.run_kubectl("delete", "clusterrolebinding", binding, "--wait=false", check=False)


@pytest.fixture
def metrics_endpoint(start_operator, namespace, cluster, tmp_path) -> MetricsEndpoint:
    """The operator with its default, secure /metrics (and no progress endpoint: /metrics brings its own TLS)."""
    port = free_port()
    start_operator(f"--metrics-port={port}", f"--operator-namespace={namespace}")
    secret = wait_for(
        "the operator's CA Secret", lambda: get(cluster, "secret", namespace, "finetune-operator-progress-ca")
    )
    ca_file = tmp_path / "operator-ca.crt"
    ca_file.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    return MetricsEndpoint(f"https://127.0.0.1:{port}/metrics", str(ca_file))


def test_metrics_are_https_only(metrics_endpoint):
    plain = metrics_endpoint.url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(plain, timeout=10).read()


def test_without_a_token_the_api_server_accepts_metrics_are_refused_401(metrics_endpoint, account_token):
    progress_token = account_token("trainer-like", reader=True, audience="finetune.dev/progress")
    for label, token in [("no token", None), ("not a token", "not-a-token"), ("another audience", progress_token)]:
        status, text = metrics_endpoint.get(token)
        assert status == 401, label
        assert "finetune_operator" not in text, label


def test_an_account_without_the_metrics_reader_role_is_refused_403_and_asked_about_once(
    metrics_endpoint, account_token
):
    stranger = account_token("stranger", reader=False)
    for _ in range(3):
        status, text = metrics_endpoint.get(stranger)
        assert status == 403
        assert "finetune_operator" not in text
    samples = metrics_endpoint.samples(account_token("prometheus", reader=True))
    assert samples[("finetune_operator_subject_access_reviews_total", (("result", "denied"),))] == 1


def test_prometheus_bound_to_the_metrics_reader_role_reads_them_for_one_review_a_minute(
    metrics_endpoint, account_token
):
    prometheus = account_token("prometheus", reader=True)
    for _ in range(5):
        samples = metrics_endpoint.samples(prometheus)
    assert ("finetune_operator_jobs", (("phase", "Running"),)) in samples
    reviews = ("finetune_operator_token_reviews_total", (("endpoint", "metrics"), ("result", "authenticated")))
    assert samples[reviews] == 1
    assert samples[("finetune_operator_subject_access_reviews_total", (("result", "allowed"),))] == 1
