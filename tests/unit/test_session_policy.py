"""Per-job STS credentials: the session policy a job's pods get, the Secret that carries it, when it is
minted again, and the settings that turn it on. Pure functions, no server (the e2e test
tests/e2e/test_storage_isolation.py runs the policies against MinIO)."""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import json
from typing import Any

import pytest
from catalog import edited, valid_job
from finetune_core.api import FineTuneJob
from finetune_operator.naming import EXPIRES_AT_ANNOTATION, MINTED_AT_ANNOTATION, POLICY_HASH_ANNOTATION
from finetune_operator.render import ResolutionError, credential_secrets, references
from finetune_operator.render.session_policy import (
    MAX_POLICY_BYTES,
    ForeignPrefix,
    check_in_namespace,
    job_policy,
    policy_text,
    read_policy,
    uses_minted_credentials,
)
from finetune_operator.render.storage_secret import MintedSession, mint_due_in, render_storage_secret
from finetune_operator.settings import Settings

NAMESPACE = "team"
STS = Settings(
    default_output_uri="s3://shared/out/",
    sts_credentials_secret="sts-minter",
    operator_namespace="finetune-system",
)
NOW = dt.datetime(2026, 1, 2, 3, 0, 0, tzinfo=dt.UTC)
TRAINING_JOB = {"metadata": {"name": "demo", "uid": "job-uid-1"}}


def make_job(edits: dict[str, Any] | None = None) -> FineTuneJob:
    base = {
        "metadata.namespace": NAMESPACE,
        "metadata.uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "metadata.creationTimestamp": "2026-01-02T03:04:05Z",
        "spec.model.uri": "s3://models/tiny-llama/",
    }
    return FineTuneJob.model_validate(edited(valid_job("demo"), {**base, **(edits or {})}))


def allowed(policy: dict, action: str, resource: str, prefix: str | None = None) -> bool:
    """IAM's evaluation of Allow statements with StringLike conditions (all these policies use)."""
    for statement in policy["Statement"]:
        if action not in statement["Action"]:
            continue
        if not any(fnmatch.fnmatchcase(resource, pattern) for pattern in statement["Resource"]):
            continue
        condition = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if condition is None or (prefix is not None and any(fnmatch.fnmatchcase(prefix, p) for p in condition)):
            return True
    return False


# -- who gets minted credentials ---------------------------------------------------------------------


def test_a_job_on_the_default_output_uses_minted_credentials():
    assert uses_minted_credentials(make_job(), STS)


@pytest.mark.parametrize(
    "edits",
    [{"spec.output": {"uri": "s3://own/out/"}}, {"spec.output": {"credentialsSecretRef": {"name": "own-keys"}}}],
    ids=["own-output", "own-secret"],
)
def test_a_job_with_an_output_or_secret_of_its_own_does_not(edits):
    assert not uses_minted_credentials(make_job(edits), STS)


def test_without_the_sts_setting_no_job_does():
    assert not uses_minted_credentials(make_job(), Settings(default_output_uri="s3://shared/out/"))


def test_the_minted_secret_is_mounted_for_the_output_and_for_inputs_without_a_secret_and_never_waited_for():
    job = make_job({"spec.data.credentialsSecretRef": {"name": "data-keys"}})
    assert credential_secrets(job, STS) == {"output": "demo-storage", "model": "demo-storage", "data": "data-keys"}
    assert {(r.kind, r.name) for r in references(job, STS)} == {("Secret", "data-keys")}


# -- the job's policy ----------------------------------------------------------------------------------


def test_the_job_writes_its_checkpoints_and_its_artifact_and_lists_only_them():
    policy = job_policy(make_job(), STS)
    checkpoints = "out/team/demo/checkpoints/20260102-030405-1b4e28/"
    artifact = "out/team/demo/20260102-030405-1b4e28/"
    for key in (f"{checkpoints}step-10/model.safetensors", f"{artifact}adapter_config.json"):
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
            assert allowed(policy, action, f"arn:aws:s3:::shared/{key}")
    assert allowed(policy, "s3:ListBucket", "arn:aws:s3:::shared", prefix=checkpoints)
    assert allowed(policy, "s3:ListBucket", "arn:aws:s3:::shared", prefix=artifact)


