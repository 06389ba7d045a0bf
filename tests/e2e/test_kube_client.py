"""The operator's Kubernetes client (kube.py over rest.py) against the real API server: paged and
metadata-only lists, optimistic replace, 404s, and every kind of credential a kubeconfig gives it."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from finetune_operator.connection import from_kubeconfig
from finetune_operator.kube import CONFIGMAPS, LEASES, PAGE_SIZE, Kind, Kube, KubeError
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.rest import CONNECT_SECONDS, RestClient

SELF_SUBJECT_REVIEWS = Kind("authentication.k8s.io", "v1", "selfsubjectreviews", namespaced=False)


def counting_kube(kubeconfig: Path) -> tuple[Kube, Counter]:
    """A client whose requests are counted by (verb, resource, code), as the operator's metric counts them."""
    seen: Counter = Counter()
    rest = RestClient(from_kubeconfig([kubeconfig], explicit=True), observe=lambda *labels: seen.update([labels]))
    return Kube(rest), seen


def write_kubeconfig(path: Path, cluster, user: dict) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki_dir / "ca.crt")},
                    }
                ],
                "users": [{"name": "someone", "user": user}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "someone"}}],
                "current-context": "test",
            }
        )
    )
    return path


def who_am_i(kube: Kube) -> str:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    answer = kube.rest.request("POST", SELF_SUBJECT_REVIEWS.path(), body)
    return answer["status"]["userInfo"]["username"]


def config_map(namespace: str, name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"test": "paging"}},
        "data": {"payload": "x" * 100},
    }


def test_a_list_longer_than_a_page_comes_whole_in_pages_each_counted_in_the_metric(cluster, namespace):
    metrics = OperatorMetrics()
    rest = RestClient(from_kubeconfig([cluster.kubeconfig], explicit=True), observe=metrics.api_request)
    kube = Kube(rest)
    count = PAGE_SIZE + 21
    for index in range(count):
        kube.create(config_map(namespace, f"cm-{index:04d}"))
    items = kube.list(CONFIGMAPS, namespace, label_selector="test=paging")
    assert sorted(item["metadata"]["name"] for item in items) == [f"cm-{i:04d}" for i in range(count)]
    exposition = metrics.exposition().decode()
    assert 'finetune_operator_api_requests_total{code="200",resource="configmaps",verb="list"} 2.0' in exposition
    assert f'finetune_operator_api_requests_total{{code="201",resource="configmaps",verb="create"}} {count}.0' in (
        exposition
    )


def test_a_metadata_only_list_carries_no_bodies(cluster, namespace):
    kube = Kube.connect(str(cluster.kubeconfig))
    for index in range(3):
        kube.create(config_map(namespace, f"cm-{index}"))
    items = kube.list(CONFIGMAPS, namespace, label_selector="test=paging", metadata_only=True)
    assert sorted(item["metadata"]["name"] for item in items) == ["cm-0", "cm-1", "cm-2"]
    assert all(item["kind"] == "PartialObjectMetadata" and "data" not in item for item in items)
    assert all(item["metadata"]["labels"] == {"test": "paging"} for item in items)


def test_a_field_selector_filters_on_the_server(cluster, namespace):
    kube = Kube.connect(str(cluster.kubeconfig))
    for index in range(3):
        kube.create(config_map(namespace, f"cm-{index}"))
    items = kube.list(CONFIGMAPS, namespace, field_selector="metadata.name=cm-1")
    assert [item["metadata"]["name"] for item in items] == ["cm-1"]


def lease(namespace: str, holder: str) -> dict:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "leader", "namespace": namespace},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


def test_a_quiet_watch_lasts_until_the_server_ends_it(cluster, namespace):
    """A watch on which nothing happens is not cut short by the client: its read timeout is the watch's own
    (urllib3.Timeout's first argument is a total, which once cut every watch at the connect timeout)."""
    kube, _ = counting_kube(cluster.kubeconfig)
    seconds = int(CONNECT_SECONDS) + 5
    events = list(kube.rest.watch(CONFIGMAPS.path(namespace), [("fieldSelector", "metadata.name=none")], seconds))
    assert all(event["type"] == "BOOKMARK" for event in events), events


def end_under_its_reader(response) -> None:
    """What urllib3 does when the server ends a response while its reader is elsewhere: the body is closed,
    then the socket (its fd really closes only once the body's reference is gone)."""
    connection = response.connection
    response._fp.close()
    connection.sock.close()


