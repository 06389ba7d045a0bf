"""How the operator finds the API server and its credentials: a kubeconfig (merged as kubectl merges
KUBECONFIG) or the pod's ServiceAccount, with a token file that is re-read as the kubelet rotates it."""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path

import pytest
from finetune_operator.certificates import make_ca, make_serving_certificate
from finetune_operator.connection import BearerToken, ConfigError, from_kubeconfig, load

CA = make_ca("connection-test-ca", days=1)
CLIENT = make_serving_certificate(CA, "operator", ["localhost"], days=1)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def kubeconfig(
    path: Path,
    *,
    server: str = "https://10.0.0.1:6443",
    cluster: dict | None = None,
    user: dict | None = None,
    current: str | None = "main",
    name: str = "main",
) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": name, "user": user if user is not None else {"token": f"token-of-{name}"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }
    if current is not None:
        config["current-context"] = current
    path.write_text(json.dumps(config))
    return path


def test_a_token_and_a_ca_file_relative_to_the_kubeconfig(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(CA.certificate_pem)
    path = kubeconfig(tmp_path / "config", cluster={"certificate-authority": "pki/ca.crt"})
    connection = from_kubeconfig([path], explicit=True)
    assert connection.server == "https://10.0.0.1:6443"
    assert connection.ca_pem == CA.certificate_pem.decode()
    assert connection.token is not None and connection.token.value() == "token-of-main"
    assert connection.cert_pem is None and not connection.insecure


def test_inline_ca_and_client_certificate_data_make_a_verifying_context(tmp_path):
    path = kubeconfig(
        tmp_path / "config",
        cluster={"certificate-authority-data": b64(CA.certificate_pem)},
        user={"client-certificate-data": b64(CLIENT.certificate_pem), "client-key-data": b64(CLIENT.key_pem)},
    )
    connection = from_kubeconfig([path], explicit=True)
    assert connection.token is None
    assert connection.cert_pem == CLIENT.certificate_pem.decode()
    context = connection.ssl_context()  # loads the client chain: a key that does not match would raise here
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "connection-test-ca"),),)]


def test_client_certificate_files_are_read(tmp_path):
    (tmp_path / "tls.crt").write_bytes(CLIENT.certificate_pem)
    (tmp_path / "tls.key").write_bytes(CLIENT.key_pem)
    path = kubeconfig(tmp_path / "config", user={"client-certificate": "tls.crt", "client-key": "tls.key"})
    connection = from_kubeconfig([path], explicit=True)
    assert (connection.cert_pem, connection.key_pem) == (CLIENT.certificate_pem.decode(), CLIENT.key_pem.decode())


def test_insecure_skip_tls_verify_turns_verification_off(tmp_path):
    path = kubeconfig(tmp_path / "config", cluster={"insecure-skip-tls-verify": True})
    context = from_kubeconfig([path], explicit=True).ssl_context()
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


def test_the_current_context_picks_the_cluster_and_the_user(tmp_path):
    path = tmp_path / "config"
    path.write_text(
        json.dumps(
            {
                "clusters": [
                    {"name": "dev", "cluster": {"server": "https://dev:6443"}},
                    {"name": "prod", "cluster": {"server": "https://prod:6443/"}},
                ],
                "users": [{"name": "alice", "user": {"token": "a"}}, {"name": "bob", "user": {"token": "b"}}],
                "contexts": [
                    {"name": "dev", "context": {"cluster": "dev", "user": "alice"}},
                    {"name": "prod", "context": {"cluster": "prod", "user": "bob"}},
                ],
                "current-context": "prod",
            }
        )
    )
    connection = from_kubeconfig([path], explicit=True)
    assert connection.server == "https://prod:6443"
    assert connection.token is not None and connection.token.value() == "b"


def test_kubeconfig_files_merge_first_one_wins_and_missing_ones_are_skipped(tmp_path):
    first = kubeconfig(tmp_path / "first", server="https://first:6443", current=None)
    second = kubeconfig(tmp_path / "second", server="https://second:6443", current="main")
    environ = {"KUBECONFIG": f"{tmp_path / 'absent'}:{first}:{second}"}
    connection = load(environ=environ)
    assert connection.server == "https://first:6443"  # "main" is first defined in the first file
    assert connection.source == f"{first}, {second}"


