"""The shared S3 client builder: each caller's request policy, keys only from the credentials given, an
endpoint only from the allow-list where there is one, and minted credentials read again before they expire."""

from __future__ import annotations

import datetime as dt

import pytest
from finetune_core import s3

KEYS = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}
PLATFORM = frozenset({"http://minio.storage.svc:9000"})


def presigned(client) -> str:
    return client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})


@pytest.mark.parametrize(
    ("policy", "retries", "timeouts"),
    [
        (s3.VERIFY, {"total_max_attempts": 3, "mode": "standard"}, (5, 20)),
        (s3.TRANSFER, {"total_max_attempts": 11, "mode": "adaptive"}, (60, 60)),
    ],
    ids=["verify", "transfer"],
)
def test_a_client_carries_its_callers_retry_policy_and_timeouts(policy, retries, timeouts):
    config = s3.client(KEYS, endpoint_allowlist=None, policy=policy).meta.config
    # botocore counts the first attempt too
    assert config.retries == retries
    assert (config.connect_timeout, config.read_timeout) == timeouts


def test_the_operators_reads_skip_the_stores_checksums_and_the_trainers_transfers_check_them():
    assert s3.client(KEYS, endpoint_allowlist=None, policy=s3.VERIFY).meta.config.response_checksum_validation == (
        "when_required"
    )
    assert s3.client(KEYS, endpoint_allowlist=None, policy=s3.TRANSFER).meta.config.response_checksum_validation == (
        "when_supported"
    )


def test_an_endpoint_outside_the_allowlist_is_refused_naming_the_key_and_no_client_is_built():
    with pytest.raises(s3.ClientRefused) as raised:
        s3.client({**KEYS, "AWS_ENDPOINT_URL": "http://169.254.169.254"}, endpoint_allowlist=PLATFORM, policy=s3.VERIFY)
    assert raised.value.reason == "EndpointNotAllowed"
    assert raised.value.message.startswith("AWS_ENDPOINT_URL http://169.254.169.254:80 is not allowed")


def test_an_allowed_endpoint_is_addressed_by_path():
    client = s3.client(
        {**KEYS, "AWS_ENDPOINT_URL": "http://minio.storage.svc:9000/"}, endpoint_allowlist=PLATFORM, policy=s3.VERIFY
    )
    assert presigned(client).startswith("http://minio.storage.svc:9000/b/k?")


def test_without_an_allowlist_the_credentials_endpoint_is_used_as_named():
    client = s3.client(
        {**KEYS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, endpoint_allowlist=None, policy=s3.TRANSFER
    )
    assert presigned(client).startswith("http://127.0.0.1:9000/b/k?")


@pytest.mark.parametrize("given", [{}, {"AWS_ACCESS_KEY_ID": "id"}, {"AWS_SECRET_ACCESS_KEY": "s"}])
def test_keys_of_the_environment_never_stand_in_for_missing_ones(monkeypatch, given):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ambient-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    with pytest.raises(s3.ClientRefused) as raised:
        s3.client(given, endpoint_allowlist=None, policy=s3.TRANSFER)
    assert raised.value.reason == "CredentialsMissing"
    assert all(key in raised.value.message for key in s3.S3_KEYS[:2] if key not in given)


def test_the_client_signs_with_the_given_keys_at_the_given_endpoint_whatever_the_environment_says(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ambient-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://elsewhere.example:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere.example:9000")
    url = presigned(s3.client({**KEYS, "AWS_REGION": "eu-west-1"}, endpoint_allowlist=None, policy=s3.TRANSFER))
    assert url.startswith("https://s3.amazonaws.com/b/k?") and "X-Amz-Credential=id%2F" in url
    assert "eu-west-1" in url


def test_a_region_that_is_no_region_is_refused_without_echoing_it():
    with pytest.raises(s3.ClientRefused) as raised:
        s3.client({**KEYS, "AWS_REGION": "evil.example/#token"}, endpoint_allowlist=None, policy=s3.VERIFY)
    assert raised.value.reason == "StorageError"
    assert "AWS_REGION" in raised.value.message and "token" not in raised.value.message


def test_refreshing_credentials_are_read_again_before_they_expire():
    now = dt.datetime.now(dt.UTC)
    answers = iter(
        [
            {
                **KEYS,
                "AWS_ACCESS_KEY_ID": "first",
                "AWS_SESSION_TOKEN": "t1",
                "AWS_CREDENTIAL_EXPIRATION": (now + dt.timedelta(minutes=5)).isoformat(),
            },
            {
                **KEYS,
                "AWS_ACCESS_KEY_ID": "second",
                "AWS_SESSION_TOKEN": "t2",
                "AWS_CREDENTIAL_EXPIRATION": (now + dt.timedelta(hours=1)).isoformat(),
            },
        ]
    )
    client = s3.client(KEYS, endpoint_allowlist=None, policy=s3.TRANSFER, refresh=lambda: next(answers))
    # Five minutes left is inside botocore's refresh window: the first signature already asks again.
    assert "X-Amz-Credential=second%2F" in presigned(client)
