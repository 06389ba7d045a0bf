"""Bounded reads of what a tenant stored: bytes per object, bytes per file, time per look, paths,
credentials and local files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from finetune_operator.settings import Settings
from finetune_operator.storage import (
    SMALL_OBJECT_LIMIT_BYTES,
    Deadline,
    FileStore,
    ObjectRefused,
    StorageUnreachable,
    open_store,
    read_at_most,
    s3_client,
    sha256_of_exactly,
)

KEYS = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}
PLATFORM = frozenset({"http://minio.storage.svc:9000"})


class Clock:
    """A clock the test moves: each reading advances it by ``step`` seconds."""

    def __init__(self, step: float = 0.0):
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def endless(chunk: bytes = b"x" * 1024):
    while True:
        yield chunk


# -- pure bounds ----------------------------------------------------------------------------------


def test_a_stream_within_the_limit_is_read_whole():
    assert read_at_most(iter([b"ab", b"cd"]), 4) == b"abcd"


def test_reading_stops_as_soon_as_a_stream_passes_the_limit():
    consumed = []

    def counted():
        for chunk in endless():
            consumed.append(chunk)
            yield chunk

    assert read_at_most(counted(), 4096) is None
    assert len(consumed) == 5  # 5 KiB: the first chunk past 4 KiB, and not one more


def test_a_hash_is_of_exactly_the_size_given_and_never_reads_past_it():
    assert sha256_of_exactly(iter([b"abc"]), 3) == hashlib.sha256(b"abc").hexdigest()
    assert sha256_of_exactly(iter([b"ab"]), 3) is None
    assert sha256_of_exactly(endless(), 1) is None  # returns at the first chunk past the size


def test_a_deadline_passes_on_its_clock_and_names_where_it_stopped():
    clock = Clock()
    deadline = Deadline(300, clock)
    clock.now += 299
    deadline.check("s3://b/a/model.bin")
    clock.now += 1
    with pytest.raises(StorageUnreachable) as raised:
        deadline.check("s3://b/a/model.bin")
    assert raised.value.reason == "VerificationTimedOut"
    assert raised.value.message == "s3://b/a/model.bin: still reading after the 300 s allowed for one look"


# -- a directory store (the verification pod's claim) ----------------------------------------------


def test_a_small_object_above_its_limit_is_refused_before_it_is_read(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b"{" * (SMALL_OBJECT_LIMIT_BYTES + 1))
    with pytest.raises(ObjectRefused) as raised:
        FileStore(f"file://{tmp_path}").read_small("manifest.json")
    assert raised.value.reason == "ObjectTooLarge"
    assert raised.value.message == (
        f"file://{tmp_path}/manifest.json is {SMALL_OBJECT_LIMIT_BYTES + 1} bytes; at most {SMALL_OBJECT_LIMIT_BYTES} are read"
    )


class LyingStore(FileStore):
    """Its size answer says 10 bytes whatever the object holds, as a hostile server's could."""

    def size(self, name: str) -> int | None:
        return 10


def test_a_size_that_lies_does_not_lift_the_limit(tmp_path):
    (tmp_path / "adapter_config.json").write_bytes(b" " * (64 << 20))
    with pytest.raises(ObjectRefused) as raised:
        LyingStore(f"file://{tmp_path}").read_small("adapter_config.json", limit=1024)
    assert raised.value.reason == "ObjectTooLarge" and "larger than 1024 bytes" in raised.value.message


def test_a_store_hands_out_no_more_than_asked(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"w" * (3 << 20))
    chunks = list(FileStore(f"file://{tmp_path}").chunks("weights.bin", (1 << 20) + 1))
    assert sum(len(chunk) for chunk in chunks) == (1 << 20) + 1


