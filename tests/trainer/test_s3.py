"""S3 storage against a real MinIO server: models, data, checkpoints and artifacts through an S3 API.

MinIO is built from Go modules into the binary cache (``make binaries``); the tests skip, saying
so, when it has not been built.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import torch
from botocore.exceptions import ClientError
from finetune_core.api import Manifest, manifest_of_directory
from finetune_trainer.checkpoint import Checkpointer
from finetune_trainer.errors import ConfigError, DataError, Preempted
from finetune_trainer.report import TrainingHooks
from finetune_trainer.run import run
from finetune_trainer.storage import (
    S3Location,
    credentials_for,
    fetch_model,
    open_location,
    resolve_data,
    s3_client,
    s3_download,
)
from trainer_data import sft_rows, write_jsonl

from hack.localcluster import minio as minio_credentials
from hack.localcluster.minio import MinioServer

pytestmark = [pytest.mark.trainer, pytest.mark.s3]


@pytest.fixture(scope="module")
def minio() -> str:
    """A MinIO server on a free loopback port (built from Go modules on first use); yields its endpoint URL."""
    with MinioServer() as server:
        yield server.endpoint


@pytest.fixture
def s3_secret(minio, trainer_env) -> Path:
    """The operator's mounted Secrets for model, data and output, all pointing at MinIO."""
    root = trainer_env / "credentials"
    for purpose in ("model", "data", "output"):
        directory = root / purpose
        directory.mkdir(parents=True)
        for key, value in {
            "AWS_ACCESS_KEY_ID": minio_credentials.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": minio_credentials.SECRET_KEY,
            "AWS_ENDPOINT_URL": minio,
            "AWS_REGION": "us-east-1",
        }.items():
            (directory / key).write_text(value + "\n")
    return root


@pytest.fixture
def bucket(s3_secret) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client(credentials_for("output")).create_bucket(Bucket=name)
    return name


def upload_tree(client, bucket: str, prefix: str, directory: Path) -> None:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")


def test_a_directory_on_s3_is_visible_only_once_its_marker_is_written(bucket):
    location = open_location(f"s3://{bucket}/runs/job/checkpoints")
    assert isinstance(location, S3Location)
    staging = location.staging_dir("step-5")
    staging.mkdir(parents=True)
    (staging / "weights.safetensors").write_bytes(b"weights")
    (staging / "nested").mkdir()
    (staging / "nested" / "file").write_bytes(b"x")

    location.upload(staging, "step-5")
    checkpointer = Checkpointer(location, keep=2, dist=None)
    assert location.list_dirs() == ["step-5"]
    assert checkpointer.complete() == []  # uploaded but not sealed: a partial checkpoint

    location.seal(staging, "step-5", "complete.json", b"{}")
    assert [c.step for c in checkpointer.complete()] == [5]
    downloaded = location.download("step-5")
    assert (downloaded / "nested" / "file").read_bytes() == b"x"

    location.delete("step-5", "complete.json")
    assert location.list_dirs() == []