@pytest.mark.parametrize(
    "key",
    [
        "out/team-b/demo/checkpoints/x/optimizer.pt",  # another namespace whose name starts with ours
        "out/other/demo/checkpoints/x/optimizer.pt",
        "out/team/other-job/checkpoints/x/optimizer.pt",
        "out/team/demo/checkpoints/other-version/optimizer.pt",
        "elsewhere.txt",
    ],
)
def test_nothing_else_in_the_shared_output_can_be_read_written_or_listed(key):
    policy = job_policy(make_job(), STS)
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert not allowed(policy, action, f"arn:aws:s3:::shared/{key}")
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::shared", prefix=key.rsplit("/", 1)[0] + "/")
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::shared", prefix="out/")
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::shared", prefix=None)


def test_inputs_without_a_secret_are_read_only_and_exactly_their_prefix():
    policy = job_policy(make_job(), STS)
    assert allowed(policy, "s3:GetObject", "arn:aws:s3:::models/tiny-llama/config.json")
    assert allowed(policy, "s3:GetObject", "arn:aws:s3:::datasets/train.jsonl")
    assert allowed(policy, "s3:ListBucket", "arn:aws:s3:::models", prefix="tiny-llama/")
    assert not allowed(policy, "s3:PutObject", "arn:aws:s3:::models/tiny-llama/config.json")
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::models/tiny-llama-private/config.json")
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::datasets/train.jsonl.secret")


def test_inputs_with_a_secret_of_their_own_are_not_in_the_policy():
    policy = job_policy(make_job({"spec.data.credentialsSecretRef": {"name": "data-keys"}}), STS)
    assert "datasets" not in json.dumps(policy)


@pytest.mark.parametrize(
    ("field", "edits"),
    [
        ("spec.model.uri", {"spec.model.uri": "s3://shared/out/victim/demo/20260102-0000-abcdef/"}),
        ("spec.data.train[0].uri", {"spec.data.train": [{"uri": "s3://shared/out/team-b/x/train.jsonl"}]}),
        ("spec.data.general.uri", {"spec.data.general": {"uri": "s3://shared/out/"}}),
        ("spec.data.general.uri", {"spec.data.general": {"uri": "s3://shared/"}}),
    ],
    ids=["model-in-another-namespace", "data-in-a-namespace-sharing-our-prefix", "the-whole-output", "the-bucket"],
)
def test_an_input_in_another_namespaces_part_of_the_output_is_refused_naming_the_field(field, edits):
    with pytest.raises(ForeignPrefix) as refused:
        job_policy(make_job(edits), STS)
    assert refused.value.field == field
    assert "s3://shared/out/team/" in refused.value.message


def test_an_input_in_the_jobs_own_namespace_part_is_read():
    policy = job_policy(make_job({"spec.model.uri": "s3://shared/out/team/base/v1/"}), STS)
    assert allowed(policy, "s3:GetObject", "arn:aws:s3:::shared/out/team/base/v1/config.json")


def test_a_policy_larger_than_sts_takes_is_refused_naming_the_data():
    many = [{"uri": f"s3://datasets/a-rather-long-source-name-{i:03d}/part.jsonl"} for i in range(16)]
    with pytest.raises(ResolutionError) as refused:
        policy_text(job_policy(make_job({"spec.data.train": many}), STS), "spec.data")
    assert refused.value.field == "spec.data" and str(MAX_POLICY_BYTES) in refused.value.message


def test_a_job_with_a_model_and_three_data_sources_fits():
    job = make_job({"spec.data.eval": {"uri": "s3://datasets/quickstart/eval.jsonl"}})
    assert len(policy_text(job_policy(job, STS))) < MAX_POLICY_BYTES


def test_the_operators_own_reads_are_read_only_on_one_prefix():
    policy = read_policy("s3://shared/out/team/demo/v1/")
    assert allowed(policy, "s3:GetObject", "arn:aws:s3:::shared/out/team/demo/v1/manifest.json")
    assert not allowed(policy, "s3:PutObject", "arn:aws:s3:::shared/out/team/demo/v1/manifest.json")
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::shared/out/team/demo/v2/manifest.json")


@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("s3://shared/out/team/demo/v1/", False),
        ("s3://shared/out/team-b/demo/v1/", True),
        ("s3://shared/out/", True),
        ("s3://other/out/team-b/demo/v1/", False),
        ("pvc://claim/out/team-b/", False),
    ],
)
def test_an_adapter_may_name_only_its_own_namespaces_part(uri, refused):
    if refused:
        with pytest.raises(ForeignPrefix):
            check_in_namespace(STS, NAMESPACE, uri, "spec.artifact.uri")
    else:
        check_in_namespace(STS, NAMESPACE, uri, "spec.artifact.uri")


