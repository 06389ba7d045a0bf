"""Storage isolation between namespaces, for real: the operator mints each job's S3 credentials with STS
AssumeRole against MinIO, and tenant B, holding every credential its own pods get, is refused by MinIO
when it reads, lists or overwrites tenant A's checkpoints and artifacts.

The minting identity here is MinIO's root user: MinIO lets it call AssumeRole, and the session's inline
policy still bounds what the session can do (MinIO intersects it with the parent's, which for root is
everything), so what is tested is the policy the operator builds.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import boto3
import pytest
from adapter_artifacts import adapter_dir, evaluation, manifest_digest, model_adapter, upload  # noqa: F401
from botocore.exceptions import ClientError
from catalog import valid_job
from finetune_core.api import REPORT_FILE_NAME, TrainerConfig
from kubehelpers import apply, condition_is, get, items, patch_pod_status, wait_for

from hack.localcluster.minio import ACCESS_KEY, REGION, SECRET_KEY

pytestmark = pytest.mark.s3

MINTER = "sts-minter"


@pytest.fixture
def tenants(cluster, namespace) -> dict[str, str]:
    """Two tenant namespaces; the test's own namespace is the operator's."""
    names = {"a": f"{namespace}-a", "b": f"{namespace}-b"}
    for name in names.values():
        cluster.run_kubectl("create", "namespace", name)
    yield names
    for name in names.values():
        cluster.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def stores(minio) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    buckets = {"shared": minio.create_bucket(f"shared-{suffix}"), "models": minio.create_bucket(f"models-{suffix}")}
    minio.client().put_object(Bucket=buckets["models"], Key="tiny-llama/config.json", Body=b"{}")
    return buckets


@pytest.fixture
def sts_operator(cluster, namespace, tenants, stores, minio, start_operator):
    """The operator for both tenants, minting per-job credentials with MinIO's root user as the identity."""
    keys = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": minio.endpoint,
        "AWS_REGION": REGION,
    }
    literals = [f"--from-literal={key}={value}" for key, value in keys.items()]
    cluster.run_kubectl("create", "secret", "generic", MINTER, "-n", namespace, *literals)
    return start_operator(
        f"--namespace={tenants['a']}",
        f"--namespace={tenants['b']}",
        f"--operator-namespace={namespace}",
        f"--default-output-uri=s3://{stores['shared']}/out/",
        f"--sts-credentials-secret={MINTER}",
        "--sts-duration-seconds=900",
    )


def job(namespace: str, name: str, stores: dict[str, str], **model) -> dict:
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["model"] = {"uri": f"s3://{stores['models']}/tiny-llama/", **model}
    data = f"s3://{stores['models']}/tiny-llama/config.json"
    manifest["spec"]["data"] = {"train": [{"uri": data}], "general": {"uri": data}}
    manifest["spec"]["method"] = {"type": "lora", "lora": {"rank": 16, "alpha": 32, "targetModules": ["q_proj"]}}
    manifest["spec"]["template"] = {"podAnnotations": {"test.finetune.dev/run-duration": "1h"}}
    return manifest


def start(cluster, namespace: str, manifest: dict) -> tuple[TrainerConfig, dict[str, str]]:
    """Apply a job; its resolved configuration and the decoded values of its minted Secret."""
    apply(cluster, manifest)
    name = manifest["metadata"]["name"]
    config_map = wait_for("the ConfigMap", lambda: get(cluster, "configmap", namespace, f"{name}-config"))
    secret = wait_for("the minted Secret", lambda: get(cluster, "secret", namespace, f"{name}-storage"))
    values = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    return TrainerConfig.model_validate_json(config_map["data"]["config.json"]), values


def client_of(values: dict[str, str]):
    return boto3.client(
        "s3",
        endpoint_url=values["AWS_ENDPOINT_URL"],
        region_name=values["AWS_REGION"],
        aws_access_key_id=values["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=values["AWS_SESSION_TOKEN"],
    )


def key_of(uri: str) -> str:
    return uri.removeprefix("s3://").partition("/")[2]


def refused(call) -> str:
    with pytest.raises(ClientError) as error:
        call()
    return error.value.response["Error"]["Code"]


def test_each_job_gets_its_own_secret_owned_by_its_job_and_mounted_where_credentials_go(
    cluster, tenants, stores, sts_operator
):
    _, values = start(cluster, tenants["a"], job(tenants["a"], "alpha", stores))
    secret = get(cluster, "secret", tenants["a"], "alpha-storage")
    training_job = get(cluster, "job", tenants["a"], "alpha")
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Job", training_job["metadata"]["uid"], True)
    assert values["AWS_SESSION_TOKEN"] and values["AWS_ACCESS_KEY_ID"] != ACCESS_KEY
    expires = dt.datetime.fromisoformat(values["AWS_CREDENTIAL_EXPIRATION"].replace("Z", "+00:00"))
    assert dt.timedelta(minutes=10) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=15)
    pod_spec = training_job["spec"]["template"]["spec"]
    mounted = {v["name"]: v["secret"]["secretName"] for v in pod_spec["volumes"] if "secret" in v}
    assert mounted == {f"credentials-{p}": "alpha-storage" for p in ("output", "model", "data")}
    ftj = get(cluster, "ftj", tenants["a"], "alpha")
    assert ACCESS_KEY not in json.dumps(ftj) and values["AWS_SECRET_ACCESS_KEY"] not in json.dumps(ftj)
    assert values["AWS_SECRET_ACCESS_KEY"] not in sts_operator.log_path.read_text()


