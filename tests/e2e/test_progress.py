"""Trainer pods push progress to the operator's HTTPS endpoint with a projected ServiceAccount token;
the operator verifies it with a TokenReview and the pod's ownership, and writes the status. Here, what the
running endpoint shows (HTTP codes, budgets, TLS, metrics); what a report does to the status is the
in-process tier's (tests/inprocess/test_progress_accept.py)."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from catalog import valid_job
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from kubehelpers import apply, get, items, wait_for
from prometheus_client.parser import text_string_to_metric_families

from hack.localcluster import free_port

AUDIENCE = "finetune.dev/progress"


@dataclass
class Endpoint:
    url: str
    metrics_url: str
    ca_file: str

    def post(self, namespace: str, name: str, body: bytes | dict, token: str | None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/namespaces/{namespace}/finetunejobs/{name}/progress", data=data, method="POST"
        )
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return response.status, {}
        except urllib.error.HTTPError as error:
            answer = error.read()
            try:
                return error.code, json.loads(answer or b"{}")
            except ValueError:  # aiohttp's own answers (a path no route matches) are plain text
                return error.code, {"text": answer.decode(errors="replace")}

    def metrics(self) -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


@pytest.fixture
def endpoint(start_operator, namespace, tmp_path, cluster):
    port, metrics_port = free_port(), free_port()
    start_operator(
        f"--progress-port={port}",
        f"--progress-url=https://127.0.0.1:{port}",
        f"--metrics-port={metrics_port}",
        # /metrics in plain HTTP on loopback, the local development setting: these tests read its counters,
        # and the metrics' own TokenReviews stay out of them (test_metrics_access.py covers secure /metrics).
        "--metrics-secure=false",
        f"--operator-namespace={namespace}",
    )
    secret = wait_for(
        "the progress CA Secret", lambda: get(cluster, "secret", namespace, "finetune-operator-progress-ca")
    )
    ca_file = tmp_path / "progress-ca.crt"
    ca_file.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    return Endpoint(f"https://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", str(ca_file))


def running_job(cluster, namespace: str, name: str, nodes: int = 1) -> list[dict]:
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["resources"] = {"gpusPerNode": 1, "nodes": nodes}
    manifest["spec"]["template"] = {"podAnnotations": {"test.finetune.dev/run-duration": "1h"}}
    apply(cluster, manifest)

    def pods():
        found = [
            p
            for p in items(cluster, "pods", namespace, f"finetune.dev/job={name}")
            if p["status"].get("phase") == "Running"
        ]
        return (
            sorted(found, key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
            if len(found) == nodes
            else None
        )

    return wait_for(f"{nodes} running pod(s) of {name}", pods)


def token_for(api_client, namespace: str, pod: dict, audience: str = AUDIENCE) -> str:
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[audience],
            expiration_seconds=600,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=pod["metadata"]["name"], uid=pod["metadata"]["uid"]
            ),
        )
    )
    account = pod["spec"]["serviceAccountName"]
    return (
        client.CoreV1Api(api_client).create_namespaced_service_account_token(account, namespace, request).status.token
    )


def expired_token_for(cluster, namespace: str, pod: dict) -> str:
    """A token like the API server's own, signed with its key, that expired a minute ago."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    key = serialization.load_pem_private_key((cluster.pki_dir / "sa.key").read_bytes(), password=None)
    now = int(time.time())
    account = pod["spec"]["serviceAccountName"]
    claims = {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{namespace}:{account}",
        "aud": [AUDIENCE],
        "iat": now - 1200,
        "nbf": now - 1200,
        "exp": now - 60,
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
            "serviceaccount": {
                "name": account,
                "uid": get(cluster, "serviceaccount", namespace, account)["metadata"]["uid"],
            },
        },
    }
    signing_input = f"{b64(json.dumps({'alg': 'RS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


REPORT = {
    "step": 120,
    "totalSteps": 400,
    "epoch": 0.3,
    "trainLoss": 1.2345,
    "learningRate": 8e-5,
    "tokensPerSecond": 11234.5,
    "etaSeconds": 3725,
}