# -- the Secret and its refresh ------------------------------------------------------------------------

SESSION = MintedSession(
    access_key_id="ASIAEXAMPLE",
    secret_access_key="secret-value",
    session_token="token-value",
    minted_at=NOW,
    expires_at=NOW + dt.timedelta(hours=1),
    endpoint="http://minio:9000",
    region="us-east-1",
)


def test_the_session_never_shows_its_values():
    assert not any(value in repr(SESSION) for value in ("ASIAEXAMPLE", "secret-value", "token-value"))


def test_the_secret_carries_every_key_the_clients_read_and_is_owned_by_the_training_job():
    secret = render_storage_secret(make_job(), TRAINING_JOB, SESSION, "{}")
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == {
        "AWS_ACCESS_KEY_ID": "ASIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret-value",
        "AWS_SESSION_TOKEN": "token-value",
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_REGION": "us-east-1",
        "AWS_CREDENTIAL_EXPIRATION": "2026-01-02T04:00:00Z",
    }
    assert secret["metadata"]["name"] == "demo-storage" and secret["metadata"]["namespace"] == NAMESPACE
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "batch/v1", "kind": "Job", "name": "demo", "uid": "job-uid-1", "controller": True}


def test_the_annotations_say_nothing_secret():
    secret = render_storage_secret(make_job(), TRAINING_JOB, SESSION, "{}")
    text = json.dumps(secret["metadata"])
    assert not any(value in text for value in ("ASIAEXAMPLE", "secret-value", "token-value"))


def minted_secret(policy: str = "{}", minted: str = "2026-01-02T03:00:00Z", expires: str = "2026-01-02T04:00:00Z"):
    secret = render_storage_secret(make_job(), TRAINING_JOB, SESSION, policy)
    secret["metadata"]["annotations"].update({MINTED_AT_ANNOTATION: minted, EXPIRES_AT_ANNOTATION: expires})
    return secret


@pytest.mark.parametrize(
    ("secret", "now", "due"),
    [
        (None, NOW, 0.0),
        (minted_secret(), NOW, 1800.0),
        (minted_secret(), NOW + dt.timedelta(minutes=29), 60.0),
        (minted_secret(), NOW + dt.timedelta(minutes=30), 0.0),
        (minted_secret(), NOW + dt.timedelta(hours=2), 0.0),
        (minted_secret(policy='{"other":1}'), NOW, 0.0),
    ],
    ids=["missing", "fresh", "before-half-life", "at-half-life", "expired", "another-policy"],
)
def test_credentials_are_minted_again_at_half_their_life_or_when_the_policy_changed(secret, now, due):
    assert mint_due_in(secret, TRAINING_JOB, "{}", now) == due


def test_a_secret_left_by_a_replaced_job_is_minted_again():
    replaced = {"metadata": {"name": "demo", "uid": "job-uid-2"}}
    assert mint_due_in(minted_secret(), replaced, "{}", NOW) == 0.0


def test_a_secret_without_the_annotations_is_minted_again():
    secret = minted_secret()
    del secret["metadata"]["annotations"][POLICY_HASH_ANNOTATION]
    assert mint_due_in(secret, TRAINING_JOB, "{}", NOW) == 0.0


# -- settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"default_output_uri": "pvc://claim/out"}, "s3:// default_output_uri"),
        ({"default_output_secret": "shared-keys"}, "default_output_secret"),
        ({"operator_namespace": None}, "operator_namespace"),
        ({"sts_duration_seconds": 600}, "900"),
    ],
)
def test_sts_settings_that_cannot_work_are_refused_at_start_up(values, message):
    base = {
        "default_output_uri": "s3://shared/out/",
        "sts_credentials_secret": "sts-minter",
        "operator_namespace": "finetune-system",
    }
    with pytest.raises(ValueError, match=message):
        Settings(**{**base, **values})


def test_sts_is_off_unless_its_secret_is_configured():
    assert not Settings(default_output_uri="s3://shared/out/").sts_enabled
    assert STS.sts_enabled and STS.sts_duration_seconds == 3600