def test_tenant_b_with_its_own_credentials_cannot_reach_tenant_as_checkpoints_or_artifacts(
    cluster, tenants, stores, sts_operator, minio
):
    config_a, _ = start(cluster, tenants["a"], job(tenants["a"], "alpha", stores))
    config_b, values_b = start(cluster, tenants["b"], job(tenants["b"], "bravo", stores))
    shared = stores["shared"]
    a_checkpoint = f"{key_of(config_a.output.checkpoints_uri)}step-10/optimizer.pt"
    a_artifact = f"{key_of(config_a.output.artifact_uri)}adapter_model.safetensors"
    root = minio.client()
    for key in (a_checkpoint, a_artifact):
        root.put_object(Bucket=shared, Key=key, Body=b"tenant a's")
    b = client_of(values_b)

    for key in (a_checkpoint, a_artifact):
        assert refused(lambda key=key: b.get_object(Bucket=shared, Key=key)) == "AccessDenied"
        assert refused(lambda key=key: b.put_object(Bucket=shared, Key=key, Body=b"evil")) == "AccessDenied"
        assert refused(lambda key=key: b.delete_object(Bucket=shared, Key=key)) == "AccessDenied"
        prefix = key.rsplit("/", 1)[0] + "/"
        assert refused(lambda prefix=prefix: b.list_objects_v2(Bucket=shared, Prefix=prefix)) == "AccessDenied"
    assert refused(lambda: b.list_objects_v2(Bucket=shared, Prefix="out/")) == "AccessDenied"
    assert refused(lambda: b.list_objects_v2(Bucket=shared)) == "AccessDenied"
    assert root.get_object(Bucket=shared, Key=a_checkpoint)["Body"].read() == b"tenant a's"

    # Its own prefixes work, and its inputs are read-only.
    own = f"{key_of(config_b.output.checkpoints_uri)}step-10/optimizer.pt"
    b.put_object(Bucket=shared, Key=own, Body=b"tenant b's")
    assert b.get_object(Bucket=shared, Key=own)["Body"].read() == b"tenant b's"
    listed = b.list_objects_v2(Bucket=shared, Prefix=key_of(config_b.output.checkpoints_uri))
    assert [o["Key"] for o in listed["Contents"]] == [own]
    b.put_object(Bucket=shared, Key=f"{key_of(config_b.output.artifact_uri)}adapter_config.json", Body=b"{}")
    assert b.get_object(Bucket=stores["models"], Key="tiny-llama/config.json")["Body"].read() == b"{}"
    models = stores["models"]
    assert refused(lambda: b.put_object(Bucket=models, Key="tiny-llama/config.json", Body=b"x")) == "AccessDenied"


def test_an_input_in_another_tenants_prefix_is_refused_with_a_condition(cluster, tenants, stores, sts_operator):
    config_a, _ = start(cluster, tenants["a"], job(tenants["a"], "alpha", stores))
    stolen = job(tenants["b"], "thief", stores)
    stolen["spec"]["model"]["uri"] = config_a.output.artifact_uri
    apply(cluster, stolen)

    blocked = wait_for(
        "ReferencesResolved=False", condition_is(cluster, tenants["b"], "thief", "ReferencesResolved", "False")
    )
    assert blocked["reason"] == "InputOutsideNamespace"
    assert "spec.model.uri" in blocked["message"] and f"/out/{tenants['b']}/" in blocked["message"]
    assert get(cluster, "job", tenants["b"], "thief") is None
    assert get(cluster, "secret", tenants["b"], "thief-storage") is None


