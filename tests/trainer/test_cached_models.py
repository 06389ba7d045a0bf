"""Base models through the shared cache against a real MinIO: one download per version, corruption refilled,
read-only readers that fall back to their own download."""

from __future__ import annotations

import json

import pytest
from finetune_trainer.cached_models import cache_stats, fetch_model_shared, shared_cache
from finetune_trainer.model_cache import MANIFEST
from finetune_trainer.storage import credentials_for, s3_client
from hub_mirror import HubMirror, populate_hub_cache
from test_s3 import bucket, minio, s3_secret, upload_tree  # noqa: F401 - fixtures

pytestmark = pytest.mark.trainer
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def shared(trainer_env, monkeypatch):
    monkeypatch.setenv("FINETUNE_SHARED_CACHE_DIR", str(trainer_env / "shared"))
    monkeypatch.delenv("FINETUNE_SHARED_CACHE_READONLY", raising=False)
    return trainer_env / "shared"


@pytest.fixture
def model_uri(bucket, tiny_model_dir) -> str:  # noqa: F811 - the fixture imported above
    upload_tree(s3_client(credentials_for("model")), bucket, "models/tiny", tiny_model_dir)
    return f"s3://{bucket}/models/tiny"


@pytest.mark.s3
def test_two_fetches_of_one_model_download_it_once(shared, model_uri, tiny_model_dir):
    first = fetch_model_shared(model_uri)
    second = fetch_model_shared(model_uri)
    assert first.path == second.path and str(first.path).startswith(str(shared))
    assert (second.path / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    stats = cache_stats()
    assert (stats.misses, stats.hits, stats.refills) == (1, 1, 0)
    assert stats.bytes == sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.is_file())


@pytest.mark.s3
def test_a_changed_object_is_another_version_and_is_downloaded_again(shared, bucket, model_uri):  # noqa: F811
    first = fetch_model_shared(model_uri)
    s3_client(credentials_for("model")).put_object(Bucket=bucket, Key="models/tiny/extra.txt", Body=b"new")
    second = fetch_model_shared(model_uri)
    assert first.path != second.path and (second.path / "extra.txt").read_bytes() == b"new"
    assert cache_stats().misses == 2


@pytest.mark.s3
def test_a_corrupted_entry_is_detected_and_downloaded_again(shared, model_uri, tiny_model_dir):
    first = fetch_model_shared(model_uri)
    weights = first.path / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size: only the sha256 tells
    again = fetch_model_shared(model_uri)
    assert (again.path / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert cache_stats().refills == 1


@pytest.mark.s3
def test_a_read_only_reader_takes_the_filled_entry_and_downloads_itself_without_one(
    shared, model_uri, trainer_env, monkeypatch
):
    monkeypatch.setenv("FINETUNE_SHARED_CACHE_READONLY", "1")
    own = fetch_model_shared(model_uri)
    assert not str(own.path).startswith(str(shared)) and not (shared / "entries").exists()

    monkeypatch.delenv("FINETUNE_SHARED_CACHE_READONLY")
    filled = fetch_model_shared(model_uri)
    monkeypatch.setenv("FINETUNE_SHARED_CACHE_READONLY", "1")
    manifest = json.loads((filled.path.parent / MANIFEST).read_text())
    assert fetch_model_shared(model_uri).path == filled.path
    assert json.loads((filled.path.parent / MANIFEST).read_text()) == manifest  # a reader writes nothing
    (filled.path / "config.json").write_text("{}")  # another size
    assert not str(fetch_model_shared(model_uri).path).startswith(str(shared))


@pytest.mark.s3
def test_without_a_shared_cache_a_model_is_fetched_as_before(trainer_env, model_uri, monkeypatch):
    monkeypatch.delenv("FINETUNE_SHARED_CACHE_DIR", raising=False)
    assert shared_cache() is None
    assert str(fetch_model_shared(model_uri).path).startswith(str(trainer_env / "cache"))


def test_a_hub_model_is_cached_by_its_resolved_commit_and_read_only_readers_find_it_by_that_commit(
    shared, trainer_env, tiny_model_dir, monkeypatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HubMirror("org/tiny", tiny_model_dir, COMMIT) as mirror:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        first = fetch_model_shared("hf://org/tiny", "main")
        second = fetch_model_shared("hf://org/tiny", "main")
        weights = [r for r in mirror.requests if r.startswith("GET") and r.endswith("model.safetensors")]
        monkeypatch.setenv("FINETUNE_SHARED_CACHE_READONLY", "1")
        before = len(mirror.requests)
        pinned = fetch_model_shared("hf://org/tiny", COMMIT)  # what training pods are given: the plan's commit
        assert len(mirror.requests) == before  # not even asked
    assert first.revision == second.revision == pinned.revision == COMMIT
    assert first.path == second.path == pinned.path and str(first.path).startswith(str(shared))
    assert len(weights) == 1, weights
    assert (pinned.path / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


def test_an_offline_hub_model_is_read_from_the_hub_cache_and_never_asked_for_online(
    shared, trainer_env, tiny_model_dir, monkeypatch
):
    snapshot = populate_hub_cache(trainer_env / "hf-cache", "org/tiny", tiny_model_dir, COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(trainer_env / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with HubMirror("org/tiny", tiny_model_dir, COMMIT) as mirror:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        fetched = fetch_model_shared("hf://org/tiny", "main")
        assert mirror.requests == []
    assert fetched.path == snapshot and fetched.revision == COMMIT
    assert not (shared / "entries").exists()
