"""Which S3 endpoints the operator may send a request to: normalised, and only those the admin allows."""

from __future__ import annotations

import pytest
from finetune_core.endpoints import EndpointInvalid, endpoint_problem, normalise_endpoint

PLATFORM = frozenset({"http://minio.storage.svc:9000"})


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://minio.storage.svc:9000", "http://minio.storage.svc:9000"),
        ("HTTP://MinIO.Storage.svc:9000/", "http://minio.storage.svc:9000"),
        ("https://s3.example.com", "https://s3.example.com:443"),
        ("http://s3.example.com.", "http://s3.example.com:80"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        (" http://10.0.0.5 ", "http://10.0.0.5:80"),
    ],
)
def test_endpoints_are_compared_as_scheme_host_and_port(url, normal):
    assert normalise_endpoint(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "minio:9000",
        "file:///etc/passwd",
        "gopher://minio",
        "http://",
        "http://minio:99999",
        "http://minio/some/path",
        "http://minio?x=1",
        "http://minio#x",
        "http://user:pass@minio",
        "http://minio.storage.svc:9000@evil.example",
    ],
)
def test_what_is_not_an_endpoint_url_is_refused(url):
    with pytest.raises(EndpointInvalid):
        normalise_endpoint(url)


def test_an_allowed_endpoint_passes_however_it_is_spelled():
    assert endpoint_problem("http://MINIO.storage.svc:9000/", PLATFORM) is None


def test_no_endpoint_means_aws_own_s3_which_is_allowed():
    assert endpoint_problem(None, frozenset()) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://minio.storage.svc:9001",
        "https://minio.storage.svc:9000",
        "http://minio.storage.svc.evil.example:9000",
        "http://169.254.169.254",
        "http://127.0.0.1:8080",
    ],
)
def test_any_other_endpoint_is_not_allowed_and_the_allowed_ones_are_named(url):
    problem = endpoint_problem(url, PLATFORM)
    assert problem is not None and "is not allowed" in problem and "http://minio.storage.svc:9000" in problem


def test_an_operator_without_endpoints_allows_none_but_aws():
    assert "only AWS's own S3" in endpoint_problem("http://minio:9000", frozenset())


def test_a_malformed_endpoint_is_named_without_being_echoed():
    problem = endpoint_problem("http://secret-token@minio", PLATFORM)
    assert problem == "AWS_ENDPOINT_URL must not carry a user or password"