def test_a_file_is_hashed_only_when_it_has_the_size_given(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    store = FileStore(f"file://{tmp_path}")
    assert store.sha256("a.bin", 3) == hashlib.sha256(b"abc").hexdigest()
    assert store.sha256("a.bin", 2) is None


def test_all_reads_of_one_store_share_its_deadline(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"w" * (8 << 20))
    store = FileStore(f"file://{tmp_path}", Deadline(5, Clock(step=1)))  # every look at the clock: 1 s later
    with pytest.raises(StorageUnreachable) as raised:
        store.sha256("weights.bin", 8 << 20)
    assert raised.value.reason == "VerificationTimedOut" and "weights.bin" in raised.value.message


@pytest.mark.parametrize("name", ["../outside.json", "/etc/hostname", "link/outside.json", "escape.json"])
def test_a_name_that_resolves_outside_the_directory_is_refused(tmp_path, name):
    root, outside = tmp_path / "artifact", tmp_path / "outside.json"
    root.mkdir()
    outside.write_text("{}")
    (root / "link").symlink_to(tmp_path)
    (root / "escape.json").symlink_to(outside)
    store = FileStore(f"file://{root}")
    with pytest.raises(ObjectRefused) as raised:
        store.read_small(name)
    assert raised.value.reason == "PathOutsideArtifact"


def test_a_fifo_or_a_directory_is_no_file(tmp_path):
    os.mkfifo(tmp_path / "manifest.json")
    (tmp_path / "adapter_config.json").mkdir()
    store = FileStore(f"file://{tmp_path}")
    assert store.read_small("manifest.json") is None and store.size("adapter_config.json") is None


def test_a_missing_file_is_none(tmp_path):
    assert FileStore(f"file://{tmp_path}").read_small("manifest.json") is None
    assert FileStore(f"file://{tmp_path / 'no-such-dir'}").size("a/b.bin") is None


# -- which stores the operator opens --------------------------------------------------------------


def test_file_locations_are_refused_unless_the_operator_runs_in_local_mode(tmp_path):
    with pytest.raises(StorageUnreachable) as raised:
        open_store("file:///var/run/secrets/kubernetes.io/serviceaccount/", {}, Settings())
    assert raised.value.reason == "StorageNotReadable" and "--allow-local-files" in raised.value.message
    assert isinstance(open_store(f"file://{tmp_path}/", {}, Settings(allow_local_files=True)), FileStore)


def test_a_store_opened_gets_the_settings_deadline(tmp_path):
    clock = Clock()
    store = open_store(
        f"file://{tmp_path}/", {}, Settings(allow_local_files=True, verification_timeout_seconds=7), clock
    )
    (Path(tmp_path) / "a").write_text("x")
    clock.now += 7
    with pytest.raises(StorageUnreachable):
        store.size("a")


@pytest.mark.parametrize("credentials", [{}, {"AWS_ACCESS_KEY_ID": "id"}, {"AWS_SECRET_ACCESS_KEY": "s"}])
def test_s3_is_read_only_with_both_keys_of_a_secret(credentials):
    with pytest.raises(StorageUnreachable) as raised:
        s3_client({**credentials, "AWS_ENDPOINT_URL": "http://minio.storage.svc:9000"}, PLATFORM)
    assert raised.value.reason == "CredentialsMissing"


def test_keys_in_the_operators_environment_do_not_stand_in_for_a_secrets(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    with pytest.raises(StorageUnreachable) as raised:
        s3_client({"AWS_ENDPOINT_URL": "http://minio.storage.svc:9000"}, PLATFORM)
    assert raised.value.reason == "CredentialsMissing"


def test_the_client_signs_with_the_secrets_keys_and_nothing_else(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://elsewhere.example:9000")
    client = s3_client({**KEYS, "AWS_ENDPOINT_URL": "http://minio.storage.svc:9000"}, PLATFORM)
    url = client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    assert url.startswith("http://minio.storage.svc:9000/b/k?") and "X-Amz-Credential=id%2F" in url


def test_an_endpoint_outside_the_allowlist_is_refused_before_a_client_exists():
    with pytest.raises(StorageUnreachable) as raised:
        s3_client({**KEYS, "AWS_ENDPOINT_URL": "http://169.254.169.254"}, PLATFORM)
    assert raised.value.reason == "EndpointNotAllowed"


def test_no_endpoint_is_aws_own_s3():
    url = s3_client({**KEYS, "AWS_REGION": "eu-west-1"}, PLATFORM).generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": "k"}
    )
    assert url.startswith("https://s3.amazonaws.com/b/k?") and "X-Amz-Credential=id%2F20" in url


def test_a_region_that_is_no_region_name_is_a_storage_error_not_a_crash():
    with pytest.raises(StorageUnreachable) as raised:
        s3_client({**KEYS, "AWS_REGION": "evil.example/#"}, PLATFORM)
    assert raised.value.reason == "StorageError"