def test_an_adapter_naming_another_tenants_artifact_is_refused_without_a_read(
    cluster,
    tenants,
    stores,
    sts_operator,
    minio,
    adapter_dir,  # noqa: F811
):
    config_a, _ = start(cluster, tenants["a"], job(tenants["a"], "alpha", stores))
    uri = upload(minio, adapter_dir, stores["shared"], key_of(config_a.output.artifact_uri).rstrip("/"))
    apply(cluster, model_adapter("borrowed", tenants["b"], uri, manifest_digest(adapter_dir), keys_in=None))

    ready = wait_for("Ready=False", condition_is(cluster, tenants["b"], "borrowed", "Ready", "False", kind="ftadapter"))
    assert ready["reason"] == "ArtifactOutsideNamespace" and "spec.artifact.uri" in ready["message"]
    assert get(cluster, "ftadapter", tenants["b"], "borrowed")["status"].get("digest") is None


def test_the_operator_reads_and_publishes_a_tenants_own_output_with_a_read_only_session(
    cluster,
    tenants,
    stores,
    sts_operator,
    minio,
    adapter_dir,  # noqa: F811
):
    namespace = tenants["a"]
    config, _ = start(cluster, namespace, job(namespace, "alpha", stores))
    uri = upload(minio, adapter_dir, stores["shared"], key_of(config.output.artifact_uri).rstrip("/"))
    report = {
        "job": {"namespace": namespace, "name": "alpha"},
        "configSha256": "0" * 64,
        "evaluation": evaluation("Passed"),
        "artifact": {"uri": uri, "digest": manifest_digest(adapter_dir), "sizeBytes": 1000},
    }
    key = f"{key_of(config.output.checkpoints_uri)}{REPORT_FILE_NAME}"
    minio.client().put_object(Bucket=stores["shared"], Key=key, Body=json.dumps(report).encode())
    pod = wait_for("a running pod", lambda: items(cluster, "pods", namespace, "finetune.dev/job=alpha"))[0]
    patch_pod_status(cluster, namespace, pod["metadata"]["name"], 0)

    wait_for("Published", condition_is(cluster, namespace, "alpha", "Published"), timeout=90)
    verified = wait_for(
        "ArtifactVerified", condition_is(cluster, namespace, "alpha", "ArtifactVerified", kind="ftadapter"), timeout=90
    )
    assert verified["reason"] == "DigestMatches" and manifest_digest(adapter_dir) in verified["message"]
    adapter = get(cluster, "ftadapter", namespace, "alpha")
    assert "credentialsSecretRef" not in adapter["spec"]["artifact"]
    assert adapter["spec"]["lora"]["targetModules"] == ["q_proj", "v_proj"]  # read from adapter_config.json


def test_the_trainer_reads_refreshed_credentials_from_the_mounted_files(
    cluster, tenants, stores, sts_operator, tmp_path, monkeypatch
):
    """The kubelet rewrites a mounted Secret's files in place; a client made before must use the new ones."""
    from finetune_trainer.storage import credentials_for, s3_client

    config, values = start(cluster, tenants["a"], job(tenants["a"], "alpha", stores))
    directory = tmp_path / "output"
    directory.mkdir()

    def mount(secret_key: str) -> None:
        for key, value in {**values, "AWS_SECRET_ACCESS_KEY": secret_key}.items():
            (directory / key).write_text(value)

    mount("not-the-key")
    monkeypatch.setenv("FINETUNE_CREDENTIALS_DIR", str(tmp_path))
    client = s3_client(credentials_for("output"))
    mount(values["AWS_SECRET_ACCESS_KEY"])  # what a re-minted Secret looks like to the pod

    prefix = key_of(config.output.checkpoints_uri)
    client.put_object(Bucket=stores["shared"], Key=f"{prefix}probe", Body=b"ok")
    assert client.get_object(Bucket=stores["shared"], Key=f"{prefix}probe")["Body"].read() == b"ok"


def test_minted_credentials_are_minted_again_at_half_their_life(cluster, tenants, stores, sts_operator):
    """More than half of the session has passed, as the annotation says: the operator replaces the credentials."""
    from finetune_operator.naming import MINTED_AT_ANNOTATION

    _, first = start(cluster, tenants["a"], job(tenants["a"], "alpha", stores))
    long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = json.dumps({"metadata": {"annotations": {MINTED_AT_ANNOTATION: long_ago}}})
    cluster.run_kubectl("patch", "secret", "alpha-storage", "-n", tenants["a"], "--type=merge", "-p", patch)
    cluster.run_kubectl("annotate", "ftj", "alpha", "-n", tenants["a"], "test.finetune.dev/poke=1")

    def reminted():
        data = get(cluster, "secret", tenants["a"], "alpha-storage")["data"]
        return base64.b64decode(data["AWS_ACCESS_KEY_ID"]).decode() != first["AWS_ACCESS_KEY_ID"]

    wait_for("fresh credentials", reminted, timeout=60)