def test_a_model_and_data_are_read_from_s3_with_the_mounted_credentials(bucket, tiny_model_dir, trainer_env):
    client = s3_client(credentials_for("model"))
    upload_tree(client, bucket, "models/tiny", tiny_model_dir)
    data = write_jsonl(trainer_env / "train.jsonl", sft_rows(5))
    client.upload_file(str(data), bucket, "data/train.jsonl")

    fetched = fetch_model(f"s3://{bucket}/models/tiny")
    assert (fetched.path / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert resolve_data(f"s3://{bucket}/data/train.jsonl").read_text() == data.read_text()
    assert resolve_data(f"s3://{bucket}/data").is_dir()


def test_a_reused_cache_follows_the_bucket_when_objects_change_or_go(bucket, trainer_env):
    client = s3_client(credentials_for("data"))
    client.put_object(Bucket=bucket, Key="data/a.jsonl", Body=b'{"text": "one"}\n')
    client.put_object(Bucket=bucket, Key="data/b.jsonl", Body=b'{"text": "two"}\n')
    first = resolve_data(f"s3://{bucket}/data")
    assert sorted(p.name for p in first.iterdir() if not p.name.startswith(".")) == ["a.jsonl", "b.jsonl"]

    client.put_object(Bucket=bucket, Key="data/a.jsonl", Body=b'{"text": "ONE"}\n')  # same size, new content
    client.delete_object(Bucket=bucket, Key="data/b.jsonl")
    again = resolve_data(f"s3://{bucket}/data")

    assert again == first
    assert (again / "a.jsonl").read_bytes() == b'{"text": "ONE"}\n'
    assert not (again / "b.jsonl").exists()


@pytest.mark.parametrize("key", ["data/../x", "data/./x", "data//x", "data/a/.."])
def test_minio_refuses_keys_with_dot_or_empty_segments(bucket, key):
    # Why the trainer's refusal of such keys in a listing is tested on join_below itself (test_storage.py):
    # this server never lists them. Other S3 implementations may.
    client = s3_client(credentials_for("data"))
    with pytest.raises(ClientError, match=r"XMinioInvalid(Resource|Object)Name"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")


def test_keys_that_look_like_dot_segments_are_downloaded_below_the_destination(bucket, trainer_env):
    client = s3_client(credentials_for("data"))
    keys = ["data/..x", "data/...", "data/a..", "data/.hidden", "data/%2e%2e/x", "/data/leading-slash"]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    dest = trainer_env / "mirror" / "data"

    assert s3_download(client, bucket, "data", dest) == len(keys)

    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == sorted(["..x", "...", "a..", ".hidden", "%2e%2e/x", "leading-slash"])
    assert all(p.resolve().is_relative_to(dest.resolve()) for p in dest.rglob("*"))
    assert sorted(p.name for p in (trainer_env / "mirror").iterdir()) == [".data.etags", "data"]


def test_a_checkpoint_name_outside_the_location_is_refused_before_any_request(bucket, trainer_env):
    location = open_location(f"s3://{bucket}/runs/job/checkpoints")
    for name in ("..", "../other-job/step-1", "/abs", "a//b"):
        with pytest.raises(DataError, match=r"has an?"):
            location.download(name)
        with pytest.raises(DataError, match=r"has an?"):
            location.child(name)
    assert not (trainer_env / "scratch" / "downloads").exists()


def test_wrong_s3_keys_are_a_configuration_error(bucket, s3_secret):
    (s3_secret / "model" / "AWS_SECRET_ACCESS_KEY").write_text("wrong")
    with pytest.raises(ConfigError, match="S3 refused"):
        fetch_model(f"s3://{bucket}/models/tiny")


class SigtermAfterStep(TrainingHooks):
    def __init__(self, step: int):
        self.step = step

    def on_step(self, metrics):
        if metrics.step == self.step:
            os.kill(os.getpid(), 15)


def test_a_run_on_s3_checkpoints_resumes_and_publishes_an_adapter_that_loads(
    bucket, make_job, tiny_model_dir, trainer_env
):
    client = s3_client(credentials_for("output"))
    upload_tree(client, bucket, "models/tiny", tiny_model_dir)
    prefix = f"s3://{bucket}/out/team"
    config = make_job(
        model_uri=f"s3://{bucket}/models/tiny",
        training={"maxSteps": 12, "checkpointEverySteps": 4},
        output={"checkpointsUri": f"{prefix}/job/checkpoints", "artifactUri": f"{prefix}/job-adapter/v1"},
    )

    with pytest.raises(Preempted):
        run(config, hooks=[SigtermAfterStep(6)])
    steps = [c.step for c in Checkpointer(open_location(f"{prefix}/job/checkpoints"), 2, None).complete()]
    assert steps == [4, 6]
    report = run(config)
    assert report.resumed_from_step == 6

    downloaded = trainer_env / "downloaded"
    s3_download(client, bucket, "out/team/job-adapter/v1", downloaded)
    manifest = Manifest.model_validate_json((downloaded / "manifest.json").read_text())
    assert manifest.digest == manifest_of_directory(downloaded).digest == report.artifact.digest

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), downloaded).eval()
    tokenizer = AutoTokenizer.from_pretrained(downloaded)
    prompt = tokenizer("What colour is the sky?", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert output.shape[1] > prompt["input_ids"].shape[1]

    # A retry of the same job finds its artifact complete and is done.
    assert run(config) is None


def test_a_published_artifact_is_never_overwritten_by_another_job(bucket, make_job, tiny_model_dir):
    artifact = f"s3://{bucket}/out/team/adapter/v1"
    first = make_job(name="first", training={"maxSteps": 2}, output={"artifactUri": artifact})
    run(first)
    second = make_job(name="second", training={"maxSteps": 2}, output={"artifactUri": artifact})
    with pytest.raises(ConfigError, match="immutable"):
        run(second)