@pytest.mark.parametrize(
    "end", [end_under_its_reader, lambda response: response.release_conn()], ids=["socket-closed", "released"]
)
def test_closing_the_client_ends_its_watches_even_one_whose_connection_is_already_gone(cluster, namespace, end):
    """close() ends every open watch; a watch whose connection was closed meanwhile (the server ended it while
    its reader was elsewhere) is already ended, not an error (it once made the node agent exit 1 on SIGTERM)."""
    kube, _ = counting_kube(cluster.kubeconfig)
    kube.rest.request("POST", CONFIGMAPS.path(namespace), config_map(namespace, "watched"))
    query = [("fieldSelector", "metadata.name=watched")]
    ended = kube.rest.watch(CONFIGMAPS.path(namespace), query, 60)
    assert next(ended)["type"] == "ADDED"
    [response] = kube.rest._streams
    blocked = kube.rest.watch(CONFIGMAPS.path(namespace), query, 60)
    assert next(blocked)["type"] == "ADDED"
    end(response)

    kube.rest.close()  # raised from the ended stream (EBADF, or released to the pool)

    with contextlib.suppress(KubeError):
        list(blocked)  # ends now, not after its 60 s
    ended.close()


def test_replace_writes_over_the_version_it_read_and_a_stale_version_is_a_conflict(cluster, namespace):
    kube = Kube.connect(str(cluster.kubeconfig))
    created, _ = kube.create(lease(namespace, "a"))
    mine = {**created, "spec": {**created["spec"], "holderIdentity": "b"}}
    replaced = kube.replace(LEASES, namespace, "leader", mine)
    assert replaced["spec"]["holderIdentity"] == "b"
    assert replaced["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    stale = {**created, "spec": {**created["spec"], "holderIdentity": "c"}}
    with pytest.raises(KubeError) as raised:
        kube.replace(LEASES, namespace, "leader", stale)
    assert raised.value.status == 409
    assert kube.get(LEASES, namespace, "leader")["spec"]["holderIdentity"] == "b"


def test_a_missing_object_is_none_false_and_a_second_create_returns_the_first(cluster, namespace):
    kube = Kube.connect(str(cluster.kubeconfig))
    assert kube.get(CONFIGMAPS, namespace, "absent") is None
    assert kube.exists(CONFIGMAPS, namespace, "absent") is False
    assert kube.delete(CONFIGMAPS, namespace, "absent") is False
    first, created = kube.create(config_map(namespace, "once"))
    again, created_again = kube.create(config_map(namespace, "once"))
    assert (created, created_again) == (True, False)
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert kube.delete(CONFIGMAPS, namespace, "once") is True


def test_access_reviews_ask_as_the_user_with_their_groups(cluster, namespace):
    """One SubjectAccessReview request for both kinds of attributes: a group's rights count, a bare user has none."""
    kube = Kube.connect(str(cluster.kubeconfig))
    admin = {"username": "someone", "groups": ["system:masters"]}
    nobody = {"username": "someone", "groups": ["system:authenticated"]}
    for user, allowed in ((admin, True), (nobody, False)):
        answer = kube.resource_access_review(user, namespace, "create", "finetune.dev", "finetunejobs")
        assert bool(answer.get("allowed")) is allowed, user
        assert bool(kube.subject_access_review(user, "/metrics", "get").get("allowed")) is allowed, user


def test_a_rotated_token_file_is_read_again_when_the_old_token_is_refused(cluster, namespace, tmp_path):
    for account in ("alpha", "beta"):
        cluster.run_kubectl("create", "serviceaccount", account, "-n", namespace)
    token_file = tmp_path / "token"
    old = cluster.run_kubectl("create", "token", "alpha", "-n", namespace).stdout.strip()
    token_file.write_text(old)
    kube, seen = counting_kube(write_kubeconfig(tmp_path / "kubeconfig", cluster, {"tokenFile": "token"}))
    assert who_am_i(kube) == f"system:serviceaccount:{namespace}:alpha"
    # The old token stops working (its account is gone) and the file holds a new one, as after a rotation.
    cluster.run_kubectl("delete", "serviceaccount", "alpha", "-n", namespace)
    wait_until_refused(Kube.connect(str(write_kubeconfig(tmp_path / "old", cluster, {"token": old}))))
    token_file.write_text(cluster.run_kubectl("create", "token", "beta", "-n", namespace).stdout.strip())
    assert who_am_i(kube) == f"system:serviceaccount:{namespace}:beta"
    assert seen[("create", "selfsubjectreviews", "401")] == 1


def wait_until_refused(kube: Kube) -> None:
    """The API server learns of a deleted ServiceAccount through its own watch: a moment later."""
    deadline = time.monotonic() + 30
    while True:
        try:
            who_am_i(kube)
        except KubeError as error:
            assert error.status == 401
            return
        assert time.monotonic() < deadline, "a deleted ServiceAccount's token was still accepted after 30 s"
        time.sleep(0.2)


def client_certificate(cluster, user: str) -> tuple[bytes, bytes]:
    """A client certificate for ``user`` signed by the cluster's CA (the API server's --client-ca-file)."""
    ca_cert = x509.load_pem_x509_certificate((cluster.pki_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((cluster.pki_dir / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def test_a_client_certificate_from_kubeconfig_data_authenticates(cluster, tmp_path):
    cert, key = client_certificate(cluster, "certificate-user")
    user = {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
    kube = Kube.connect(str(write_kubeconfig(tmp_path / "kubeconfig", cluster, user)))
    assert who_am_i(kube) == "certificate-user"