def test_an_explicit_kubeconfig_wins_over_the_pod_environment(tmp_path):
    path = kubeconfig(tmp_path / "config")
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert load(path, environ=environ, service_account=tmp_path / "nowhere").server == "https://10.0.0.1:6443"


def test_in_a_pod_the_service_account_is_used(tmp_path):
    (tmp_path / "ca.crt").write_bytes(CA.certificate_pem)
    (tmp_path / "token").write_text("projected-token\n")
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443", "KUBECONFIG": "/nowhere"}
    connection = load(environ=environ, service_account=tmp_path)
    assert connection.server == "https://[fd00::1]:443"
    assert connection.ca_pem == CA.certificate_pem.decode()
    assert connection.token is not None and connection.token.value() == "projected-token"
    assert connection.source == "in-cluster"


def test_a_token_file_is_re_read_once_its_copy_is_old_and_on_demand(tmp_path):
    path = tmp_path / "token"
    path.write_text("first")
    now = [0.0]
    token = BearerToken(path=path, reread_seconds=60, clock=lambda: now[0])
    path.write_text("second")
    now[0] = 59.0
    assert token.value() == "first"  # a minute-old copy is still valid: no read per request
    now[0] = 60.0
    assert token.value() == "second"
    path.write_text("third")
    assert token.reload() is True  # after a 401: read at once
    assert token.value() == "third"
    assert token.reload() is False


def test_a_token_file_in_the_kubeconfig_wins_over_an_inline_token(tmp_path):
    (tmp_path / "token").write_text("from-the-file")
    path = kubeconfig(tmp_path / "config", user={"token": "inline", "tokenFile": "token"})
    connection = from_kubeconfig([path], explicit=True)
    assert connection.token is not None and connection.token.path == tmp_path / "token"
    assert connection.token.value() == "from-the-file"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"user": {"exec": {"command": "aws"}}}, "uses exec, which this client does not support"),
        ({"user": {"auth-provider": {"name": "oidc"}}}, "uses auth-provider"),
        ({"current": None}, "current-context is not set"),
        ({"current": "elsewhere"}, "context 'elsewhere' is not defined"),
        ({"server": "10.0.0.1:6443"}, "has no https:// server"),
        ({"cluster": {"certificate-authority-data": "not base64!"}}, "certificate-authority-data is not base64"),
        ({"cluster": {"certificate-authority": "missing.crt"}}, "certificate-authority .*missing.crt"),
        ({"user": {"client-certificate-data": b64(CLIENT.certificate_pem)}}, "needs both client-certificate"),
    ],
)
def test_what_cannot_be_used_is_refused_naming_the_file_and_the_field(tmp_path, edit, message):
    path = kubeconfig(tmp_path / "config", **edit)
    with pytest.raises(ConfigError, match=message) as raised:
        from_kubeconfig([path], explicit=True)
    assert str(path) in str(raised.value)


def test_no_kubeconfig_and_no_pod_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no kubeconfig found"):
        load(environ={"KUBECONFIG": str(tmp_path / "absent")})


def test_an_explicit_kubeconfig_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the kubeconfig"):
        load(tmp_path / "absent", environ={})


def test_kopf_logs_in_with_the_same_connection_and_a_freshly_read_token(tmp_path):
    from finetune_operator.handlers import connection_info

    (tmp_path / "token").write_text("first")
    (tmp_path / "ca.crt").write_bytes(CA.certificate_pem)
    path = kubeconfig(tmp_path / "config", cluster={"certificate-authority": "ca.crt"}, user={"tokenFile": "token"})
    connection = from_kubeconfig([path], explicit=True)
    (tmp_path / "token").write_text("rotated")  # kopf logs in again after a 401: the file is read then
    info = connection_info(connection)
    assert (info.server, info.scheme, info.token) == ("https://10.0.0.1:6443", "Bearer", "rotated")
    assert info.ca_data == CA.certificate_pem.decode() and info.certificate_data is None
