"""Token stores through the namespace's shared cache, against a real MinIO: the preflight tokenizes once, the
training pods (read-only, with their own downloads of the same objects) tokenize nothing, a corrupted store
is never trained on, and an object downloaded alone is not downloaded again while its ETag holds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from finetune_trainer.model_cache import MANIFEST
from finetune_trainer.preflight import TrainingTopology, preflight
from finetune_trainer.run import run
from finetune_trainer.storage import credentials_for, resolve_data, s3_client
from test_s3 import bucket, minio, s3_secret  # noqa: F401 - fixtures
from trainer_data import general_rows, sft_rows, step_losses, write_jsonl

pytestmark = [pytest.mark.trainer, pytest.mark.s3]

CPU = TrainingTopology(processes=1, on_gpu=False)
TRAINING = {"maxSteps": 6, "checkpointEverySteps": 3}


@pytest.fixture
def s3_job(make_job, bucket, trainer_env):  # noqa: F811 - the fixture imported above
    """A job whose training data is one S3 object and whose general data is an S3 prefix."""
    client = s3_client(credentials_for("data"))
    client.upload_file(str(write_jsonl(trainer_env / "up" / "train.jsonl", sft_rows(60))), bucket, "task/train.jsonl")
    general = write_jsonl(trainer_env / "up" / "general.jsonl", general_rows(12))
    client.upload_file(str(general), bucket, "general/part-0.jsonl")
    data = {"train": [{"uri": f"s3://{bucket}/task/train.jsonl"}], "general": {"uri": f"s3://{bucket}/general"}}
    return lambda name: make_job(name=name, data=data, training=TRAINING)


def as_preflight(monkeypatch, shared: Path) -> None:
    monkeypatch.setenv("FINETUNE_SHARED_CACHE_DIR", str(shared))
    monkeypatch.delenv("FINETUNE_SHARED_CACHE_READONLY", raising=False)


def as_training_pod(monkeypatch, shared: Path | None, own_cache: Path) -> None:
    """Another pod: its own cache directory (so its own downloads, with their own modification times)."""
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(own_cache))
    if shared is None:
        monkeypatch.delenv("FINETUNE_SHARED_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("FINETUNE_SHARED_CACHE_DIR", str(shared))
        monkeypatch.setenv("FINETUNE_SHARED_CACHE_READONLY", "1")


def store_uri(shared: Path, store: Path) -> str:
    return next(uri for uri, found in store_entries(shared).items() if found == store)


def store_entries(shared: Path) -> dict[str, Path]:
    """uri -> the store directory of every token-store entry in the shared cache."""
    found = {}
    for manifest in sorted((shared / "entries").glob(f"*/{MANIFEST}")):
        uri = json.loads(manifest.read_text())["uri"]
        if uri.startswith("token-store:"):
            found[uri.removeprefix("token-store:")] = manifest.parent / "files" / "store"
    return found


def planned(s3_job, trainer_env: Path, monkeypatch, name: str) -> tuple[Path, Path]:
    """A job of that name planned by its preflight with the shared cache: (the cache, the job's config)."""
    shared, config = trainer_env / "shared", s3_job(name)
    as_preflight(monkeypatch, shared)
    preflight(config, CPU)
    return shared, config


def test_the_preflight_tokenizes_into_the_shared_cache_and_training_pods_tokenize_nothing(
    s3_job, trainer_env, monkeypatch, trainer_log
):
    shared, config = planned(s3_job, trainer_env, monkeypatch, "shared")
    assert [fields["read_only"] for fields in trainer_log.fields_of("token_store_from_shared_cache")] == [False, False]
    assert trainer_log.fields_of("token_store_built") == []  # built as cache fills, not into the pod's own cache
    data = json.loads(config.read_text())["data"]
    assert sorted(store_entries(shared)) == sorted([data["train"][0]["uri"], data["general"]["uri"]])

    as_training_pod(monkeypatch, shared, trainer_env / "pod-cache")
    trainer_log.records.clear()
    run(config)
    taken = trainer_log.fields_of("token_store_from_shared_cache")
    assert [record["read_only"] for record in taken] == [True, True]
    assert not (trainer_env / "pod-cache" / "token-stores").exists()  # downloaded, never tokenized

    as_training_pod(monkeypatch, None, trainer_env / "lone-cache")  # no shared cache: tokenized by the pod
    alone = s3_job("alone")
    run(alone)
    assert (trainer_env / "lone-cache" / "token-stores").is_dir()
    assert step_losses(config) == step_losses(alone)


def test_a_corrupted_shared_store_is_never_trained_on_and_the_next_preflight_refills_it(
    s3_job, trainer_env, monkeypatch, trainer_log
):
    shared, config = planned(s3_job, trainer_env, monkeypatch, "corrupt")
    stores = store_entries(shared)
    ids = next(iter(stores.values())) / "ids.bin"
    original = ids.read_bytes()
    ids.write_bytes(b"\0" * len(original))  # same size: only the checksums tell

    as_training_pod(monkeypatch, shared, trainer_env / "pod-cache")
    trainer_log.records.clear()
    run(config)
    assert len(trainer_log.fields_of("token_store_built")) == 1  # the pod tokenized that source itself
    assert (trainer_env / "pod-cache" / "token-stores").is_dir()

    as_preflight(monkeypatch, shared)
    preflight(config, CPU)
    assert ids.read_bytes() == original


def test_a_store_forged_with_its_cache_manifest_is_not_used_by_the_preflight_either(
    s3_job, trainer_env, monkeypatch, trainer_log
):
    """A pod of the namespace that rewrites a store and its cache manifest passes the cache's checks; the store's
    own checks refuse it, and the preflight tokenizes that source itself instead of failing."""
    shared, config = planned(s3_job, trainer_env, monkeypatch, "forged")
    store = next(iter(store_entries(shared).values()))
    ids = store / "ids.bin"
    ids.write_bytes(b"\0" * ids.stat().st_size)
    manifest_path = store.parent.parent / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["store/ids.bin"]["sha256"] = hashlib.sha256(ids.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))

    trainer_log.records.clear()
    preflight(config, CPU)
    assert [fields["uri"] for fields in trainer_log.fields_of("token_store_unusable")] == [store_uri(shared, store)]
    assert len(trainer_log.fields_of("token_store_built")) == 1


def test_an_object_downloaded_alone_is_kept_while_its_etag_holds(bucket, trainer_env):  # noqa: F811
    client = s3_client(credentials_for("data"))
    client.put_object(Bucket=bucket, Key="one/rows.jsonl", Body=b'{"text": "a"}\n')
    first = resolve_data(f"s3://{bucket}/one/rows.jsonl")
    downloaded_at = first.stat().st_mtime_ns
    assert resolve_data(f"s3://{bucket}/one/rows.jsonl").stat().st_mtime_ns == downloaded_at

    client.put_object(Bucket=bucket, Key="one/rows.jsonl", Body=b'{"text": "b"}\n')  # same size, new ETag
    assert resolve_data(f"s3://{bucket}/one/rows.jsonl").read_bytes() == b'{"text": "b"}\n'