def token_reviews(metrics: dict[tuple[str, tuple], float]) -> float:
    """TokenReviews the progress endpoint has sent, whatever their answer."""
    return sum(
        value
        for (name, labels), value in metrics.items()
        if name == "finetune_operator_token_reviews_total" and ("endpoint", "progress") in labels
    )


def api_reads(metrics: dict[tuple[str, tuple], float]) -> float:
    """GETs the operator's client has sent for FineTuneJobs, Jobs and pods, whatever their answer."""
    return sum(
        value
        for (name, labels), value in metrics.items()
        if name == "finetune_operator_api_requests_total"
        and ("verb", "get") in labels
        and dict(labels).get("resource") in ("finetunejobs", "jobs", "pods")
    )


def test_refused_reports_get_the_right_code_are_counted_and_write_nothing(cluster, namespace, endpoint, api_client):
    (mine,) = running_job(cluster, namespace, "mine")
    (other,) = running_job(cluster, namespace, "other")
    good = token_for(api_client, namespace, mine)
    assert endpoint.post(namespace, "mine", REPORT, good)[0] == 204
    before = get(cluster, "ftj", namespace, "mine")["status"]["progress"]

    cases = [
        ("no token", None, REPORT, 401, "missing_token"),
        (
            "wrong audience",
            token_for(api_client, namespace, mine, audience="someone-else"),
            REPORT,
            401,
            "invalid_token",
        ),
        ("expired", expired_token_for(cluster, namespace, mine), REPORT, 401, "invalid_token"),
        ("another job's pod", token_for(api_client, namespace, other), REPORT, 403, "wrong_job"),
        ("malformed body", good, b"{not json", 400, "invalid_body"),
        ("invalid field", good, {"step": -5, "trainLoss": "low"}, 400, "invalid_body"),
        ("not a number", good, b'{"step": 3, "trainLoss": NaN}', 400, "invalid_body"),
    ]
    for label, token, body, code, reason in cases:
        status, answer = endpoint.post(
            namespace, "mine", {**body, "step": 999} if isinstance(body, dict) and body is REPORT else body, token
        )
        assert (status, answer.get("error")) == (code, reason), label
    status, answer = endpoint.post(namespace, "mine", {"step": -5}, good)
    assert "step" in answer["message"]

    assert get(cluster, "ftj", namespace, "mine")["status"]["progress"] == before, "a refused report wrote something"
    metrics = endpoint.metrics()
    for reason in ("missing_token", "invalid_token", "wrong_job", "invalid_body"):
        key = ("finetune_operator_progress_reports_total", (("reason", reason), ("result", "rejected")))
        assert metrics.get(key, 0) >= 1, reason


def test_metrics_follow_a_jobs_life_and_forget_it_when_it_is_deleted(cluster, namespace, endpoint, api_client):
    (pod,) = running_job(cluster, namespace, "metered")
    # Pods run before the operator has seen it: the phase gauge and queue wait follow its reconcile.
    wait_for(
        "the job to be Running",
        lambda: (get(cluster, "ftj", namespace, "metered") or {}).get("status", {}).get("phase") == "Running",
    )
    assert endpoint.post(namespace, "metered", REPORT, token_for(api_client, namespace, pod))[0] == 204
    labels = (("name", "metered"), ("namespace", namespace))
    metrics = endpoint.metrics()
    assert metrics[("finetune_operator_job_train_loss", labels)] == pytest.approx(1.2345)
    assert metrics[("finetune_operator_job_progress_ratio", labels)] == pytest.approx(0.3)
    assert metrics[("finetune_operator_job_tokens_per_second", labels)] == pytest.approx(11234.5)
    assert metrics[("finetune_operator_jobs", (("phase", "Running"),))] >= 1
    assert metrics[("finetune_operator_reconcile_total", (("controller", "finetunejob"), ("result", "success")))] > 0
    assert metrics[("finetune_operator_job_queue_wait_seconds_count", ())] >= 1
    assert metrics[("finetune_operator_time_to_first_progress_seconds_count", ())] >= 1

    cluster.run_kubectl("delete", "ftj", "metered", "-n", namespace)
    wait_for(
        "the per-job series to go",
        lambda: ("finetune_operator_job_train_loss", labels) not in endpoint.metrics(),
        timeout=30,
    )


