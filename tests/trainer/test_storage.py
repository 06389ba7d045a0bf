"""Storage: URIs to local paths, credentials, Hub models from an offline cache or a mirror, output locations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from finetune_core.api import ExitCode
from finetune_trainer.errors import ConfigError, DataError, TrainerError, exit_code_of
from finetune_trainer.run import run
from finetune_trainer.storage import (
    LocalLocation,
    credentials_for,
    fetch_model,
    join_below,
    local_path,
    open_location,
    parse_uri,
    resolve_data,
    s3_download,
    s3_objects,
)
from hub_mirror import HubMirror, populate_hub_cache

pytestmark = pytest.mark.trainer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ---- URIs


def test_file_uris_are_absolute_local_paths():
    assert local_path("file:///data/train.jsonl") == Path("/data/train.jsonl")
    with pytest.raises(ConfigError, match="absolute"):
        parse_uri("file://relative/path")


def test_pvc_uris_live_under_the_mount_root(trainer_env):
    assert local_path("pvc://datasets/team/train.jsonl") == trainer_env / "pvc" / "datasets" / "team" / "train.jsonl"


def test_pvc_mount_root_defaults_to_mnt_pvc(monkeypatch):
    monkeypatch.delenv("FINETUNE_PVC_ROOT", raising=False)
    assert local_path("pvc://claim/a/b") == Path("/mnt/pvc/claim/a/b")


@pytest.mark.parametrize(
    "uri",
    ["pvc://claim/../../etc", "pvc://claim/a/../../../etc/passwd", "pvc://../etc", "pvc://claim/a//b", "pvc://./x"],
)
def test_pvc_uris_that_would_leave_their_claim_are_a_configuration_error(trainer_env, uri):
    with pytest.raises(ConfigError, match=r"has an? ('\.\.?'|empty) segment"):
        local_path(uri)
    with pytest.raises(ConfigError):
        resolve_data(uri)


@pytest.mark.parametrize("relative", ["a", "a/b.json", ".hidden", "..x"])
def test_join_below_keeps_names_below_the_root(tmp_path, relative):
    assert join_below(tmp_path, relative, "the key") == tmp_path / relative


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", ""])
def test_join_below_refuses_names_that_could_leave_the_root_naming_them(tmp_path, relative):
    with pytest.raises(DataError, match=f"the key {re.escape(repr(relative))} has"):
        join_below(tmp_path, relative, "the key")
    with pytest.raises(ConfigError):
        join_below(tmp_path, relative, "the key", ConfigError)


@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "/escaped", "."])
def test_a_local_location_refuses_names_outside_it_and_writes_nothing(trainer_env, name):
    location = open_location(f"file://{trainer_env}/out/job")
    for operation in (
        lambda: location.child(name),
        lambda: location.read_bytes(name),
        lambda: location.write_bytes(name, b"x"),
        lambda: location.download(name),
        lambda: location.staging_dir(f"x/{name}"),
        lambda: location.delete(name, "complete.json"),
    ):
        with pytest.raises(DataError, match=r"has an?"):
            operation()
    assert not (trainer_env / "out" / "escaped").exists()
    assert not (trainer_env / "escaped").exists()


def test_remote_uris_have_no_local_path():
    assert local_path("s3://bucket/prefix") is None
    assert parse_uri("s3://bucket/some/prefix/").path == "some/prefix"


def test_an_unknown_scheme_is_a_configuration_error():
    with pytest.raises(ConfigError, match="unsupported URI"):
        parse_uri("gs://bucket/x")


def test_data_on_a_pvc_resolves_to_the_mounted_file(trainer_env):
    target = trainer_env / "pvc" / "claim" / "train.jsonl"
    target.parent.mkdir(parents=True)
    target.write_text("{}\n")
    assert resolve_data("pvc://claim/train.jsonl") == target
    with pytest.raises(DataError, match="nothing at"):
        resolve_data("pvc://claim/missing.jsonl")


# ---- credentials


def test_credentials_come_from_the_mounted_secret_when_there_is_one(trainer_env, monkeypatch):
    mounted = trainer_env / "credentials" / "output"
    mounted.mkdir(parents=True)
    (mounted / "AWS_ACCESS_KEY_ID").write_text("from-secret\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-environment")

    output = credentials_for("output")

    assert output.get("AWS_ACCESS_KEY_ID") == "from-secret"
    assert credentials_for("model").get("AWS_ACCESS_KEY_ID") == "from-environment"


def test_s3_without_keys_in_the_secret_is_refused_whatever_the_pod_environment_holds(trainer_env, monkeypatch):
    # A node's instance role or a workload identity would answer boto3's default chain: never asked.
    mounted = trainer_env / "credentials" / "model"
    mounted.mkdir(parents=True)
    (mounted / "AWS_REGION").write_text("us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ambient-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    with pytest.raises(ConfigError, match="no AWS_ACCESS_KEY_ID and no AWS_SECRET_ACCESS_KEY") as raised:
        fetch_model("s3://bucket/models/tiny")
    assert exit_code_of(raised.value) == ExitCode.CONFIG_ERROR and "ambient" not in str(raised.value)


def test_credentials_never_show_their_values(trainer_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    shown = repr(credentials_for("model")) + str(credentials_for("model"))
    assert "hf_secret_value" not in shown and "HF_TOKEN" in shown


# ---- Hugging Face Hub


def test_an_hf_model_is_found_in_the_offline_cache_and_pinned_to_its_commit(trainer_env, tiny_model_dir, monkeypatch):
    cache = trainer_env / "hf-cache"
    snapshot = populate_hub_cache(cache, "org/tiny", tiny_model_dir, COMMIT, refs=("main", "v1"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: offline must not try

    assert fetch_model("hf://org/tiny") == fetch_model("hf://org/tiny", "v1")
    fetched = fetch_model("hf://org/tiny", COMMIT)
    assert fetched.path == snapshot and fetched.revision == COMMIT


def test_an_hf_revision_missing_from_the_offline_cache_says_so(trainer_env, tiny_model_dir, monkeypatch):
    populate_hub_cache(trainer_env / "hf-cache", "org/tiny", tiny_model_dir, COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="offline cache"):
        fetch_model("hf://org/tiny", "v2")


def test_an_hf_model_downloads_from_the_mirror_in_hf_endpoint(trainer_env, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HubMirror("org/tiny", tiny_model_dir, COMMIT) as mirror:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        fetched = fetch_model("hf://org/tiny", "main")
        assert any(r.startswith("GET /api/models/org/tiny/revision/main") for r in mirror.requests)
    assert fetched.revision == COMMIT
    assert (fetched.path / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


def test_an_unreachable_hub_is_a_retried_failure_not_a_configuration_error(trainer_env, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with pytest.raises(TrainerError, match="unreachable") as raised:
        fetch_model("hf://org/tiny", "main")
    assert not isinstance(raised.value, ConfigError)
    assert exit_code_of(raised.value) == ExitCode.FAILURE


@pytest.fixture
def dataset_repo(tmp_path) -> Path:
    repo = tmp_path / "dataset-repo"
    for name in ("data/train-00000.jsonl", "data/train-00001.jsonl", "data/test-00000.jsonl", "README.md"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text('{"text": "row"}\n')
    return repo


def test_an_hf_dataset_path_downloads_only_that_path(trainer_env, dataset_repo, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HubMirror("org/corpus", dataset_repo, COMMIT, repo_type="dataset") as mirror:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        path = resolve_data("hf://datasets/org/corpus/data/train-00001.jsonl")
        fetched = [r for r in mirror.requests if "/resolve/" in r]
    assert path.read_text() == '{"text": "row"}\n'
    assert fetched and all(r.endswith("data/train-00001.jsonl") for r in fetched), fetched


def test_a_whole_hf_dataset_with_a_test_split_is_refused_naming_the_training_files(
    trainer_env, dataset_repo, monkeypatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HubMirror("org/corpus", dataset_repo, COMMIT, repo_type="dataset") as mirror:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        with pytest.raises(ConfigError, match=r"data/test-00000\.jsonl.*hf://datasets/org/corpus/data/train-00000"):
            resolve_data("hf://datasets/org/corpus")


def test_an_hf_token_from_the_model_secret_is_sent_to_the_mirror(trainer_env, tiny_model_dir, monkeypatch):
    secret = trainer_env / "credentials" / "model"
    secret.mkdir(parents=True)
    (secret / "HF_TOKEN").write_text("hf_from_secret")
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = []
    with HubMirror("org/tiny", tiny_model_dir, COMMIT) as mirror:
        handler = mirror._server.RequestHandlerClass
        original = handler._serve

        def recording(self, body):
            seen.append(self.headers.get("Authorization"))
            original(self, body)

        handler._serve = recording
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        fetch_model("hf://org/tiny", "main")
    assert "Bearer hf_from_secret" in seen


def test_a_run_on_an_hf_model_pins_the_adapter_to_the_resolved_commit(
    make_job, tiny_model_dir, trainer_env, monkeypatch
):
    populate_hub_cache(trainer_env / "hf-cache", "org/tiny", tiny_model_dir, COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = make_job(model_uri="hf://org/tiny", training={"maxSteps": 2})

    report = run(config)

    assert report.model_revision == COMMIT
    adapter_config = json.loads((Path(report.artifact.uri.removeprefix("file://")) / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "hf://org/tiny"
    assert adapter_config["revision"] == COMMIT


# ---- output locations on local storage


def test_a_local_location_shows_a_directory_only_once_sealed(trainer_env):
    location = open_location(f"file://{trainer_env}/out")
    assert isinstance(location, LocalLocation)
    staging = location.staging_dir("step-1")
    staging.mkdir(parents=True)
    (staging / "weights").write_bytes(b"w")
    location.upload(staging, "step-1")
    assert location.list_dirs() == []

    location.seal(staging, "step-1", "complete.json", b"{}")

    assert location.list_dirs() == ["step-1"]
    assert location.child("step-1").read_bytes("weights") == b"w"
    assert location.exists("step-1/complete.json")
    assert not staging.exists()


def test_deleting_removes_the_marker_first_and_the_directory(trainer_env):
    location = open_location(f"file://{trainer_env}/out")
    staging = location.staging_dir("a")
    staging.mkdir(parents=True)
    location.seal(staging, "a", "complete.json", b"{}")
    location.delete("a", "complete.json")
    assert location.list_dirs() == []
    assert not any((trainer_env / "out").iterdir())


def test_hf_uris_are_not_output_locations():
    with pytest.raises(ConfigError, match="outputs go to"):
        open_location("hf://org/name")


class _Listing:
    """A client whose bucket lists ``keys`` (a store other than MinIO may hold any key) and downloads nothing."""

    def __init__(self, keys: list[str]):
        self.keys, self.downloads = keys, []

    def get_paginator(self, _operation: str):
        return self

    def paginate(self, Bucket: str, Prefix: str):
        return [{"Contents": [{"Key": key, "Size": 1, "ETag": '"e"'} for key in self.keys if key.startswith(Prefix)]}]

    def download_file(self, bucket: str, key: str, path: str) -> None:
        self.downloads.append(key)
        Path(path).write_bytes(b"x")


@pytest.mark.parametrize("key", ["model/../../escape", "model//x", "model/./x"])
def test_a_listed_key_that_would_leave_the_destination_is_refused_and_nothing_is_written_outside(tmp_path, key):
    client = _Listing(["model/config.json", key])
    with pytest.raises(DataError, match="segment"):
        s3_download(client, "bucket", "model", tmp_path / "cache" / "dest")
    with pytest.raises(DataError, match="segment"):
        list(s3_objects(client, "bucket", "model"))  # the shared cache's listing: the same check
    assert not (tmp_path / "escape").exists() and client.downloads == ["model/config.json"]