def test_the_endpoints_certificate_is_reloaded_when_its_secret_is_rotated(start_operator, namespace, cluster):
    """cert-manager renews the Secret before the certificate expires: the endpoint must serve the new one."""
    import ssl

    from finetune_operator.certificates import make_ca, make_serving_certificate

    def tls_secret(common_name: str) -> str:
        ca = make_ca(f"{common_name} CA")
        serving = make_serving_certificate(ca, common_name, ["127.0.0.1", "localhost"])
        data = {
            "tls.crt": base64.b64encode(serving.certificate_pem).decode(),
            "tls.key": base64.b64encode(serving.key_pem).decode(),
            "ca.crt": base64.b64encode(ca.certificate_pem).decode(),
        }
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "progress-tls", "namespace": namespace}}
        apply(cluster, {**secret, "type": "kubernetes.io/tls", "data": data})
        return serving.certificate_pem.decode()

    first = tls_secret("first")
    port = free_port()
    start_operator(
        f"--progress-port={port}",
        f"--progress-url=https://127.0.0.1:{port}",
        f"--progress-tls-secret={namespace}/progress-tls",
        "--progress-tls-refresh-seconds=1",
    )

    def served() -> str:
        return ssl.get_server_certificate(("127.0.0.1", port), timeout=5)

    assert wait_for("the endpoint", lambda: served().strip() == first.strip())
    second = tls_secret("second")
    wait_for("the rotated certificate", lambda: served().strip() == second.strip(), timeout=30)


def test_a_flood_of_bad_tokens_from_one_client_is_cut_off_and_stops_costing_token_reviews(endpoint, namespace):
    answers = []
    for number in range(300):
        status, _ = endpoint.post(namespace, "any-job", REPORT, f"not-a-token-{number}")
        answers.append(status)
        if answers.count(429) == 20:
            break
    assert set(answers) == {401, 429} and answers.count(429) == 20, answers
    print(
        f"{len(answers)} requests with bad tokens: {answers.count(401)} reviewed (401), {answers.count(429)} not (429)"
    )
    # Each distinct bad token within the client's budget cost one TokenReview; none past it did.
    assert token_reviews(endpoint.metrics()) == answers.count(401)
    assert answers.count(401) < len(answers)


def test_a_bad_token_sent_again_is_refused_without_another_token_review(endpoint, namespace):
    for _ in range(5):
        status, answer = endpoint.post(namespace, "any-job", REPORT, "the-same-bad-token")
        assert (status, answer["error"]) == (401, "invalid_token")
    assert token_reviews(endpoint.metrics()) == 1


def test_a_progress_url_whose_names_are_no_dns_labels_is_not_found_without_a_token_review(
    cluster, namespace, endpoint, api_client
):
    """A good token does not make the operator read anything a crafted path names: percent-encoded slashes,
    dot segments and query strings in the name, or names that are no DNS labels, are 404 before any check."""
    (pod,) = running_job(cluster, namespace, "mine")
    token = token_for(api_client, namespace, pod)
    crafted = [
        (namespace, "mine%2F..%2F..%2F..%2Fapi%2Fv1%2Fnamespaces%2Fkube-system%2Fsecrets%2Fx"),
        (namespace, "..%2Fmine"),
        (namespace, "mine%3Fwatch=true"),
        (namespace, "MINE"),
        (namespace.upper(), "mine"),
        (namespace, "m" * 64),
    ]
    for crafted_namespace, name in crafted:
        status, _ = endpoint.post(crafted_namespace, name, REPORT, token)
        assert status == 404, name
    assert token_reviews(endpoint.metrics()) == 0
    assert endpoint.post(namespace, "mine", REPORT, token)[0] == 204
    assert token_reviews(endpoint.metrics()) == 1, "the counter counts: the real path cost one TokenReview"
